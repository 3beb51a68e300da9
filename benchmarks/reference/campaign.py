"""Train the reference models end to end, resumably, and log every command with its wall time.

    python benchmarks/reference/campaign.py --out runs/reference            # everything
    python benchmarks/reference/campaign.py --out runs/reference --until stage1
    python benchmarks/reference/campaign.py --out runs/reference --dry-run  # print the plan

The recipe that learns on a 2-core CPU (see benchmarks/reference/README.md):

1. data      ``defectnet-synth fabric`` -> a training set (its test split is the validation
             split: gate thresholds are chosen on it) and a held-out test set made with a seed
             no training uses;
2. stage1    a one-model detector trained from random weights: the stand-in for the COCO-
             pretrained Cascade R-CNN the original starts from (``load_from``);
3. stage2    from it (``--init``), DefectNet-const and the one-model baseline, for the same
             number of epochs (equal training), side by side with one thread each;
4. eval      ``defectnet-eval`` of both on the held-out test set, and the gate threshold for
             recall 0.95 chosen on the validation split (``defectnet-calibrate-gate``);
5. pack      ``defectnet-pack-run`` of the const run into ``OUT/reference-const`` (float16,
             inference only): what goes into the repository as ``models/reference-const``.

Every step is skipped when its output is complete (a run's ``run.json``, the data's
annotations, the eval JSON) and resumed from its last epoch checkpoint when it is not, so the
script can be stopped and started again at any time (also across machines: copy ``--out``).
``OUT/campaign.jsonl`` gets one line per step: the command, start, end and wall seconds.
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
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
STAGES = ("data", "stage1", "stage2", "eval", "pack")


@dataclass(frozen=True)
class Recipe:
    """The campaign's settings; every field is recorded in ``OUT/campaign.json``."""

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
    threads: int = 1                # per training process (stage 2 runs two side by side)
    target_recall: float = 0.95
    variants: tuple[str, ...] = field(default=("const", "one-model"))

    def __post_init__(self) -> None:
        if min(self.images, self.holdout_images, self.stage1_epochs, self.stage2_epochs, self.threads) < 1:
            raise ValueError(f"image counts, epochs and threads must be >= 1: {self}")
        if self.seed == self.holdout_seed:
            raise ValueError("the held-out test set needs a seed that no training data uses")


