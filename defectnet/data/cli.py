"""Command-line tools for data: ``defectnet-synth``, ``defectnet-contact-sheet`` (and,
later, ``defectnet-data-stats``). Thin layers over :mod:`defectnet.data.synthetic` and
:mod:`defectnet.data.contact_sheet`; errors print their message and exit non-zero."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from defectnet.data.coco import load_split
from defectnet.data.contact_sheet import write_contact_sheet
from defectnet.data.stats import format_statistics, split_statistics
from defectnet.data.synthetic import KINDS, SynthParams, generate, parse_size
from defectnet.data.synthetic.common import DEFAULT_BENIGN_RATE, file_name
from defectnet.errors import ConfigError, DefectNetError

if TYPE_CHECKING:
    _SizeBase = click.ParamType[tuple[int, int], Any]
else:  # click < 8.2 has no generic ParamType
    _SizeBase = click.ParamType


class SizeType(_SizeBase):
    """``WIDTHxHEIGHT`` -> ``(width, height)``."""

    name = "WxH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_size(str(value))
        except ConfigError as err:
            self.fail(str(err), param, ctx)


def _clear_stale(out: Path, kind: str, n: int) -> int:
    """Remove ``{kind}_NNNNNN.jpg`` files with ids above ``n`` left by a larger earlier run."""
    removed = 0
    pattern = re.compile(rf"{re.escape(kind)}_(\d{{6}})\.jpg")
    for p in (out / "images").glob(f"{kind}_*.jpg"):
        m = pattern.fullmatch(p.name)
        if m and int(m.group(1)) > n and p.name == file_name(kind, int(m.group(1))):
            p.unlink()
            removed += 1
    return removed


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("kind", type=click.Choice(sorted(KINDS)))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: writes OUT/images/*.jpg and OUT/annotations/{train,test}.json.")
@click.option("--images", "images", default=1000, show_default=True, type=int, help="Number of images N.")
@click.option("--normal-share", type=float, default=None,
              help="Share of normal (defect-free) images [default: fabric 0.44, bottle 0.25, as the real sets].")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (non-negative).")
@click.option("--size", type=SizeType(), default=None,
              help="Image size WxH [default: fabric 612x250 (real 2446x1000 / 4), bottle 658x492].")
@click.option("--test-share", type=float, default=0.2, show_default=True,
              help="Share of images in the test split (random by image).")
@click.option("--benign-rate", type=float, default=DEFAULT_BENIGN_RATE, show_default=True,
              help="Scale of the mean number of benign, unannotated irregularities per image (slubs, lint, "
                   "dust, dye bands, ... on fabric; glare, dust, print variation on bottles; see docs/data.md); "
                   "0 turns them off.")
@click.option("--overwrite", is_flag=True,
              help="Allow writing into a folder that already holds annotations (stale images are removed).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary.")
def synth_main(kind: str, out: Path, images: int, normal_share: float | None, seed: int,
               size: tuple[int, int] | None, test_share: float, benign_rate: float, overwrite: bool,
               quiet: bool) -> None:
    """Generate a deterministic synthetic KIND (fabric or bottle) defect data set in COCO format.

    The same arguments always give byte-identical images and annotation files.
    """
    spec = KINDS[kind]
    try:
        params = SynthParams(kind=kind, images=images,
                             normal_share=spec.default_normal_share if normal_share is None else normal_share,
                             seed=seed, size=spec.default_size if size is None else size, test_share=test_share,
                             benign_rate=benign_rate)
    except ConfigError as err:
        raise click.UsageError(str(err)) from err
    if (out / "annotations").exists() and any((out / "annotations").glob("*.json")) and not overwrite:
        raise click.UsageError(f"{out} already holds a data set; pass --overwrite to replace it, "
                               "or choose another --out folder")
    if overwrite:
        _clear_stale(out, kind, images)
    t0 = time.perf_counter()
    step = max(1, images // 10)

    def progress(k: int) -> None:
        if not quiet and (k % step == 0 or k == images):
            click.echo(f"  {k}/{images} images", err=True)

    try:
        summary = generate(params, spec, out, progress=progress)
    except DefectNetError as err:
        raise click.ClickException(str(err)) from err
    dt = time.perf_counter() - t0
    click.echo(summary.format(params))
    click.echo(f"  wrote {out / 'images'} and {out / 'annotations'} in {dt:.1f} s ({dt / images * 1000:.1f} ms/image)")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True, help="Annotation file: ROOT/annotations/SPLIT.json.")
@click.option("--n", "n", default=16, show_default=True, type=int, help="Number of images (the first by id).")
@click.option("--out", "out", default=Path("sheet.png"), show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Output PNG.")
@click.option("--cols", default=4, show_default=True, type=int, help="Images per row.")
@click.option("--cell-width", default=320, show_default=True, type=int, help="Width of one cell in pixels.")
def contact_sheet_main(root: Path, split: str, n: int, out: Path, cols: int, cell_width: int) -> None:
    """Draw a PNG grid of ROOT's images with their boxes and class names ("normal" if none)."""
    try:
        path = write_contact_sheet(root, out, split=split, n=n, cols=cols, cell_width=cell_width)
    except ConfigError as err:
        raise click.UsageError(str(err)) from err
    except DefectNetError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {path}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", "splits", multiple=True, default=("train", "test"), show_default=True,
              help="Splits to summarise (ROOT/annotations/SPLIT.json); repeat the option for several.")
@click.option("--background-id", "background_ids", multiple=True, type=int, default=(0,), show_default=True,
              help="COCO category ids that mark normal images (the original used 0, '背景').")
def stats_main(root: Path, splits: tuple[str, ...], background_ids: tuple[int, ...]) -> None:
    """Print image counts, normal share, boxes per class and box shapes of ROOT's splits."""
    try:
        for split in splits:
            ds = load_split(root, split, background_category_ids=background_ids)
            click.echo(format_statistics(split, split_statistics(ds)))
    except ConfigError as err:
        raise click.UsageError(str(err)) from err
    except DefectNetError as err:
        raise click.ClickException(str(err)) from err
