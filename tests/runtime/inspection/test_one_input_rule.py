"""One input rule, one record: a folder of odd and broken files mixed with good images gives
exactly one schema-valid record per entry on every path -- batch ``defectnet-infer``,
``defectnet-infer --watch --once`` and ``Inspector.submit`` -- with the same outcome (verdict
or reason code) for the same file on all three."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from record_schema import check_record, read_records

from defectnet.runtime.cli import main
from defectnet.runtime.inspection.batch import collect_inputs
from defectnet.runtime.inspection.inspector import Inspector

pytestmark = pytest.mark.timeout(180)
#: A Latin-1 file name on a UTF-8 system (not valid Unicode: Python keeps it as surrogates).
NOT_UNICODE = b"caf\xe9.png".decode("utf-8", "surrogateescape")


def _png_with_header_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def build_corpus(root: Path) -> dict[str, str]:
    """Files of 31 kinds under ``root``: relative path -> the expected outcome ("OK" with the
    gate threshold above 1, or the reason code of the error record)."""
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (60, 80), dtype=np.uint8)
    (root / "sub").mkdir(parents=True)
    (root / "folder.png").mkdir()  # a folder named like an image, with an image inside

    def save(name: str, image: Image.Image, **kwargs: object) -> None:
        image.save(root / name, **kwargs)

    save("rgb.png", Image.fromarray(rgb))
    save("photo.jpg", Image.fromarray(rgb), quality=90)
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"))
    save("gray.png", Image.fromarray(gray))
    save("gray_alpha.png", Image.merge("LA", [Image.fromarray(gray), Image.fromarray(gray)]))
    save("rgba.png", Image.fromarray(np.dstack([rgb, np.full((60, 80), 9, np.uint8)])))
    save("gray16.png", Image.fromarray(rng.integers(0, 65536, (60, 80), dtype=np.uint16)))
    save("palette.png", Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16))
    save("bilevel.png", Image.fromarray(gray > 128))
    save("UPPER.PNG", Image.fromarray(rgb))
    save("image.bmp", Image.fromarray(rgb))
    save("unit_float.tif", Image.fromarray(gray.astype(np.float32) / 255, mode="F"))
    save("png_inside.jpg", Image.fromarray(rgb), format="PNG")  # the content decides, not the suffix
    save("sub/nested.png", Image.fromarray(rgb))
    save("folder.png/inside.png", Image.fromarray(gray))
    save(NOT_UNICODE, Image.fromarray(rgb))
    (root / "link.png").symlink_to(root / "rgb.png")
    save("unreadable.png", Image.fromarray(rgb))
    os.chmod(root / "unreadable.png", 0)

    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (root / "text.png").write_text("this is not an image\n")
    (root / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "noise.gif").write_bytes(rng.integers(0, 256, 512, dtype=np.uint8).tobytes())
    (root / "bomb.png").write_bytes(_png_with_header_size(60000, 60000))
    save("one_pixel.png", Image.fromarray(rgb[:1, :1]))
    save("strip.png", Image.fromarray(np.zeros((8, 400, 3), np.uint8)))
    nan = gray.astype(np.float32) / 255
    nan[5, 5] = np.nan
    save("nan.tif", Image.fromarray(nan, mode="F"))
    save("byte_float.tif", Image.fromarray(gray.astype(np.float32), mode="F"))  # 0..255: not guessed
    (root / "dangling.png").symlink_to(root / "gone.png")
    (root / "notes.txt").write_text("not named like an image: not an input of a folder walk")

    # tests run as root here, where chmod 000 does not stop a read: say what this user gets
    unreadable = "unreadable" if not os.access(root / "unreadable.png", os.R_OK) else "OK"
    return {
        "rgb.png": "OK", "photo.jpg": "OK", "cmyk.jpg": "OK", "gray.png": "OK", "gray_alpha.png": "OK",
        "rgba.png": "OK", "gray16.png": "OK", "palette.png": "OK", "bilevel.png": "OK", "UPPER.PNG": "OK",
        "image.bmp": "OK", "unit_float.tif": "OK", "png_inside.jpg": "OK", "sub/nested.png": "OK",
        "folder.png/inside.png": "OK", NOT_UNICODE: "OK", "link.png": "OK", "unreadable.png": unreadable,
        "empty.png": "empty", "truncated.png": "decode_error", "text.png": "unsupported_format",
        "fake.jpg": "decode_error", "noise.gif": "unsupported_format", "bomb.png": "too_large",
        "one_pixel.png": "too_small", "strip.png": "bad_aspect_ratio", "nan.tif": "non_finite",
        "byte_float.tif": "out_of_range", "dangling.png": "not_found", "folder.png": "unreadable",
    }


def _outcomes(records: list[dict], key_to_rel: dict[str, str]) -> dict[str, str]:  # type: ignore[type-arg]
    """relative path -> verdict or reason code; asserts one record per key."""
    out: dict[str, str] = {}
    for r in records:
        rel = key_to_rel[r["key"]]
        assert rel not in out, f"two records for {rel!r}"
        out[rel] = r["error"]["reason"] if r["verdict"] == "ERROR" else r["verdict"]
    return out


def test_every_path_gives_one_record_per_file_with_the_same_reason(run_engine: Path, tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    expected = build_corpus(folder)
    assert len(expected) >= 30 and len(set(expected.values()) - {"OK"}) >= 10
    common = ["--engine", str(run_engine), "--gate-threshold", "2.0", "--batch", "3"]

    # 1. batch mode over the folder
    batch_out = tmp_path / "batch.jsonl"
    result = CliRunner().invoke(main, [str(folder), "--out", str(batch_out), "--no-progress", *common])
    assert result.exit_code == 0, result.output
    batch_records = read_records(batch_out)  # complete lines, each valid against the schema
    by_key = {os.path.join(str(folder), rel): rel for rel in expected}
    assert [r["key"] for r in batch_records] == [os.path.join(str(folder), rel) for rel in sorted(expected)]
    batch = _outcomes(batch_records, by_key)
    errors = sum(v != "OK" for v in expected.values())
    assert f"inputs {len(expected)}: {len(expected) - errors} processed" in result.output
    assert f"{errors} errors (bad_aspect_ratio 1, decode_error 2, empty 1, non_finite 1" in result.output

    # 2. --watch --once over the same folder
    watch_out = tmp_path / "watch.jsonl"
    result = CliRunner().invoke(main, ["--watch", str(folder), "--out", str(watch_out), "--once", "--stable-for", "0",
                                       "--poll-interval", "0.05", *common])
    assert result.exit_code == 0, result.output
    watch = _outcomes(read_records(watch_out), {rel: rel for rel in expected})

    # 3. Inspector.submit, one path at a time
    with Inspector.from_engine(run_engine, gate_threshold=2.0, batch_size=3) as insp:
        for key in collect_inputs([folder]):
            insp.submit(key, key=by_key[key])
    records = [r.to_json() for r in insp.results()]
    for r in records:
        check_record(r)
    inspector = _outcomes(records, {rel: rel for rel in expected})

    assert batch == expected  # every entry named like an image has exactly one record, with the expected outcome
    assert watch == batch  # ... the same on every path
    assert inspector == batch
