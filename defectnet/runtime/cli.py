"""``defectnet-infer``: run an engine folder on images and write one JSON line per input.

Example::

    defectnet-infer --engine runs/const/engine data/fabric/images --out results.jsonl \\
        --save-images annotated/ --batch 4

Every input gets exactly one record, in input order: a result, or ``{"image": ..., "error":
...}`` for a file that is missing or cannot be decoded. Folders are searched recursively
for image files. The summary at the end gives counts, the gate pass rate (share of images
that ran the detector) and the ATT (mean model time per image: every stage but file decode
and preprocessing, as the seed measured it) next to the end-to-end time per image.

``--watch DIR`` inspects files as they appear in DIR instead, appending one record per file
to ``--out`` and never inspecting a file twice across restarts (``--state``; ``--once`` to
process what is there and exit): see :mod:`defectnet.runtime.inspection.watch`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
from torch import Tensor

from defectnet.errors import DataError, DefectNetError
from defectnet.runtime.backends import BACKENDS, BackendOptions

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm"}
MODEL_STAGES = ("classifier", "gate", "select", "detector", "postprocess")


def collect_inputs(paths: tuple[str, ...] | list[str]) -> list[Path]:
    """Files given directly (whatever their suffix) and image files under folders (sorted)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)  # a missing file still gets (an error) record
    return out


def _batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def _annotated_name(path: Path, index: int, used: set[str]) -> str:
    name = f"{path.stem}.jpg"
    if name in used:
        name = f"{path.stem}_{index:06d}.jpg"
    used.add(name)
    return name


def save_annotated(image: Tensor, result: Any, path: Path) -> None:
    """Draw the boxes, labels and verdict of ``result`` on ``image`` (uint8 [3, H, W])."""
    from PIL import Image, ImageDraw

    from defectnet.io import atomic_write

    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    draw = ImageDraw.Draw(pil)
    for box, score, name in zip(result.boxes.tolist(), result.scores.tolist(), result.class_names):
        draw.rectangle(box, outline=(255, 40, 40), width=2)
        draw.text((box[0] + 2, max(0.0, box[1] - 11)), f"{name} {score:.2f}", fill=(255, 40, 40))
    colour = (255, 40, 40) if result.verdict == "NG" else (40, 220, 40)
    draw.text((4, 4), f"{result.verdict} p={result.p_defective:.3f}", fill=colour)
    atomic_write(path, lambda f: pil.save(f, format="JPEG", quality=90))


class Summary:
    def __init__(self) -> None:
        self.images = self.errors = self.ok = self.ng = self.detector_runs = 0
        self.model_ms = 0.0
        self.end_to_end_ms = 0.0

    def add_batch(self, results: list[Any], decode_ms: float) -> None:
        if not results:
            return
        t = results[0].timings_ms
        self.model_ms += sum(t.get(s, 0.0) for s in MODEL_STAGES)
        self.end_to_end_ms += decode_ms + sum(t.values())
        for r in results:
            self.images += 1
            self.ok += r.verdict == "OK"
            self.ng += r.verdict == "NG"
            self.detector_runs += r.ran_detector

    def to_json(self) -> dict[str, Any]:
        n = max(self.images, 1)
        return {"inputs": self.images + self.errors, "images": self.images, "errors": self.errors,
                "ok": self.ok, "ng": self.ng, "gate_pass_rate": self.detector_runs / n if self.images else None,
                "att_ms": self.model_ms / n if self.images else None,
                "end_to_end_ms_per_image": self.end_to_end_ms / n if self.images else None}

    def text(self) -> str:
        s = self.to_json()
        lines = [f"inputs {s['inputs']}: {s['images']} processed ({s['ok']} OK, {s['ng']} NG), {s['errors']} errors"]
        if self.images:
            lines.append(f"gate pass rate {s['gate_pass_rate']:.3f} (images that ran the detector)")
            lines.append(f"ATT {s['att_ms']:.2f} ms/image (model stages, batch shared); end-to-end "
                         f"{s['end_to_end_ms_per_image']:.2f} ms/image (incl. decode + preprocessing)")
        return "\n".join(lines)


