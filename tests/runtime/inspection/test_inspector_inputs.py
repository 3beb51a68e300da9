"""Every input gets exactly one record: a corpus of bad inputs (each an ERROR record with its
reason code) interleaved with good ones of every accepted kind, through the real engine."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from defectnet.runtime.inspection.inspector import Inspector
from defectnet.runtime.inspection.validation import InputError, InputLimits, Reason, to_image

pytestmark = pytest.mark.timeout(120)


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _png_with_header_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels (a decompression bomb's
    header: the pixel data is never there)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bad_inputs(root: Path) -> list[tuple[str, Any, str]]:
    """(name, input, expected reason) for 31 kinds of bad input."""
    rgb = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    png = _png_bytes(rgb)
    (root / "folder.png").mkdir()
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("this is not an image\n")
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "bomb.png").write_bytes(_png_with_header_size(60000, 60000))
    (root / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    nan = np.zeros((40, 40), np.float32)
    nan[3, 3] = np.nan
    inf = np.ones((40, 40, 3), np.float64)
    inf[0, 0, 1] = np.inf
    return [
        ("missing file", root / "missing.png", Reason.NOT_FOUND),
        ("a folder", root / "folder.png", Reason.UNREADABLE),
        ("0-byte file", root / "empty.png", Reason.EMPTY),
        ("text named .png", root / "text.png", Reason.UNSUPPORTED_FORMAT),
        ("jpeg magic, no data", str(root / "fake.jpg"), Reason.DECODE_ERROR),
        ("truncated png", root / "truncated.png", Reason.DECODE_ERROR),
        ("60000x60000 header", root / "bomb.png", Reason.TOO_LARGE),
        ("random bytes", bytes(range(256)) * 4, Reason.UNSUPPORTED_FORMAT),
        ("empty bytes", b"", Reason.EMPTY),
        ("1-D array", np.zeros(300, np.uint8), Reason.BAD_SHAPE),
        ("4-D batch array", np.zeros((2, 40, 40, 3), np.uint8), Reason.BAD_SHAPE),
        ("2 channels", np.zeros((40, 40, 2), np.uint8), Reason.BAD_CHANNELS),
        ("CHW numpy", np.zeros((3, 40, 50), np.uint8), Reason.BAD_CHANNELS),
        ("zero rows", np.zeros((0, 40, 3), np.uint8), Reason.EMPTY),
        ("4 px tall", np.zeros((4, 40, 3), np.uint8), Reason.TOO_SMALL),
        ("600x600 over max_pixels", np.zeros((600, 600, 3), np.uint8), Reason.TOO_LARGE),
        ("10x400 strip", np.zeros((10, 400, 3), np.uint8), Reason.BAD_ASPECT_RATIO),
        ("NaN float", nan, Reason.NON_FINITE),
        ("inf float", inf, Reason.NON_FINITE),
        ("float -5..300", np.linspace(-5, 300, 40 * 40).reshape(40, 40).astype(np.float32), Reason.OUT_OF_RANGE),
        ("float all 2.0", np.full((40, 40, 3), 2.0, np.float64), Reason.OUT_OF_RANGE),  # 0..1 only, not 0..255
        ("float 0..255", np.linspace(0, 255, 40 * 40).reshape(40, 40).astype(np.float32), Reason.OUT_OF_RANGE),
        ("float just below 0", np.full((40, 40), -1e-3, np.float32), Reason.OUT_OF_RANGE),
        ("torch float 0..255", torch.full((3, 40, 40), 128.0), Reason.OUT_OF_RANGE),
        ("int64 array", np.zeros((40, 40, 3), np.int64), Reason.BAD_DTYPE),
        ("bool array", np.zeros((40, 40), bool), Reason.BAD_DTYPE),
        ("torch batch", torch.zeros(2, 3, 40, 40, dtype=torch.uint8), Reason.BAD_SHAPE),
        ("torch 5 channels", torch.zeros(5, 40, 40, dtype=torch.uint8), Reason.BAD_CHANNELS),
        ("torch complex", torch.zeros(3, 40, 40, dtype=torch.complex64), Reason.BAD_DTYPE),
        ("None", None, Reason.UNSUPPORTED_INPUT),
        ("a dict", {"image": "x.png"}, Reason.UNSUPPORTED_INPUT),
    ]


def good_inputs(root: Path) -> list[tuple[str, Any, np.ndarray]]:
    """(name, input, the uint8 HxWx3 RGB the rule must produce)."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (60, 80), dtype=np.uint8)
    g16 = rng.integers(0, 65536, (60, 80), dtype=np.uint16)
    rgba = np.dstack([rgb, np.full((60, 80), 9, np.uint8)])
    Image.fromarray(rgba).save(root / "rgba.png")
    Image.fromarray(g16).save(root / "gray16.png")
    Image.fromarray(gray).save(root / "gray.png")
    unit = rgb.astype(np.float32) / 255
    return [
        ("RGB uint8 HWC", rgb, rgb),
        ("gray uint8 HW", gray, np.dstack([gray] * 3)),
        ("gray HxWx1", gray[:, :, None], np.dstack([gray] * 3)),
        ("RGBA array", rgba, rgb),
        ("uint16 array", g16, np.dstack([(g16 >> 8).astype(np.uint8)] * 3)),
        ("float 0..1", unit, rgb),
        ("float64 0..1", rgb.astype(np.float64) / 255, rgb),
        ("float16 0 and 1", np.dstack([np.zeros((60, 80), np.float16), np.ones((60, 80), np.float16)] * 2)[:, :, :3],
         np.dstack([np.zeros((60, 80), np.uint8), np.full((60, 80), 255, np.uint8), np.zeros((60, 80), np.uint8)])),
        ("torch CHW", torch.from_numpy(rgb).permute(2, 0, 1), rgb),
        ("torch float gray", torch.from_numpy(gray.astype(np.float32) / 255), np.dstack([gray] * 3)),
        ("RGBA png", root / "rgba.png", rgb),
        ("16-bit png", root / "gray16.png", np.dstack([(g16 >> 8).astype(np.uint8)] * 3)),
        ("gray png", str(root / "gray.png"), np.dstack([gray] * 3)),
        ("png bytes", _png_bytes(rgb), rgb),
        ("PIL image", Image.fromarray(rgb), rgb),
    ]


