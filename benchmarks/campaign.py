"""Train the seed's table rows end to end at equal budgets, resumably, logging every command.

    python benchmarks/campaign.py --out /work/campaign/reference                       # const + one-model
    python benchmarks/campaign.py --out runs/seed-fabric --rows seed                   # all seven rows
    python benchmarks/campaign.py --out runs/seed-bottle --rows seed --kind bottle
    python benchmarks/campaign.py --out runs/reference --until stage1 --dry-run        # print the plan

The recipe that learns on a 2-core CPU (benchmarks/reference/README.md says why):

1. data      ``defectnet-synth KIND``: a training set (its test split is the validation split:
             gate thresholds are chosen on it, never on test data) and a held-out test set made
             with a seed that no training uses;
2. stage1    a one-model detector trained from random weights: the stand-in for the COCO-
             pretrained Cascade R-CNN the original starts from (its ``load_from``);
3. stage2    every detector row from it (``--init``) for the same number of epochs (equal
             training): one-model and the DefectNet variants (const, linear, inverse,
             exponential; the decaying gate-loss schedules stretched over the epochs as the LR
             steps are, ``--gate-period epochs/12``); ``--parallel`` runs side by side, one
             thread each;
4. twomodel  two-model_small / two-model_large: an image classifier trained for the same
             number of epochs, paired with the stage-2 one-model detector (``--detector``);
5. gate      (``--gate-rounds``, reference rows; an experiment, off by default) the const model
             fine-tuned further, each round on a freshly generated training set it has never
             seen (its own seed, no test split), at a lower LR and, in the later round, a larger
             gate-loss weight w0: on its 800 training images the gate's cross-entropy falls to
             ~0.02 while its validation ROC AUC stays ~0.94, so new images were the next thing to
             try. What it measured (benchmarks/results/gate_rounds_2026-12-01_fabric/): mAP up,
             the gate's ROC AUC and skip share at recall 0.95 barely moved, F1 down; the
             reference is packed from stage 2;
6. eval      each gated DefectNet row exported and its gate threshold for recall 0.95 chosen on
             the validation split (``defectnet-calibrate-gate``); ``defectnet-eval`` of every
             finished row on the held-out test set, one JSON per row at argmax and one per gated
             row at its threshold (``--stages eval,tables`` reports a campaign still training);
7. bench     every row exported and built for the fastest CPU engine (``defectnet-build-engine
             --backend auto``: ONNX Runtime / OpenVINO per graph under the accuracy gate), then
             one ``defectnet-bench`` of all rows, PyTorch fp32 and that engine side by side on
             300 held-out images at a normal share of 0.45, gated cases at the threshold
             validated for the target recall and with their gate-off twins (``OUT/bench/``).
             It times: run it on an otherwise idle machine (``--until eval`` first when other
             work shares the cores; ``BENCH_THREADS`` threads, default 2);
8. pack      ``defectnet-pack-run`` of the const run (the last gate round's, when there are rounds) into ``OUT/reference-const`` (float16,
             inference only): what the repository keeps as ``models/reference-const``;
9. tables    ``benchmarks/seed_compare.py``: the seed's table for KIND beside ours, as ratios to
             each table's one-model row (``OUT/seed_table.md``, ``.json``).

Every step is skipped when its output is complete (a run's ``run.json``, the data's
annotations, an eval JSON) and resumed from its last epoch checkpoint when it is not, so the
campaign can be stopped and started again at any time (also on another machine: copy OUT).
``OUT/campaign.jsonl`` gets one line per command: the command, start, wall seconds, exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from defectnet.runtime.backends.options import DEVICE_PATTERN
from defectnet.train.config import Variant
from defectnet.train.schedules import REFERENCE_EPOCHS

BIN = Path(sys.executable).parent
STAGES = ("data", "stage1", "stage2", "twomodel", "gate", "eval", "bench", "pack", "tables")
DETECTOR_ROWS = ("one-model", "const", "linear", "inverse", "exponential")
TWO_MODEL_ROWS = ("two-model-small", "two-model-large")
ROW_SETS = {"reference": ("one-model", "const"), "seed": (*DETECTOR_ROWS, *TWO_MODEL_ROWS)}
#: Seeds that training data must not use: the demo's data (``defectnet.demo.SEED``).
RESERVED_SEEDS = (11,)


@dataclass(frozen=True)
class GateRound:
    """One gate round: the const model fine-tuned on ``images`` freshly generated images
    (``seed``; all of them train, no test split) for ``epochs`` at ``lr`` with gate-loss weight
    ``gate_weight`` (the const schedule's w0; the original's is 0.15)."""

    seed: int
    images: int = 3000
    epochs: int = 3
    lr: float = 0.001
    gate_weight: float = 0.15

    def __post_init__(self) -> None:
        if min(self.images, self.epochs) < 1 or self.lr <= 0 or self.gate_weight <= 0:
            raise ValueError(f"a gate round needs images, epochs >= 1 and lr, gate_weight > 0: {self}")


#: The gate rounds of ``--gate-rounds`` (reference rows), as they were run.
REFERENCE_GATE_ROUNDS = (GateRound(seed=21, epochs=3), GateRound(seed=22, epochs=2, gate_weight=0.6))


@dataclass(frozen=True)
class Recipe:
    """The campaign's settings; every field is recorded in ``OUT/campaign.json``."""

    kind: str = "fabric"
    rows: tuple[str, ...] = ROW_SETS["reference"]
    images: int = 1000              # training set: 80 % train, 20 % validation
    holdout_images: int = 600       # held-out test set (90 % of it is the test split)
    seed: int = 0
    holdout_seed: int = 7
    backbone: str = "resnet18"
    preset: str = "compact"
    scale: str = "640x256"
    batch_size: int = 4
    lr: float = 0.01
    stage1_epochs: int = 16
    stage2_epochs: int = 32
    threads: int = 1                # per training process
    parallel: int = 2               # training processes side by side
    device: str = "cpu"             # training and eval device: cpu or cuda[:N] (a lent GPU machine)
    workers: int = 0                # DataLoader worker processes per training process
    target_recall: float = 0.95
    bench_images: int = 300         # held-out images the bench measures
    bench_normal_share: float = 0.45
    gate_rounds: tuple[GateRound, ...] = ()

    def __post_init__(self) -> None:
        if min(self.images, self.holdout_images, self.stage1_epochs, self.stage2_epochs, self.threads,
               self.parallel) < 1 or self.workers < 0:
            raise ValueError(f"image counts, epochs, threads and parallel must be >= 1 and workers >= 0: {self}")
        if not DEVICE_PATTERN.match(self.device):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.seed == self.holdout_seed:
            raise ValueError("the held-out test set needs a seed that no training data uses")
        unknown = set(self.rows) - set(ROW_SETS["seed"])
        if unknown or "one-model" not in self.rows:
            raise ValueError(f"rows must include one-model and come from {ROW_SETS['seed']}, got {self.rows}")
        if self.gate_rounds and "const" not in self.rows:
            raise ValueError("gate rounds fine-tune the const row: add const to the rows or drop the rounds")
        seeds = [g.seed for g in self.gate_rounds]
        if len(set(seeds)) != len(seeds) or set(seeds) & {self.seed, self.holdout_seed, *RESERVED_SEEDS}:
            raise ValueError(f"each gate round needs a fresh data seed (not {self.seed}, {self.holdout_seed}, "
                             f"{RESERVED_SEEDS} or another round's), got {seeds}")


