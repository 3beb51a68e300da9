"""The published record format, docs/record.schema.json, for the runtime tests (a uniquely
named module: test files import it, not conftest)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "record.schema.json"


@functools.cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@functools.cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(schema())
    return Draft202012Validator(schema())


def check_record(record: dict[str, Any]) -> None:
    """Raise (with every problem listed) unless ``record`` is valid against the schema."""
    errors = sorted(_validator().iter_errors(record), key=lambda e: list(e.path))
    if errors:
        problems = "; ".join(f"{'/'.join(map(str, e.path)) or '(record)'}: {e.message}" for e in errors)
        raise AssertionError(f"record is not valid against {SCHEMA_PATH.name}: {problems}\n{record}")


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file: every line complete (newline-terminated), parseable and
    valid against the schema."""
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), f"{path} ends with a partial line"
    records = [json.loads(line) for line in raw.splitlines()]
    for r in records:
        check_record(r)
    return records