class Campaign:
    def __init__(self, out: Path, recipe: Recipe, dry_run: bool = False) -> None:
        self.out, self.recipe, self.dry_run = out, recipe, dry_run
        self.data, self.holdout = out / "data", out / "holdout"
        self.log = out / "campaign.jsonl"

    # -- running and logging ----------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        n = str(self.recipe.threads)
        return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}

    def _record(self, step: str, commands: Sequence[Sequence[str]], t0: float, rc: int) -> None:
        line = {"step": step, "commands": [shlex.join(c) for c in commands], "started": time.strftime(
            "%Y-%m-%dT%H:%M:%S%z", time.localtime(t0)), "wall_s": round(time.time() - t0, 1), "exit_code": rc}
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def run(self, step: str, *commands: list[str], stdout: Path | None = None) -> None:
        """Run ``commands`` in parallel (one thread each), wait for all, log them as one step.
        stdout: write the (single) command's standard output to this file."""
        for c in commands:
            print(f"[{step}] {shlex.join(c)}", flush=True)
        if self.dry_run:
            return
        t0 = time.time()
        sink = open(stdout, "wb") if stdout is not None else None  # noqa: SIM115 - closed below
        try:
            procs = [subprocess.Popen(c, env=self._env(), stdout=sink) for c in commands]
            rcs = [p.wait() for p in procs]
        finally:
            if sink is not None:
                sink.close()
        rc = next((r for r in rcs if r), 0)
        self._record(step, commands, t0, rc)
        if rc:
            if stdout is not None:
                stdout.unlink(missing_ok=True)
            sys.exit(f"[{step}] failed with exit code {rc}; fix it and run the campaign again (it resumes)")

    # -- the steps --------------------------------------------------------------------------
    def _train(self, model: str, out: Path, epochs: int, init: Path | None = None) -> list[str] | None:
        """The training command, or None when ``out`` is finished. Resumes a started run."""
        if (out / "run.json").is_file():
            return None
        r = self.recipe
        cmd = [str(BIN / "defectnet-train"), "--model", model, "--data", str(self.data), "--out", str(out),
               "--backbone", r.backbone, "--preset", r.preset, "--scale", r.scale, "--batch-size",
               str(r.batch_size), "--lr", str(r.lr), "--epochs", str(epochs), "--seed", str(r.seed),
               "--no-progress"]
        if init is not None:
            cmd += ["--init", str(init)]
        if (out / "checkpoints").is_dir():
            cmd.append("--resume")
        return cmd

    def step_data(self) -> None:
        r = self.recipe
        for folder, images, seed, test_share in ((self.data, r.images, r.seed, 0.2),
                                                 (self.holdout, r.holdout_images, r.holdout_seed, 0.9)):
            if not (folder / "annotations" / "test.json").is_file():
                self.run("data", [str(BIN / "defectnet-synth"), "fabric", "--out", str(folder), "--images",
                                  str(images), "--seed", str(seed), "--test-share", str(test_share), "--overwrite",
                                  "--quiet"])

    def step_stage1(self) -> None:
        cmd = self._train("one-model", self.out / "stage1-one-model", self.recipe.stage1_epochs)
        if cmd:
            self.run("stage1", cmd)

    def step_stage2(self) -> None:
        init = self.out / "stage1-one-model"
        cmds = [c for v in self.recipe.variants
                if (c := self._train(v, self.out / f"stage2-{v}", self.recipe.stage2_epochs, init))]
        if cmds:
            self.run("stage2", *cmds)

    def step_eval(self) -> None:
        """Export each gated run, choose its threshold on the validation split, then evaluate
        every run on the held-out test set at argmax and at that threshold."""
        r = self.recipe
        runs = {v: self.out / f"stage2-{v}" for v in r.variants}
        for variant, run in runs.items():
            if variant == "one-model" or (run / "gate_threshold.json").is_file():
                continue
            if not (run / "engine" / "manifest.json").is_file():
                self.run("eval", [str(BIN / "defectnet-export"), "--checkpoint", str(run), "--data", str(self.data)])
            self.run("eval", [str(BIN / "defectnet-calibrate-gate"), "--engine", str(run / "engine"), "--data",
                              str(self.data), "--split", "test", "--target-recall", str(r.target_recall), "--json",
                              "--no-progress"], stdout=run / "gate_threshold.json")
        evals = [(self.out / "eval_holdout_argmax.json", [])]
        for variant, run in runs.items():
            if variant != "one-model" and (run / "gate_threshold.json").is_file():
                threshold = json.loads((run / "gate_threshold.json").read_text())["threshold"]
                evals.append((self.out / f"eval_holdout_{variant}_recall{r.target_recall:g}.json",
                              ["--gate-threshold", str(threshold)]))
        for result, extra in evals:
            if not result.is_file():
                self.run("eval", [str(BIN / "defectnet-eval"), *map(str, runs.values()), "--data",
                                  str(self.holdout), "--out", str(result), "--no-progress", *extra])

    def step_pack(self) -> None:
        out = self.out / "reference-const"
        if not (out / "run.json").is_file():
            self.run("pack", [str(BIN / "defectnet-pack-run"), str(self.out / "stage2-const"), "--out", str(out),
                              "--overwrite"])

    def __call__(self, until: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "campaign.json").write_text(json.dumps(self.recipe.__dict__, indent=2, default=list) + "\n")
        for stage in STAGES[: STAGES.index(until) + 1]:
            getattr(self, f"step_{stage}")()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/reference"))
    parser.add_argument("--until", choices=STAGES, default=STAGES[-1])
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--stage1-epochs", type=int, default=Recipe.stage1_epochs)
    parser.add_argument("--stage2-epochs", type=int, default=Recipe.stage2_epochs)
    parser.add_argument("--images", type=int, default=Recipe.images)
    args = parser.parse_args(argv)
    recipe = Recipe(images=args.images, stage1_epochs=args.stage1_epochs, stage2_epochs=args.stage2_epochs)
    Campaign(args.out, recipe, args.dry_run)(args.until)


if __name__ == "__main__":
    main()