class Campaign:
    def __init__(self, out: Path, recipe: Recipe, dry_run: bool = False) -> None:
        self.out, self.recipe, self.dry_run = out, recipe, dry_run
        self.data, self.holdout = out / "data", out / "holdout"
        self.log = out / "campaign.jsonl"
        self.stage1 = out / "stage1-one-model"

    def run_dir(self, row: str) -> Path:
        return self.out / f"stage2-{row}"

    def round_data(self, i: int) -> Path:
        return self.out / f"gate-data-{i + 1}"

    def round_dir(self, i: int) -> Path:
        return self.out / f"stage3-const-round{i + 1}"

    def final_const(self) -> Path:
        """The const run that is packed: the last gate round's, or stage 2's without rounds."""
        n = len(self.recipe.gate_rounds)
        return self.round_dir(n - 1) if n else self.run_dir("const")

    def gated_runs(self) -> list[tuple[str, Path]]:
        """(name, run folder) of every gated model that is evaluated at its recall threshold."""
        runs = [(row, self.run_dir(row)) for row in self.recipe.rows if row in DETECTOR_ROWS and row != "one-model"]
        if self.recipe.gate_rounds:
            runs.append(("const-gate-rounds", self.final_const()))
        return runs

    # -- running and logging ----------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        n = str(self.recipe.threads)
        return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}

    def _record(self, step: str, command: Sequence[str], t0: float, rc: int) -> None:
        line = {"step": step, "commands": [shlex.join(command)],
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t0)),
                "wall_s": round(time.time() - t0, 1), "exit_code": rc}
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def run(self, step: str, *commands: list[str], stdout: Path | None = None, allow_failure: bool = False) -> None:
        """Run ``commands``, at most ``parallel`` at a time, each logged with its own wall time;
        stop the campaign on the first failure unless ``allow_failure`` (the failure is logged
        and reported). stdout: the (single) command's output file."""
        for c in commands:
            print(f"[{step}] {shlex.join(c)}", flush=True)
        if self.dry_run:
            return
        pending, failed = list(commands), 0
        running: list[tuple[list[str], float, subprocess.Popen[bytes]]] = []
        sink = open(stdout, "wb") if stdout is not None else None  # noqa: SIM115 - closed below
        try:
            while pending or running:
                while pending and len(running) < self.recipe.parallel:
                    c = pending.pop(0)
                    running.append((c, time.time(), subprocess.Popen(c, env=self._env(), stdout=sink)))
                time.sleep(1.0)
                for item in [r for r in running if r[2].poll() is not None]:
                    running.remove(item)
                    c, t0, proc = item
                    self._record(step, c, t0, proc.returncode)
                    failed = failed or proc.returncode
        finally:
            if sink is not None:
                sink.close()
        if failed and allow_failure:
            print(f"[{step}] a command failed (exit code {failed}); going on without its output", flush=True)
        elif failed:
            if stdout is not None:
                stdout.unlink(missing_ok=True)
            sys.exit(f"[{step}] a command failed (exit code {failed}); fix it and run the campaign again "
                     "(it resumes)")

    # -- the steps --------------------------------------------------------------------------
    def _train(self, model: str, out: Path, epochs: int, *extra: str, data: Path | None = None,
               lr: float | None = None) -> list[str] | None:
        """The training command, or None when ``out`` is finished. Resumes a started run."""
        if (out / "run.json").is_file():
            return None
        r = self.recipe
        cmd = [str(BIN / "defectnet-train"), "--model", model, "--data", str(data or self.data), "--out", str(out),
               "--backbone", r.backbone, "--preset", r.preset, "--scale", r.scale, "--batch-size",
               str(r.batch_size), "--lr", f"{lr or r.lr:g}", "--epochs", str(epochs), "--seed", str(r.seed),
               "--no-progress", *self._device_args(), *extra]
        if r.workers:
            cmd += ["--workers", str(r.workers)]
        if any(p.is_dir() for p in (out / "checkpoints", out / "classifier" / "checkpoints")):
            cmd.append("--resume")
        return cmd

    def _device_args(self) -> list[str]:
        """``--device`` for training and eval commands, only off the CPU default."""
        return [] if self.recipe.device == "cpu" else ["--device", self.recipe.device]

    def _gate_period(self, row: str) -> list[str]:
        """The decaying gate-loss schedules (linear, inverse, exponential) stretched over the run
        as the LR steps are: the original's w(n) over 12 epochs becomes w(n * 12 / epochs), so the
        weight follows the original's curve over the longer run (linear: 1 - n/32, ending at 1/32 where
        the original's 12 epochs end at 1/12, instead of turning negative after epoch 12)."""
        if row not in ("linear", "inverse", "exponential") or self.recipe.stage2_epochs == REFERENCE_EPOCHS:
            return []
        return ["--gate-period", f"{self.recipe.stage2_epochs / REFERENCE_EPOCHS:.6g}"]

    def _synth(self, step: str, folder: Path, images: int, seed: int, test_share: float) -> None:
        if not (folder / "annotations" / "train.json").is_file():
            self.run(step, [str(BIN / "defectnet-synth"), self.recipe.kind, "--out", str(folder), "--images",
                            str(images), "--seed", str(seed), "--test-share", f"{test_share:g}", "--overwrite",
                            "--quiet"])

    def step_data(self) -> None:
        r = self.recipe
        self._synth("data", self.data, r.images, r.seed, 0.2)
        self._synth("data", self.holdout, r.holdout_images, r.holdout_seed, 0.9)

    def step_stage1(self) -> None:
        if cmd := self._train("one-model", self.stage1, self.recipe.stage1_epochs):
            self.run("stage1", cmd)

    def step_stage2(self) -> None:
        r = self.recipe
        cmds = [c for row in r.rows if row in DETECTOR_ROWS
                if (c := self._train(row, self.run_dir(row), r.stage2_epochs, "--init", str(self.stage1),
                                     *self._gate_period(row)))]
        if cmds:
            self.run("stage2", *cmds)

    def step_twomodel(self) -> None:
        r = self.recipe
        cmds = [c for row in r.rows if row in TWO_MODEL_ROWS
                if (c := self._train(row, self.run_dir(row), r.stage2_epochs, "--detector",
                                     str(self.run_dir("one-model")), "--classifier-epochs", str(r.stage2_epochs)))]
        if cmds:
            self.run("twomodel", *cmds)

    def step_gate(self) -> None:
        """Each gate round in turn: its fresh data, then the const fine-tune from the previous
        round (the first from stage 2's const)."""
        previous = self.run_dir("const")
        for i, g in enumerate(self.recipe.gate_rounds):
            self._synth("gate", self.round_data(i), g.images, g.seed, 0.0)
            if cmd := self._train("const", self.round_dir(i), g.epochs, "--init", str(previous), "--gate-weight",
                                  f"{g.gate_weight:g}", data=self.round_data(i), lr=g.lr):
                self.run("gate", cmd)
            previous = self.round_dir(i)

    def finished(self, run: Path) -> bool:
        """Whether ``run`` finished training (in a dry run every run counts as finished)."""
        return self.dry_run or (run / "run.json").is_file()

    def progress(self, run: Path) -> str:
        """Why ``run`` has no result yet: how far its training got."""
        epochs = sorted(run.glob("**/checkpoints/epoch_*"))
        return f"in training: epoch {int(epochs[-1].name.split('_')[-1])} saved" if epochs else "not trained yet"

    def step_eval(self) -> None:
        """Every finished row on the held-out test set, one eval JSON per row at argmax and one per
        gated row at its validated threshold. An unfinished row is skipped with a note (``--stages
        eval,tables`` reports a campaign that is still training)."""
        r = self.recipe
        gated = [(name, run) for name, run in self.gated_runs() if self.finished(run)]
        for _, run in gated:
            if (run / "gate_threshold.json").is_file():
                continue
            self._export("eval", run)
            self.run("eval", [str(BIN / "defectnet-calibrate-gate"), "--engine", str(run / "engine"), "--data",
                              str(self.data), "--split", "test", "--target-recall", str(r.target_recall), "--json",
                              "--no-progress"], stdout=run / "gate_threshold.json")
        evals: list[tuple[Path, list[str], list[str]]] = []
        runs = [(row, self.run_dir(row)) for row in r.rows]
        if r.gate_rounds:
            runs.append(("const-gate-rounds", self.final_const()))
        for name, run in runs:
            if not self.finished(run):
                print(f"[eval] {name}: {self.progress(run)}; not evaluated", flush=True)
                continue
            evals.append((self.out / f"eval_holdout_{name}_argmax.json", [str(run)], []))
        for row, run in gated:
            calibrated = run / "gate_threshold.json"
            if not calibrated.is_file():  # only in a dry run
                continue
            threshold = json.loads(calibrated.read_text())["threshold"]
            evals.append((self.out / f"eval_holdout_{row}_recall{r.target_recall:g}.json",
                          [str(run)], ["--gate-threshold", str(threshold)]))
        for result, rows, extra in evals:
            if not result.is_file():
                self.run("eval", [str(BIN / "defectnet-eval"), *rows, "--data", str(self.holdout), "--out",
                                  str(result), "--no-progress", *self._device_args(), *extra])

    def _export(self, step: str, run: Path) -> None:
        if not (run / "engine" / "manifest.json").is_file():
            self.run(step, [str(BIN / "defectnet-export"), "--checkpoint", str(run), "--data", str(self.data)])

    def step_bench(self) -> None:
        """The fastest CPU engine of every row, then one bench of all rows (PyTorch fp32 and that
        engine, gate on and off) into ``OUT/bench``. A build its accuracy gate rejects leaves
        ``engine-auto/manifest.rejected.json``: the row is benched in PyTorch only."""
        r = self.recipe
        bench = self.out / "bench"
        if (bench / "results.json").is_file():
            return
        if unfinished := [row for row in r.rows if not self.finished(self.run_dir(row))]:
            print(f"[bench] waits for every row to finish training ({', '.join(unfinished)} not yet)", flush=True)
            return
        threads = os.environ.get("BENCH_THREADS", "2")
        runs = [self.run_dir(row) for row in r.rows]
        for run in runs:
            self._export("bench", run)
            auto = run / "engine-auto"
            if not any((auto / f).is_file() for f in ("manifest.json", "manifest.rejected.json")):
                self.run("bench", [str(BIN / "defectnet-build-engine"), "--engine", str(run / "engine"), "--data",
                                   str(self.data), "--backend", "auto", "--threads", threads, "--out", str(auto)],
                         allow_failure=True)
        engines = [arg for run in runs for arg in ("--engine", str(run / "engine"))]
        self.run("bench", [str(BIN / "defectnet-bench"), *engines, "--data", str(self.holdout), "--normal-share",
                           f"{r.bench_normal_share:g}", "--max-images", str(r.bench_images), "--target-recall",
                           f"{r.target_recall:g}", "--val-data", str(self.data), "--val-split", "test", "--backends",
                           "torch,auto", "--threads", threads, "--repeat", "1", "--warmup", "2", "--batch", "1",
                           "--no-progress", "--out", str(bench)])

    def step_pack(self) -> None:
        out = self.out / "reference-const"
        if "const" in self.recipe.rows and not (out / "run.json").is_file():
            self.run("pack", [str(BIN / "defectnet-pack-run"), str(self.final_const()), "--out", str(out),
                              "--overwrite"])

    def step_tables(self) -> None:
        """The seed's table for this data set beside ours (``benchmarks/seed_compare.py``):
        ``OUT/seed_table.md`` and ``.json``, remade every time (it only reads)."""
        r = self.recipe
        argmax = {row: self.out / f"eval_holdout_{row}_argmax.json" for row in r.rows}
        if not argmax["one-model"].is_file():
            return
        missing = [arg for row, path in argmax.items() if not path.is_file()
                   for arg in ("--missing", f"{Variant(row).table_name}={self.progress(self.run_dir(row))}")]
        gated = [self.out / f"eval_holdout_{row}_recall{r.target_recall:g}.json"
                 for row in r.rows if row in DETECTOR_ROWS and row != "one-model"]
        self.run("tables", [sys.executable, str(Path(__file__).with_name("seed_compare.py")), "--dataset", r.kind,
                            "--eval", *[str(p) for p in argmax.values() if p.is_file()], *missing,
                            "--eval-recall", *[str(p) for p in gated if p.is_file()],
                            *(["--bench", str(bench)] if (bench := self.out / "bench").joinpath("results.json").is_file()
                              else []),
                            "--out", str(self.out / "seed_table.md"), "--json", str(self.out / "seed_table.json")])

    def __call__(self, stages: Sequence[str] = STAGES) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.dry_run:
            (self.out / "campaign.json").write_text(json.dumps(asdict(self.recipe), indent=2) + "\n")
        for stage in stages:
            getattr(self, f"step_{stage}")()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/reference"))
    parser.add_argument("--kind", choices=("fabric", "bottle"), default=Recipe.kind)
    parser.add_argument("--rows", choices=sorted(ROW_SETS), default="reference",
                        help="reference: one-model + const; seed: the seed table's seven rows")
    parser.add_argument("--until", choices=STAGES, default=STAGES[-1])
    parser.add_argument("--stages", default=None,
                        help="comma-separated stages to run, e.g. eval,tables to report a campaign that is still "
                             "training (unfinished rows are listed with their progress) [default: all up to --until]")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--gate-rounds", action="store_true",
                        help="reference rows: also fine-tune const in gate rounds on fresh data (an experiment; "
                             "the last round is then packed)")
    parser.add_argument("--stage1-epochs", type=int, default=Recipe.stage1_epochs)
    parser.add_argument("--stage2-epochs", type=int, default=Recipe.stage2_epochs)
    parser.add_argument("--images", type=int, default=Recipe.images)
    parser.add_argument("--parallel", type=int, default=Recipe.parallel)
    parser.add_argument("--scale", default=None, help="train scale [default: fabric 640x256, bottle 512x384]")
    parser.add_argument("--threads", type=int, default=Recipe.threads, help="threads per training process")
    parser.add_argument("--device", default=Recipe.device,
                        help="training and eval device, e.g. cuda on a GPU machine (the bench stays on CPU engines)")
    parser.add_argument("--workers", type=int, default=Recipe.workers,
                        help="DataLoader workers per training process (useful with --device cuda)")
    args = parser.parse_args(argv)
    scale = args.scale or ("640x256" if args.kind == "fabric" else "512x384")
    if args.gate_rounds and args.rows != "reference":
        parser.error("--gate-rounds fine-tunes the reference const: use it with --rows reference")
    rounds = REFERENCE_GATE_ROUNDS if args.gate_rounds else ()
    recipe = Recipe(kind=args.kind, rows=ROW_SETS[args.rows], images=args.images, stage1_epochs=args.stage1_epochs,
                    stage2_epochs=args.stage2_epochs, parallel=args.parallel, scale=scale, gate_rounds=rounds,
                    threads=args.threads, device=args.device, workers=args.workers)
    stages = STAGES[: STAGES.index(args.until) + 1]
    if args.stages:
        chosen = args.stages.split(",")
        if unknown := sorted(set(chosen) - set(STAGES)):
            parser.error(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
        stages = tuple(s for s in STAGES if s in chosen)
    Campaign(args.out, recipe, args.dry_run)(stages)


if __name__ == "__main__":
    main()