LIMITS = InputLimits(max_pixels=200_000)


def test_conversion_rule_and_reason_codes(tmp_path: Path) -> None:
    for name, source, expected in good_inputs(tmp_path):
        image = to_image(source, LIMITS)
        assert image.dtype == torch.uint8 and image.shape == (3, 60, 80), name
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected, err_msg=name)
    bad = tmp_path / "bad"
    bad.mkdir()
    corpus = bad_inputs(bad)
    assert len(corpus) >= 15
    input_reasons = set(Reason) - {Reason.TIMEOUT, Reason.BACKEND_ERROR, Reason.INTERNAL_ERROR, Reason.OVERLOADED,
                                   Reason.UNAVAILABLE}
    assert {reason for _, _, reason in corpus} == input_reasons  # every input reason code is exercised
    for name, source, reason in corpus:
        with pytest.raises(InputError) as info:
            to_image(source, LIMITS)
        assert info.value.reason == reason, f"{name}: {info.value.reason} ({info.value})"
        assert len(str(info.value)) > 20, name


def test_bad_inputs_get_error_records_while_the_stream_goes_on(run_engine: Path, tmp_path: Path) -> None:
    good = good_inputs(tmp_path)[::3]  # five kinds, to keep the model time down
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = bad_inputs(bad_dir)
    stream: list[tuple[str, Any]] = []
    for i, (name, source, _) in enumerate(bad):
        stream.append((name, source))
        if i % 5 == 0 and good:
            g = good.pop(0)
            stream.append((g[0], g[1]))
    with Inspector.from_engine(run_engine, gate_threshold=2.0, batch_size=4, limits=LIMITS) as insp:
        for name, source in stream:
            insp.submit(source, key=name)
    records = list(insp.results())
    assert len(records) == len(stream)  # input count == result count
    assert [r.key for r in records] == [name for name, _ in stream]
    expected = {name: reason for name, _, reason in bad}
    for r in records:
        if r.key in expected:
            assert r.verdict == "ERROR" and r.reason == expected[r.key], (r.key, r.reason, r.message)
            assert r.to_json()["error"]["reason"] == r.reason
        else:
            assert r.verdict == "OK" and r.original_size == (60, 80) and r.reason is None, (r.key, r.message)
    stats = insp.stats()
    assert stats["errors"] == len(bad) and stats["results"] == len(stream)
    assert sum(stats["errors_by_reason"].values()) == len(bad)