def run_inference(pipeline: Any, inputs: list[Path], out: IO[bytes], *, batch: int = 1,
                  save_images: Path | None = None, progress: bool = True) -> Summary:
    """Write one JSON line per input to ``out`` (see the module docstring)."""
    from tqdm import tqdm

    from defectnet.data.image_io import read_image

    summary = Summary()
    used: set[str] = set()
    bar = tqdm(total=len(inputs), unit="img", disable=not progress, file=sys.stderr)
    index = 0
    for group in _batches(inputs, batch):
        records: list[dict[str, Any] | None] = []
        images: list[Tensor] = []
        slots: list[int] = []
        t0 = time.perf_counter()
        for path in group:
            try:
                images.append(read_image(path))
                slots.append(len(records))
                records.append(None)
            except DataError as e:
                records.append({"image": str(path), "error": str(e)})
                summary.errors += 1
        decode_ms = (time.perf_counter() - t0) * 1e3
        results = pipeline.run(images) if images else []
        summary.add_batch(results, decode_ms)
        for slot, image, result in zip(slots, images, results):
            path = group[slot]
            record = {"image": str(path), **result.to_json()}
            if save_images is not None:
                name = _annotated_name(path, index + slot, used)
                save_annotated(image, result, save_images / name)
                record["annotated"] = str(save_images / name)
            records[slot] = record
        for line in records:
            out.write((json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
        index += len(group)
        bar.update(len(group))
        if summary.images:
            bar.set_postfix(ng=summary.ng, gate=f"{summary.detector_runs / summary.images:.2f}")
    bar.close()
    return summary


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("inputs", nargs=-1, required=False)
@click.option("--engine", "engine_dir", required=True, type=click.Path(file_okay=False),
              help="Engine folder written by defectnet-export.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Results, one JSON line per input (written atomically).")
@click.option("--save-images", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write annotated JPEGs (boxes, labels, verdict) into this folder.")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="onnxruntime", show_default=True,
              help="onnxruntime: the engine's graphs; torch: the checkpoint the engine was exported from; "
              "tensorrt: the folder's TensorRT plans (defectnet-build-engine --backend tensorrt; NVIDIA GPU).")
@click.option("--providers", default="cpu", show_default=True,
              help="onnxruntime providers: cpu, auto (TensorRT/CUDA when present) or a comma-separated list.")
@click.option("--device", default="cpu", show_default=True, help="torch backend device (cpu, cuda[:N]).")
@click.option("--batch", "batch", default=1, show_default=True, type=int, help="Images per batch.")
@click.option("--gate-threshold", type=float, default=None, help="Override the engine's P(defective) threshold.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--watch", "watch_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Watch this folder instead: inspect image files as they appear (size stable), append to --out.")
@click.option("--state", "state_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="--watch: files already done (default OUT.state.json); a restart skips them.")
@click.option("--once", is_flag=True, help="--watch: process the files present, then exit.")
@click.option("--poll-interval", default=1.0, show_default=True, type=float, help="--watch: seconds between scans.")
@click.option("--stable-for", default=1.0, show_default=True, type=float,
              help="--watch: seconds a file's size and mtime must stay unchanged before it is read.")
def main(inputs: tuple[str, ...], engine_dir: str, out_file: Path, save_images: Path | None, backend: str,
         providers: str, device: str, batch: int, gate_threshold: float | None, no_progress: bool,
         watch_dir: Path | None, state_file: Path | None, once: bool, poll_interval: float,
         stable_for: float) -> None:
    """Run the engine on IMAGES_OR_FOLDERS... and write one JSON line per input to --out
    (or, with --watch DIR, on the files appearing in DIR; stop with Ctrl-C / SIGTERM)."""
    from defectnet.io import atomic_write
    from defectnet.runtime.pipeline import Pipeline

    try:
        if batch < 1:
            raise click.BadParameter("--batch must be >= 1", param_hint="--batch")
        backend_options = BackendOptions(device=device, providers=providers)  # a ConfigError says what is wrong
        if watch_dir is not None:
            _watch(watch_dir, inputs, engine_dir, out_file, backend, backend_options, batch, gate_threshold,
                   state_file, once, poll_interval, stable_for, save_images)
            return
        if not inputs:
            raise click.UsageError("give IMAGES_OR_FOLDERS... or --watch DIR")
        pipeline = Pipeline.from_engine(engine_dir, backend, backend_options=backend_options,
                                        gate_threshold=gate_threshold)
        paths = collect_inputs(inputs)
        if not paths:
            raise click.UsageError(f"no image files found in {', '.join(inputs)}")
        if save_images is not None:
            save_images.mkdir(parents=True, exist_ok=True)
        holder: dict[str, Summary] = {}

        def write(f: IO[bytes]) -> None:
            holder["summary"] = run_inference(pipeline, paths, f, batch=batch, save_images=save_images,
                                              progress=not no_progress)

        atomic_write(out_file, write)
    except DefectNetError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    summary = holder["summary"]
    click.echo(summary.text())
    click.echo(f"wrote {len(paths)} records to {out_file}")


def _watch(folder: Path, inputs: tuple[str, ...], engine_dir: str, out_file: Path, backend: str,
           backend_options: BackendOptions, batch: int, gate_threshold: float | None,
           state_file: Path | None, once: bool, poll_interval: float, stable_for: float,
           save_images: Path | None) -> None:
    """``--watch``: :func:`defectnet.runtime.inspection.watch.watch_folder` with an Inspector."""
    from defectnet.runtime.inspection.inspector import Inspector
    from defectnet.runtime.inspection.watch import watch_folder

    if inputs:
        raise click.UsageError("--watch takes no IMAGES_OR_FOLDERS arguments")
    if save_images is not None:
        raise click.UsageError("--save-images is not available with --watch")
    summary = watch_folder(
        lambda on_result: Inspector.from_engine(engine_dir, backend, backend_options=backend_options,
                                                gate_threshold=gate_threshold, batch_size=batch,
                                                on_result=on_result),
        folder, out_file, state_file=state_file, suffixes=IMAGE_SUFFIXES, once=once, poll_interval=poll_interval,
        stable_for=stable_for)
    click.echo(summary.text())
