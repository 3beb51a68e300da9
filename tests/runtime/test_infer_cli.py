"""defectnet-infer (batch mode): one record per input (the schema's), error records for
unreadable files, annotated images, the summary, set-up errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from record_schema import read_records
from runtime_helpers import images

from defectnet.runtime.cli import main


def _write_inputs(root: Path) -> list[Path]:
    folder = root / "imgs"
    (folder / "sub").mkdir(parents=True)
    paths = []
    for i, im in enumerate(images(3, seed=4)):
        p = folder / ("sub" if i == 2 else "") / f"img_{i}.png"
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(p)
        paths.append(p)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return paths


def test_infer_writes_one_record_per_input(run_engine: Path, tmp_path: Path) -> None:
    _write_inputs(tmp_path)
    missing = tmp_path / "missing.png"
    out = tmp_path / "results.jsonl"
    annotated = tmp_path / "annotated"
    result = CliRunner().invoke(main, [str(tmp_path / "imgs"), str(missing), "--engine", str(run_engine),
                                       "--out", str(out), "--batch", "2", "--save-images", str(annotated),
                                       "--gate-threshold", "0.0", "--no-progress"])
    assert result.exit_code == 0, result.output
    records = read_records(out)  # complete lines, each valid against docs/record.schema.json
    folder = tmp_path / "imgs"
    assert [r["key"] for r in records] == [str(folder / "broken.jpg"), str(folder / "img_0.png"),
                                           str(folder / "img_1.png"), str(folder / "sub" / "img_2.png"), str(missing)]
    assert all(r["image"] == r["key"] for r in records)
    errors = {Path(r["key"]).name: r["error"] for r in records if r["verdict"] == "ERROR"}
    assert set(errors) == {"broken.jpg", "missing.png"}
    assert errors["broken.jpg"]["reason"] == "decode_error" and "cannot decode" in errors["broken.jpg"]["message"]
    assert errors["missing.png"]["reason"] == "not_found" and "does not exist" in errors["missing.png"]["message"]
    good = [r for r in records if r["verdict"] != "ERROR"]
    for r in good:
        assert r["verdict"] in ("OK", "NG") and 0.0 <= r["p_defective"] <= 1.0 and r["ran_detector"]
        assert {"box", "score", "label", "class_name"} <= set(r["detections"][0])
        assert "gate" in r["timings_ms"] and Path(r["annotated"]).is_file()
    assert sorted(p.name for p in annotated.iterdir()) == ["img_0.jpg", "img_1.jpg", "img_2.jpg"]
    with Image.open(annotated / "img_0.jpg") as im:
        assert im.size == (300, 180)  # the original image, annotated
    assert "inputs 5: 3 processed" in result.output and "2 errors (decode_error 1, not_found 1)" in result.output
    assert "gate pass rate 1.000" in result.output and "ATT" in result.output


def test_infer_torch_backend_and_high_threshold(run_engine: Path, tmp_path: Path) -> None:
    paths = _write_inputs(tmp_path)
    out = tmp_path / "r.jsonl"
    result = CliRunner().invoke(main, [str(p) for p in paths] + ["--engine", str(run_engine), "--out", str(out),
                                                                 "--backend", "torch", "--gate-threshold", "1.5",
                                                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    records = read_records(out)
    assert [r["key"] for r in records] == [str(p) for p in paths]  # files named directly: in the order given
    assert all(r["verdict"] == "OK" and not r["ran_detector"] for r in records)
    assert "gate pass rate 0.000" in result.output


def test_infer_bad_engine_is_a_clean_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [str(tmp_path), "--engine", str(tmp_path / "nope"), "--out",
                                       str(tmp_path / "r.jsonl")])
    assert result.exit_code == 1 and "does not exist" in result.output
    assert not (tmp_path / "r.jsonl").exists()


def test_infer_tensorrt_backend_without_tensorrt_says_what_it_needs(run_engine: Path, tmp_path: Path) -> None:
    from defectnet.runtime.backends.trt import tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT and a GPU are present: the backend runs instead of failing")
    paths = _write_inputs(tmp_path)
    out = tmp_path / "r.jsonl"
    result = CliRunner().invoke(main, [str(p) for p in paths] + ["--engine", str(run_engine), "--out", str(out),
                                                                 "--backend", "tensorrt", "--no-progress"])
    assert result.exit_code == 1 and "needs an NVIDIA GPU with TensorRT" in result.output
    assert not out.exists()


def test_exit_status_is_non_zero_only_for_set_up_failures(run_engine: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("named on the command line: an input whatever its suffix")
    out = tmp_path / "r.jsonl"
    common = ["--engine", str(run_engine), "--no-progress"]
    result = CliRunner().invoke(main, [str(tmp_path / "empty"), "--out", str(out), *common])
    assert result.exit_code == 2 and "no inputs" in result.output and not out.exists()
    (tmp_path / "a_file").write_text("x")
    result = CliRunner().invoke(main, [str(tmp_path / "notes.txt"), "--out", str(tmp_path / "a_file" / "r.jsonl"),
                                       *common])
    assert result.exit_code == 1 and "cannot write the record file" in result.output
    result = CliRunner().invoke(main, [str(tmp_path / "notes.txt"), str(tmp_path / "empty"), "--out", str(out),
                                       *common])
    assert result.exit_code == 0, result.output  # every input got a record, an error record included
    (record,) = read_records(out)
    assert record["key"] == str(tmp_path / "notes.txt") and record["error"]["reason"] == "unsupported_format"
    assert "inputs 1: 0 processed (0 OK, 0 NG), 1 errors (unsupported_format 1)" in result.output


def test_contact_sheet_draws_the_records(run_engine: Path, tmp_path: Path) -> None:
    from defectnet.data.contact_sheet import CAPTION_HEIGHT

    ratio = 0.0
    for path in _write_inputs(tmp_path):
        with Image.open(path) as im:
            ratio = max(ratio, im.height / im.width)
    out, sheet = tmp_path / "results.jsonl", tmp_path / "sheet.png"
    result = CliRunner().invoke(main, [str(tmp_path / "imgs"), str(tmp_path / "missing.png"), "--engine",
                                       str(run_engine), "--out", str(out), "--contact-sheet", str(sheet),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"contact sheet: {sheet}" in result.output
    with Image.open(sheet) as im:  # 3 images + 2 error cells in 4 columns of 320 px
        assert im.size == (4 * 320, 2 * (round(320 * ratio) + CAPTION_HEIGHT))
    watch = CliRunner().invoke(main, ["--watch", str(tmp_path / "imgs"), "--engine", str(run_engine), "--out",
                                      str(tmp_path / "w.jsonl"), "--contact-sheet", str(sheet), "--once"])
    assert watch.exit_code != 0 and "--contact-sheet is for batch" in watch.output
