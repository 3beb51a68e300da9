"""The benchmark end to end as one library call: :func:`run_benchmark`.

discover rows (:func:`~defectnet.bench.scenario.discover_rows`) -> plan cases per backend
(:func:`~defectnet.bench.scenario.plan_cases`) -> choose the images
(:func:`~defectnet.bench.imageset.build_image_set`) -> load every case
(:func:`~defectnet.bench.runner.load_case`; a case that cannot run here is skipped with the
reason) -> with ``target_recall``, each gated case's threshold chosen on the validation
images (:func:`~defectnet.bench.gating.choose_thresholds`) -> a gate-off twin of every gated
case (:func:`~defectnet.bench.gating.with_gate_off`) -> interleaved measurement
(:func:`~defectnet.bench.runner.run_cases`) -> numbers
(:func:`~defectnet.bench.results.summarise`) -> :class:`~defectnet.bench.results.BenchResult`.
Writing files is :func:`write_outputs` (tables, JSON, CSV, plots).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from defectnet.bench.imageset import build_image_set
from defectnet.bench.results import BenchResult
from defectnet.bench.runner import LoadedCase, load_case, run_cases
from defectnet.bench.scenario import (
    BACKENDS,
    TENSORRT,
    Skip,
    discover_rows,
    plan_cases,
    tensorrt_unavailable_reason,
)
from defectnet.errors import ConfigError, DefectNetError

#: ``--quick``: one repetition, one warm-up call, at most this many images.
QUICK_REPEAT, QUICK_WARMUP, QUICK_MAX_IMAGES = 1, 1, 40


@dataclass(frozen=True)
class BenchSettings:
    """Everything that defines a benchmark run (recorded in results.json).

    repeat / warmup: None = 5 / 3, or 1 / 1 with ``quick`` (which also caps the images at
    40 unless ``max_images`` says otherwise). batch: the batch size of the throughput pass
    (1 = no batch pass). threads: torch intra-op threads and ONNX Runtime
    ``intra_op_num_threads`` (None = the libraries' defaults). device: ``cpu`` or ``cuda``
    for torch and ONNX Runtime (TensorRT always runs on CUDA). normal_share: resample the
    images to this share (:mod:`defectnet.bench.resample`), deterministic for ``seed``.
    gate_threshold: P(defective) at which every gated row (DefectNet gate, two-model
    classifier) runs its detector, on every backend (None = each model's own: the run's
    config for PyTorch, the manifest for engines). gate_off: also measure every gated case
    with its detector forced on every image (:mod:`defectnet.bench.gating`). target_recall:
    instead of ``gate_threshold``, each gated case runs at the largest threshold that keeps
    this gate recall on the validation images: ``val_split`` of ``val_data`` (default: the
    measured data folder; the pair must differ from the measured ``data`` / ``split``).
    scale: the test scale ``(long, short)`` every case resizes to (None = each model's own:
    its training scale for PyTorch, the manifest's for engines), e.g. the seed's 1344x576.
    """

    data: str
    split: str = "test"
    engines: tuple[str, ...] = ()
    checkpoints: tuple[str, ...] = ()
    runs_dir: str | None = None
    backends: tuple[str, ...] = BACKENDS
    normal_share: float | None = None
    max_images: int | None = None
    repeat: int | None = None
    warmup: int | None = None
    batch: int = 4
    threads: int | None = None
    device: str = "cpu"
    seed: int = 0
    quick: bool = False
    gate_threshold: float | None = None
    gate_off: bool = True
    target_recall: float | None = None
    val_split: str | None = None
    val_data: str | None = None
    scale: tuple[int, int] | None = None

    def resolved(self) -> BenchSettings:
        """Defaults filled in (``--quick`` applied), values checked."""
        s = dataclasses.replace(
            self,
            repeat=self.repeat if self.repeat is not None else (QUICK_REPEAT if self.quick else 5),
            warmup=self.warmup if self.warmup is not None else (QUICK_WARMUP if self.quick else 3),
            max_images=self.max_images if self.max_images is not None else (QUICK_MAX_IMAGES if self.quick else None))
        if s.repeat is None or s.repeat < 1:
            raise ConfigError(f"--repeat must be >= 1, got {s.repeat}")
        if s.warmup is None or s.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0, got {s.warmup}")
        if s.batch < 1:
            raise ConfigError(f"--batch must be >= 1, got {s.batch}")
        if s.threads is not None and s.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {s.threads}")
        if s.max_images is not None and s.max_images < 1:
            raise ConfigError(f"--max-images must be >= 1, got {s.max_images}")
        if s.device not in ("cpu", "cuda"):
            raise ConfigError(f"--device must be cpu or cuda, got {s.device!r}")
        if s.gate_threshold is not None and not 0.0 <= s.gate_threshold <= 1.0:
            raise ConfigError(f"--gate-threshold is a probability in [0, 1], got {s.gate_threshold}")
        if s.target_recall is not None:
            if not 0.0 < s.target_recall <= 1.0:
                raise ConfigError(f"--target-recall is a recall in (0, 1], got {s.target_recall}")
            if s.gate_threshold is not None:
                raise ConfigError("--gate-threshold and --target-recall both set the gate threshold; give one")
            if s.val_split is None:
                raise ConfigError("--target-recall needs the validation images to choose the threshold on: "
                                  "--val-split train (the measured data's train split) or --val-data DIR "
                                  "--val-split SPLIT; never the measured test images")
            same_data = os.path.realpath(s.val_data or s.data) == os.path.realpath(s.data)
            if same_data and s.val_split == s.split:
                raise ConfigError(f"--val-split {s.val_split} is the split being measured; choose the threshold on "
                                  "other images (--val-split train, or --val-data DIR)")
        elif s.val_split is not None or s.val_data is not None:
            raise ConfigError("--val-split/--val-data only apply with --target-recall R")
        if s.scale is not None and (len(s.scale) != 2 or min(s.scale) < 32):
            raise ConfigError(f"--scale is LONGxSHORT in pixels, each >= 32, got {s.scale}")
        if s.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: PyTorch sees no CUDA device here; use --device cpu")
        return s

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def command_line(self, out: str | os.PathLike[str] | None = None) -> list[str]:
        """The ``defectnet-bench`` arguments that reproduce these (unresolved) settings."""
        args = ["defectnet-bench"]
        for flag, values in (("--engine", self.engines), ("--checkpoint", self.checkpoints)):
            for v in values:
                args += [flag, str(v)]
        if self.runs_dir is not None:
            args += ["--runs-dir", str(self.runs_dir)]
        args += ["--data", str(self.data), "--split", self.split]
        if out is not None:
            args += ["--out", str(out)]
        for flag, value in (("--normal-share", self.normal_share), ("--repeat", self.repeat),
                            ("--warmup", self.warmup), ("--max-images", self.max_images), ("--threads", self.threads),
                            ("--gate-threshold", self.gate_threshold), ("--target-recall", self.target_recall),
                            ("--val-data", self.val_data), ("--val-split", self.val_split),
                            ("--scale", None if self.scale is None else "x".join(map(str, self.scale)))):
            if value is not None:
                args += [flag, str(value)]
        if not self.gate_off:
            args.append("--no-gate-off")
        args += ["--batch", str(self.batch), "--backends", ",".join(self.backends), "--device", self.device,
                 "--seed", str(self.seed)]
        return args + (["--quick"] if self.quick else [])


def run_benchmark(settings: BenchSettings, *, progress: bool = True, log: Callable[[str], None] = lambda _: None,
                  clock: Callable[[], float] = time.perf_counter) -> BenchResult:
    """Run the benchmark described by ``settings`` (see the module docstring)."""
    from defectnet.bench.gating import choose_thresholds, with_gate_off
    from defectnet.bench.results import summarise
    from defectnet.evaluation.environment import library_versions, machine_info

    s = settings.resolved()
    assert s.repeat is not None and s.warmup is not None
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    rows = discover_rows(engines=s.engines, checkpoints=s.checkpoints, runs_dir=s.runs_dir)
    trt_reason = tensorrt_unavailable_reason() if TENSORRT in s.backends else None
    cases, skips = plan_cases(rows, s.backends, tensorrt_unavailable=trt_reason)
    images = build_image_set(s.data, s.split, normal_share=s.normal_share, max_images=s.max_images, seed=s.seed)
    log(f"{len(rows)} model row(s), {len(cases)} case(s) to measure on {len(images)} image(s) "
        f"({images.num_normal} normal); {len(skips)} skipped")
    loaded: list[LoadedCase] = []
    for case in cases:
        try:
            loaded.append(load_case(case, images, device=s.device, threads=s.threads, clock=clock,
                                    gate_threshold=s.gate_threshold, scale=s.scale))
            log(f"loaded {case.key} in {loaded[-1].load_s:.1f} s")
        except DefectNetError as e:
            skips.append(Skip(case.row.name, case.backend, case.precision, str(e)))
            log(f"skipped {case.key}: {e}")
    if not loaded:
        reasons = "; ".join(f"{k.row} / {k.backend}: {k.reason}" for k in skips) or "no cases"
        raise ConfigError(f"nothing could be measured ({reasons})")
    points: dict[str, dict[str, Any]] = {}
    if s.target_recall is not None:
        assert s.val_split is not None
        val_images = build_image_set(s.val_data or s.data, s.val_split, seed=s.seed)
        if val_images.class_names != images.class_names:
            raise ConfigError(f"the validation images ({s.val_data or s.data} / {s.val_split}) have classes "
                              f"{val_images.class_names} but the measured ones {images.class_names}; validate on "
                              "the same data set")
        points = choose_thresholds(loaded, val_images, s.target_recall, log=log)
    if s.gate_off:
        loaded = with_gate_off(loaded)
    raws = run_cases(loaded, images, repeat=s.repeat, warmup=s.warmup, batch=s.batch, clock=clock, progress=progress)
    results, baseline = summarise(raws, images, batch=s.batch, warmup=s.warmup)
    for r in results:
        r.operating_point = points.get(r.key)
    notes = []
    if baseline is None and any(r.speedup_gate is not None for r in results):
        notes.append("no PyTorch one-model row was measured, so there is no speed-up against it; the gate-off rows "
                     "show what the gate buys on each backend ('Gate on vs gate off'); add the one-model run "
                     "(--checkpoint RUN) and the torch backend for the speed-up against the baseline")
    elif baseline is None:
        notes.append("no PyTorch one-model row and no gate-off row was measured, so there are no speed-ups; add "
                     "the one-model run (--checkpoint RUN) and the torch backend, or leave out --no-gate-off")
    return BenchResult(results, [k.to_dict() for k in skips], dict(images.selection), s.to_dict(), machine_info(),
                       library_versions(), baseline,
                       created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), notes=notes)


def default_out_dir(now: _dt.datetime | None = None) -> Path:
    """``bench-results/<YYYYmmdd-HHMMSS>`` (local time)."""
    return Path("bench-results") / (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")


def write_outputs(result: BenchResult, out: str | os.PathLike[str], *, plots: bool = True) -> dict[str, Any]:
    """tables.md, results.json, results.csv and (``plots``) the PNG files under ``out``."""
    from defectnet.bench.plots import write_plots
    from defectnet.bench.writers import write_results

    files: dict[str, Any] = dict(write_results(result, out))
    if plots:
        files["plots"] = write_plots(result, out)
    return files
