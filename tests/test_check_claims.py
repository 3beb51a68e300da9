"""benchmarks/check_claims.py: every number of the README's "Measured here" and of
benchmarks/README.md matches the recorded file it cites, and the check fails when a number,
a file or a citation changes (on a temporary copy of the documents, manifest and files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import benchmark_scripts
import pytest

ROOT = Path(__file__).resolve().parent.parent


check_claims = benchmark_scripts.load("check_claims")


def test_every_published_number_matches_its_file() -> None:
    report = check_claims.check(ROOT)
    assert report.ok, "\n".join(report.problems)
    assert report.checked > 200  # the README's measured section and benchmarks/README.md
    # the files recorded before their tool stored its command are named, not hidden
    assert any("eval_2026-11-28_holdout540_48ep.json holds no command" in n for n in report.notes)


@pytest.fixture()
def copy_root(tmp_path: Path) -> Path:
    """The two documents, the manifest and every cited file, copied under tmp_path."""
    manifest = json.loads((ROOT / check_claims.MANIFEST).read_text())
    for rel in ["README.md", "benchmarks/README.md", str(check_claims.MANIFEST)] + [
            s["file"] for s in manifest["sources"].values()]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    assert check_claims.check(tmp_path).ok
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def _problems(root: Path) -> str:
    report = check_claims.check(root)
    assert not report.ok
    return "\n".join(report.problems)


def test_an_edited_number_fails(copy_root: Path) -> None:
    _edit(copy_root / "README.md", "| one-model | PyTorch fp32 | 90.2 (103.1)", "| one-model | PyTorch fp32 | 90.3 (103.1)")
    problems = _problems(copy_root)
    assert "'| one-model | PyTorch fp32 | 90.2 (103.1) | 1.00x | - | - | 0.860 | 0.486 |' is not in the checked " \
           "sections" in problems
    assert "README.md:" in problems and "the number 90.3 is not backed" in problems


def test_a_number_edited_in_text_and_manifest_still_fails_against_its_file(copy_root: Path) -> None:
    _edit(copy_root / "benchmarks/README.md", "| throughput | 26.3 frames/s", "| throughput | 27.3 frames/s")
    _edit(copy_root / check_claims.MANIFEST, "| throughput | 26.3 frames/s", "| throughput | 27.3 frames/s")
    assert "27.3 in '| throughput | 27.3 frames/s" in _problems(copy_root)


def test_a_changed_recorded_file_fails(copy_root: Path) -> None:
    path = copy_root / "benchmarks/results/eval_2026-12-01_fabric-reference-32ep_holdout540_threads2/eval_holdout_argmax_threads2.json"
    data = json.loads(path.read_text())
    data["results"][1]["att_defective_ms"] += 0.2   # const's ATT_defective 94.09 -> 94.29: "94.1" no longer holds
    path.write_text(json.dumps(data))
    problems = _problems(copy_root)
    assert "94.1 in" in problems and "att_defective_ms = 94.3" in problems


def test_a_new_uncited_number_fails(copy_root: Path) -> None:
    _edit(copy_root / "README.md", "The paper's accuracy claim holds here",
          "The gate's ROC AUC was 0.95. The paper's accuracy claim holds here")
    assert "the number 0.95 is not backed" in _problems(copy_root)


def test_a_removed_citation_fails(copy_root: Path) -> None:
    _edit(copy_root / "README.md",
          "\n[source: `benchmarks/results/nncf_compare_2026-12-01_reference-const-32ep_holdout540.json`].", ".")
    assert "does not cite its source nncf" in _problems(copy_root)


def test_code_and_other_sections_are_not_claims(copy_root: Path) -> None:
    """Numbers in code spans and outside the checked sections are commands and prose."""
    _edit(copy_root / "README.md", "## License\n", "## License\n\nMeasured on 3 cores, 7 times.\n")
    _edit(copy_root / "README.md", "The paper's accuracy claim holds here",
          "Rerun them with `defectnet-eval --threads 9`. The paper's accuracy claim holds here")
    assert check_claims.check(copy_root).ok


def test_cli_exit_status(copy_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_claims.main(["--root", str(copy_root)]) == 0
    _edit(copy_root / "benchmarks/README.md", "p50 1222 ms", "p50 1221 ms")
    assert check_claims.main(["--root", str(copy_root)]) == 1
    assert "FAIL: benchmarks/README.md" in capsys.readouterr().out


def test_number_tokens_and_rounding() -> None:
    assert check_claims.numbers("ResNet-18 at 640x256: 1.5-1.6x, 10,000 frames, +1.5 MiB, INT8 37.2 (3.86x)") == [
        "640x256", "1.5", "1.6", "10,000", "+1.5", "37.2", "3.86"]
    assert check_claims.agrees("3.86", 3.857991995) and not check_claims.agrees("3.86", 3.8651)
    assert check_claims.agrees("10,000", 10000) and check_claims.agrees("+1.5", 1.484375)
    assert check_claims.resolve({"cases": [{"row": "a", "x": {"y": 1}}, {"row": "b", "x": {"y": 2}}]},
                                "cases[row=b].x.y") == 2
