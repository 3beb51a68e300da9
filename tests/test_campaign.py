"""benchmarks/campaign.py: the recipe's checks and the plan it prints (``--dry-run``), in
particular the reference's gate rounds: fresh seeds, each round from the previous, the last
round packed and evaluated."""

from __future__ import annotations

from pathlib import Path

import benchmark_scripts
import pytest

campaign = benchmark_scripts.load("campaign")


def _plan(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    campaign.main(["--out", str(tmp_path / "out"), "--dry-run", *args])
    return capsys.readouterr().out.splitlines()


def test_reference_plan_chains_the_gate_rounds_and_packs_the_last(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    lines = _plan(tmp_path, capsys, "--gate-rounds")
    out = tmp_path / "out"
    gate = [line for line in lines if line.startswith("[gate]")]
    rounds = campaign.REFERENCE_GATE_ROUNDS
    assert len(gate) == 2 * len(rounds)
    for i, g in enumerate(rounds):
        synth, train = gate[2 * i], gate[2 * i + 1]
        assert f"--seed {g.seed} --test-share 0 " in synth and str(out / f"gate-data-{i + 1}") in synth
        previous = out / ("stage2-const" if i == 0 else f"stage3-const-round{i}")
        assert f"--init {previous} " in train + " " and f"--gate-weight {g.gate_weight:g}" in train
        assert f"--lr {g.lr:g} --epochs {g.epochs} " in train
    last = out / f"stage3-const-round{len(rounds)}"
    pack = next(line for line in lines if line.startswith("[pack]"))
    assert f"defectnet-pack-run {last} " in pack
    assert any(f"defectnet-eval {last} " in line for line in lines if line.startswith("[eval]"))


def test_by_default_stage_two_const_is_packed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _plan(tmp_path, capsys)
    assert not [line for line in lines if line.startswith("[gate]")]
    pack = next(line for line in lines if line.startswith("[pack]"))
    assert f"defectnet-pack-run {tmp_path / 'out' / 'stage2-const'} " in pack


def test_a_gpu_campaign_trains_and_evaluates_on_the_device(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    lines = _plan(tmp_path, capsys, "--rows", "seed", "--device", "cuda", "--workers", "4")
    trains = [line for line in lines if "defectnet-train" in line]
    evals = [line for line in lines if line.startswith("[eval]") and "defectnet-eval" in line]
    assert len(trains) == 8 and evals  # stage 1 and the seven rows
    assert all("--device cuda" in line and "--workers 4" in line for line in trains)
    assert all("--device cuda" in line for line in evals)
    bench = next(line for line in lines if "defectnet-bench" in line)
    assert "--device" not in bench  # the bench measures CPU engines
    assert not [line for line in _plan(tmp_path, capsys) if "--device" in line or "--workers" in line]


@pytest.mark.parametrize("name", ["tpu", "cuda0", "cuda:x", ""])
def test_the_device_is_checked(name: str) -> None:
    with pytest.raises(ValueError, match="device must be"):
        campaign.Recipe(device=name)


@pytest.mark.parametrize("seeds", [(21, 21), (0,), (7,), (11,)])
def test_gate_rounds_need_fresh_seeds(seeds: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="fresh data seed"):
        campaign.Recipe(gate_rounds=tuple(campaign.GateRound(seed=s) for s in seeds))


def test_gate_rounds_only_with_reference_rows(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        campaign.main(["--out", str(tmp_path), "--dry-run", "--rows", "seed", "--gate-rounds"])


def test_gate_rounds_need_the_const_row() -> None:
    with pytest.raises(ValueError, match="const"):
        campaign.Recipe(rows=("one-model", "linear"), gate_rounds=(campaign.GateRound(seed=21),))
    with pytest.raises(ValueError, match="gate round"):
        campaign.GateRound(seed=21, gate_weight=0.0)


def test_the_demo_seed_is_reserved() -> None:
    from defectnet.demo import SEED

    assert SEED in campaign.RESERVED_SEEDS


def test_seed_plan_benches_every_row_on_pytorch_and_the_fastest_engine(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    lines = [line for line in _plan(tmp_path, capsys, "--rows", "seed") if line.startswith("[bench]")]
    out = tmp_path / "out"
    rows = campaign.ROW_SETS["seed"]
    builds = [line for line in lines if "defectnet-build-engine" in line]
    assert len(builds) == len(rows) and all("--backend auto" in b for b in builds)
    (bench,) = [line for line in lines if "defectnet-bench" in line]
    assert all(f"--engine {out / f'stage2-{row}' / 'engine'} " in bench for row in rows)
    assert "--backends torch,auto" in bench and "--target-recall 0.95" in bench and f"--out {out / 'bench'}" in bench


def test_a_campaign_still_training_reports_its_finished_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    c = campaign.Campaign(out, campaign.Recipe(rows=campaign.ROW_SETS["seed"]))
    for row in ("one-model", "const"):
        (c.run_dir(row)).mkdir(parents=True)
        (c.run_dir(row) / "run.json").write_text("{}")
        (c.run_dir(row) / "gate_threshold.json").write_text('{"threshold": 0.02}')
        (out / f"eval_holdout_{row}_argmax.json").write_text("{}")
    (c.run_dir("linear") / "checkpoints" / "epoch_0003").mkdir(parents=True)
    calls: list[list[str]] = []
    monkeypatch.setattr(c, "run", lambda step, *commands, **kw: calls.extend(commands))
    c(("eval", "bench", "tables"))
    evals = [" ".join(cmd) for cmd in calls if "defectnet-eval" in cmd[0]]
    # argmax evals exist for the finished rows; only const at its validated threshold is left
    assert len(evals) == 1 and "stage2-const --data" in evals[0] and "--gate-threshold 0.02" in evals[0]
    assert not [cmd for cmd in calls if "defectnet-bench" in cmd[0]]  # the bench waits for every row
    (tables,) = [" ".join(cmd) for cmd in calls if "seed_compare.py" in " ".join(cmd)]
    assert "--missing defectnet_linear=in training: epoch 3 saved" in tables
    assert "--missing two-model_small=not trained yet" in tables
    assert str(out / "eval_holdout_one-model_argmax.json") in tables
