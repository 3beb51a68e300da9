"""``defectnet-infer FILES_OR_FOLDERS --out OUT``: inspect a fixed list of inputs, one record
each, streamed to OUT; an interrupted run resumes.

* **Inputs** (:func:`collect_inputs`), in order: a path named on the command line is an input
  whatever its suffix (a missing one too: its record says ``not_found``); a folder is walked
  (:func:`~defectnet.runtime.inspection.folders.walk_image_entries`: every entry with an image
  suffix, also dangling symlinks, folders named like images and unreadable files, sorted; a
  sub-folder that cannot be listed, or vanishes during the walk, is an input too). A record's
  ``key`` is the path string as given or found (``FOLDER/sub/x.png``); an input listed twice
  is inspected once.
* **One input rule, one record**: every input goes through an
  :class:`~defectnet.runtime.inspection.inspector.Inspector` (the header is checked before any
  pixel is decoded; every failure is an error record with a
  :class:`~defectnet.runtime.inspection.validation.Reason` code), so batch mode, ``--watch``
  and the Python API write the same record (:meth:`InspectionResult.to_json`, schema
  ``docs/record.schema.json``).
* **Nothing lost**: OUT is a :class:`~defectnet.runtime.inspection.record_log.RecordLog`:
  each record is appended, flushed and fsynced as its image finishes, in input order. A
  re-run with the same OUT repairs a torn last line, skips the inputs already recorded (by
  key) and appends the rest; ``overwrite`` starts over. SIGINT/SIGTERM stop the intake, the
  images in flight are finished and written (:attr:`Summary.unfinished` counts the rest).
* **Summary**: counts by verdict, errors by reason, the gate pass rate, the ATT (mean model
  time per image: every stage but decode and preprocessing, the batch's time shared by its
  images, as the seed measured it) and the end-to-end wall-clock time per record. The
  Inspector runs the gate of one batch while the detector works on the previous one, so on
  a few CPU cores the stages compete and the ATT here can exceed the wall-clock time per
  image; ``defectnet-bench`` measures ATTs for comparisons.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from defectnet.errors import DataError
from defectnet.runtime.inspection.counts import RecordCounts
from defectnet.runtime.inspection.folders import IMAGE_SUFFIXES, walk_image_entries
from defectnet.runtime.inspection.record_log import RecordLog
from defectnet.runtime.inspection.records import InspectionResult
from defectnet.runtime.inspection.validation import InputLimits
from defectnet.runtime.types import Verdict

log = logging.getLogger(__name__)
#: Stages in the ATT: all but decode and preprocessing.
MODEL_STAGES = ("classifier", "gate", "select", "detector", "postprocess")


def collect_inputs(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The inputs of a batch run, in order, as the keys of their records (module docstring)."""
    keys: list[str] = []
    seen: set[str] = set()
    for raw in paths:
        given = os.fspath(raw)
        if os.path.isdir(given):
            entries, errors = walk_image_entries(Path(given), IMAGE_SUFFIXES)
            for e in errors:  # a folder that vanished or cannot be listed: an input with an error record
                log.warning("cannot list %s (%s); it gets an error record", e.filename, e.strerror or e)
                entries.append(Path(os.path.relpath(os.fspath(e.filename), given)).as_posix())
            found = [given if rel == "." else os.path.join(given, rel) for rel in sorted(entries)]
        else:
            found = [given]
        for key in found:
            if key not in seen:
                seen.add(key)
                keys.append(key)
    return keys


def save_annotated(image: Tensor, result: InspectionResult, path: Path) -> None:
    """Draw the boxes, labels and verdict of ``result`` on ``image`` (uint8 ``[3, H, W]``)
    and write it to ``path`` as JPEG (atomically)."""
    from PIL import Image, ImageDraw

    from defectnet.io import atomic_write

    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    draw = ImageDraw.Draw(pil)
    for box, score, name in zip(result.boxes.tolist(), result.scores.tolist(), result.class_names):
        draw.rectangle(box, outline=(255, 40, 40), width=2)
        draw.text((box[0] + 2, max(0.0, box[1] - 11)), f"{name} {score:.2f}", fill=(255, 40, 40))
    colour = (255, 40, 40) if result.verdict == Verdict.NG else (40, 220, 40)
    draw.text((4, 4), f"{result.verdict} p={float(result.p_defective or 0.0):.3f}", fill=colour)
    atomic_write(path, lambda f: pil.save(f, format="JPEG", quality=90))


