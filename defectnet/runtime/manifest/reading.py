"""Reading a manifest's JSON: typed field reads that name the field and the fix on failure
(:class:`JsonObject`), and the error every manifest problem raises (:class:`ManifestError`)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from defectnet.errors import EngineError


def reexport_hint(root: str | os.PathLike[str] | None) -> str:
    """How to replace a broken or outdated exported folder."""
    return f"re-export it with defectnet-export --model NAME --out {root or 'DIR'}"


def rebuild_hint(root: str | os.PathLike[str] | None, source_engine: str | None = None) -> str:
    """How to replace a broken built folder (``defectnet-build-engine`` output)."""
    return f"rebuild it with defectnet-build-engine --engine {source_engine or 'EXPORTED_DIR'} --out {root or 'DIR'}"


class ManifestError(EngineError):
    """A manifest field is missing or invalid. ``problem`` says which and why;
    :meth:`Manifest.from_json` adds the folder and the fix."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"invalid engine manifest: {problem}; {reexport_hint(None)}")


_E = TypeVar("_E", bound=StrEnum)
MISSING: Any = object()


def plain(value: Any) -> Any:
    """A deep copy in plain JSON types (dict / list); enum members become their strings."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, StrEnum):
        return value.value
    return value


def type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def parse_enum(enum: type[_E], value: Any, what: str) -> _E:
    """``value`` as a member of ``enum``; ManifestError naming the known values otherwise."""
    if isinstance(value, str):
        for candidate in (value, value.lower()):
            try:
                return enum(candidate)
            except ValueError:
                pass
    raise ManifestError(f"unknown {what} {value!r} (known: {', '.join(m.value for m in enum)})")


class JsonObject:
    """One JSON object of a manifest being read: typed reads that name the field on failure;
    :meth:`rest` returns the keys nobody read (kept as ``extra``)."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ManifestError(f"{path or 'the manifest'} must be a JSON object, got {type_name(data)}")
        self.data: dict[str, Any] = data
        self.path = path
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, required: bool) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise ManifestError(f"field {self.name(key)!r} is missing")
            return MISSING
        return self.data[key]

    def _wrong(self, key: str, expected: str, value: Any) -> ManifestError:
        return ManifestError(f"field {self.name(key)!r} must be {expected}, got {type_name(value)} ({value!r:.80})")

    def text(self, key: str, *, required: bool = True, null: bool = False) -> str | None:
        v = self.get(key, required)
        if v is MISSING or (v is None and null):
            return None
        if not isinstance(v, str):
            raise self._wrong(key, "a string", v)
        return v

    def integer(self, key: str, *, required: bool = True) -> int | None:
        v = self.get(key, required)
        if v is MISSING:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._wrong(key, "an integer", v)
        return v

    def number(self, key: str, *, required: bool = True, null: bool = False) -> float | None:
        v = self.get(key, required)
        if v is MISSING or (v is None and null):
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise self._wrong(key, "a finite number", v)
        return float(v)

    def flag(self, key: str, *, required: bool = True, null: bool = False) -> bool | None:
        v = self.get(key, required)
        if v is MISSING or (v is None and null):
            return None
        if not isinstance(v, bool):
            raise self._wrong(key, "true or false", v)
        return v

    def texts(self, key: str, *, required: bool = True) -> tuple[str, ...] | None:
        v = self.get(key, required)
        if v is MISSING:
            return None
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise self._wrong(key, "a list of strings", v)
        return tuple(v)

    def text_map(self, key: str, *, required: bool = True) -> dict[str, str] | None:
        v = self.get(key, required)
        if v is MISSING:
            return None
        if not isinstance(v, dict) or not all(isinstance(s, str) for s in v.values()):
            raise self._wrong(key, "an object of strings", v)
        return dict(v)

    def mapping(self, key: str, *, required: bool = True) -> dict[str, Any] | None:
        v = self.get(key, required)
        if v is MISSING:
            return None
        if not isinstance(v, dict):
            raise self._wrong(key, "an object", v)
        return plain(v)  # type: ignore[no-any-return]

    def obj(self, key: str, *, required: bool = False) -> JsonObject | None:
        """A nested object; None when absent or null (and not required)."""
        v = self.get(key, required)
        if v is MISSING or (v is None and not required):
            return None
        if not isinstance(v, dict):
            raise self._wrong(key, "an object", v)
        return JsonObject(v, self.name(key))

    def rest(self) -> dict[str, Any]:
        return {k: plain(v) for k, v in self.data.items() if k not in self.used}


def as_object(data: Any, path: str) -> JsonObject:
    return data if isinstance(data, JsonObject) else JsonObject(data, path)


def file_name(name: str, what: str) -> str:
    if not name or Path(name).name != name or name in (".", ".."):
        raise ManifestError(f"{what} file name {name!r} must be a plain file name inside the folder")
    return name


def with_extra(extra: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """``extra`` plus the typed fields (None ones left out), in plain JSON types."""
    return {**plain(extra), **{k: plain(v) for k, v in fields.items() if v is not None}}

