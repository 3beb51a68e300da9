"""Which entries of a folder are inputs, for ``defectnet-infer`` (batch and ``--watch``).

An entry is an input when its name ends with an image suffix (:data:`IMAGE_SUFFIXES`,
case-insensitive), whatever it is: a file, a symlink (also a dangling one), a folder named
``x.png``, a file this user cannot read. The input rule
(:mod:`defectnet.runtime.inspection.validation`) then gives each one its record -- an error
record with a reason code for the ones that are not images -- so nothing that looks like an
image is skipped silently. Folders are walked recursively (also into a folder named like an
image); symlinked folders are listed as entries, not followed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

#: Suffixes (lower case) of the entries a folder walk takes.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm"})
#: Names ``--watch`` ignores: files still being written (write-then-rename drops them in).
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")


def walk_image_entries(folder: Path, suffixes: Iterable[str] = IMAGE_SUFFIXES, *, skip_hidden: bool = False
                       ) -> tuple[list[str], list[OSError]]:
    """(entries, listing errors) under ``folder``: the POSIX paths relative to ``folder`` of
    every entry with an image suffix, sorted; and the errors of sub-folders that could not be
    listed (``error.filename``: the folder; it vanished or is not readable).

    skip_hidden (``--watch``): also skip names starting with ``.`` or ``~``, temporary-file
    names (:data:`TEMP_SUFFIXES`) and hidden folders.
    """
    wanted = {s.lower() for s in suffixes}
    entries: list[str] = []
    errors: list[OSError] = []
    for root, dirs, files in os.walk(folder, onerror=errors.append):
        if skip_hidden:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
        dirs.sort()
        rel_root = Path(root).relative_to(folder)
        for name in (*dirs, *files):  # a symlink to a folder is in dirs, a dangling one in files
            if skip_hidden and (name.startswith((".", "~")) or name.lower().endswith(TEMP_SUFFIXES)):
                continue
            if os.path.splitext(name)[1].lower() in wanted:
                entries.append((rel_root / name).as_posix())
    return sorted(entries), errors


__all__ = ["IMAGE_SUFFIXES", "TEMP_SUFFIXES", "walk_image_entries"]