def annotated_names(inputs: Sequence[str]) -> dict[str, str]:
    """input key -> annotated JPEG name: ``STEM.jpg``, ``STEM_NNNNNN.jpg`` (the input's index)
    for a later input with the same stem. Fixed by the whole input list, so a resumed run
    names its images as an uninterrupted one would."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for index, key in enumerate(inputs):
        stem = Path(key).stem or "image"
        name = f"{stem}.jpg"
        if name in used:
            name = f"{stem}_{index:06d}.jpg"
        used.add(name)
        names[key] = name
    return names


@dataclass
class Summary(RecordCounts):
    """What a batch run did (:class:`~defectnet.runtime.inspection.counts.RecordCounts`), with
    model_ms: the summed model time per image of the images recorded now; wall_ms: the run's
    wall-clock time."""

    model_ms: float = 0.0
    wall_ms: float = 0.0

    def add(self, result: InspectionResult) -> None:
        self.count(result.verdict, None if result.ok else str(result.reason), result.ran_detector)
        if result.ok:
            t = result.timings_ms
            self.model_ms += sum(t.get(s, 0.0) for s in MODEL_STAGES) / max(result.batch_size, 1)

    def to_json(self) -> dict[str, Any]:
        n = self.images
        return {**super().to_json(), "att_ms": self.model_ms / n if n else None,
                "end_to_end_ms_per_image": self.wall_ms / self.records if self.records else None}

    def text(self) -> str:
        s = self.to_json()
        lines = [self.headline()]
        if self.images:
            lines.append(f"gate pass rate {s['gate_pass_rate']:.3f} (images that ran the detector)")
            lines.append(f"ATT {s['att_ms']:.2f} ms/image (model stages, batch shared, gate and detector "
                         f"overlapping); end-to-end {s['end_to_end_ms_per_image']:.2f} ms/image (wall clock per "
                         "record: decode, preprocessing, model, writing)")
        return "\n".join(lines + self.unfinished_line())


def run_inference(pipeline: Any, inputs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                  batch: int = 1, save_images: Path | None = None, progress: bool = True, overwrite: bool = False,
                  limits: InputLimits | None = None, metrics_port: int | None = None,
                  metrics_host: str = "127.0.0.1", stop: threading.Event | None = None,
                  echo: Callable[[str], Any] = lambda message: None) -> Summary:
    """Inspect ``inputs`` (paths; :func:`collect_inputs` makes them from folders) with
    ``pipeline`` (a :class:`~defectnet.runtime.pipeline.Pipeline`) and append one record per
    input to the record file ``out`` (module docstring).

    batch: images per batch; save_images: also write annotated JPEGs there (the record's
    ``annotated``); overwrite: empty ``out`` first instead of resuming; limits: the input
    size rules; metrics_port: serve Prometheus ``/metrics`` on ``metrics_host`` while it runs
    (0: any free port); stop: set it to stop the intake (SIGINT/SIGTERM do, in the main
    thread); echo: prints the run's notes (resume, metrics URL).

    Raises :class:`~defectnet.errors.DataError` when ``out`` or ``save_images`` cannot be
    written (set-up, or a record write failing mid-run: the run stops, every record written
    so far stays).
    """
    from tqdm import tqdm

    from defectnet.runtime.inspection.inspector import Inspector
    from defectnet.runtime.inspection.watch import stop_on_signals

    keys = list(dict.fromkeys(os.fspath(p) for p in inputs))
    summary = Summary(inputs=len(keys))
    if save_images is not None:
        try:
            save_images.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create the --save-images folder {save_images} ({e.strerror or e}); choose a "
                            "writable folder") from None
    sink = RecordLog(out, overwrite=overwrite)
    done = {k for k in sink.recovered.keys if isinstance(k, str)}
    todo = [k for k in keys if k not in done]
    summary.skipped = len(keys) - len(todo)
    if summary.skipped:
        echo(f"resuming: {summary.skipped} of {len(keys)} inputs are already recorded in {out}; inspecting the "
             f"other {len(todo)} (--overwrite starts over)")
    names = annotated_names(keys) if save_images is not None else {}
    stop = stop or threading.Event()
    failures: list[BaseException] = []
    bar = tqdm(total=len(todo), unit="img", disable=not progress, file=sys.stderr)

    def on_result(result: InspectionResult) -> None:  # the inspector's delivery thread, in input order
        if failures:
            return  # a record write failed: the run is stopping
        image, result.image = result.image, None
        if save_images is not None and image is not None:
            path = save_images / names[str(result.key)]
            try:
                save_annotated(image, result, path)
                result.annotated = str(path)
            except Exception as e:  # noqa: BLE001 - a failed annotation must not lose the record
                log.warning("could not write the annotated image %s (%s)", path, e)
        try:
            sink.append(result.to_json())
        except Exception as e:  # noqa: BLE001 - a full disk: stop, keep what is written
            failures.append(e)
            stop.set()
            return
        summary.add(result)
        bar.update(1)
        if summary.images:
            bar.set_postfix(ng=summary.ng, errors=summary.errors, gate=f"{summary.detector_runs / summary.images:.2f}")

    try:
        inspector = Inspector(pipeline, batch_size=batch, limits=limits, on_result=on_result,
                              keep_images=save_images is not None)
    except BaseException:
        sink.close()
        bar.close()
        raise
    restore = stop_on_signals(stop)
    t0 = time.perf_counter()
    submitted = 0
    try:
        if metrics_port is not None:
            echo(f"metrics: {inspector.serve_metrics(metrics_port, metrics_host).url}")
        for key in todo:
            if stop.is_set():
                break
            inspector.submit(key, key=key)
            submitted += 1
    finally:
        restore()
        inspector.close()  # finishes and delivers every submitted input; stops the metrics server
        summary.wall_ms = (time.perf_counter() - t0) * 1e3
        sink.close()
        bar.close()
    summary.unfinished = len(todo) - summary.records
    if failures:
        first = failures[0]
        raise DataError(f"writing a record to {out} failed ({getattr(first, 'strerror', None) or first}); the "
                        f"{summary.records} records written before are kept -- free space or fix the file, then run "
                        "the same command again to resume") from None
    return summary


__all__ = ["MODEL_STAGES", "Summary", "annotated_names", "collect_inputs", "run_inference", "save_annotated"]
