"""Parity of an engine's ONNX graphs (ONNX Runtime) with the PyTorch model.

Run at the end of every export and by ``defectnet-export --verify-only --engine DIR``.
For each of two input scales (the model's and a smaller one, so a size frozen at trace
time shows up) a batch of 3 images of different sizes (padded batch) goes through

* PyTorch: ``model.inference(images, sizes, gate_threshold=0.0)`` (the detector runs on
  every image, so every image's detections are compared);
* ONNX Runtime: gate (or classifier) graph, then the detector graph on all images.

Checks: |P(defective) difference| <= ``p_abs``; detections matched one to one (same label,
IoU >= ``match_iou``) with |score difference| <= ``score_abs`` and |box coordinate
difference| <= ``box_abs`` pixels. A detection found by one side only is *explained* (not a
failure) when it sits at a decision boundary that float noise can flip: its score is
within ``score_abs`` of the score threshold or of the other side's top-N cut-off, or the
other side has a same-class box with IoU within ``nms_band`` of the NMS threshold and a
score at least as high (the NMS decision). Anything else fails the export with an
ExportError listing the numbers.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

from defectnet.data.transforms import Preprocessor
from defectnet.errors import DataError, ExportError
from defectnet.io import atomic_write_json
from defectnet.model_source import ModelSource
from defectnet.runtime.backends import BackendOptions, OnnxRuntimeBackend, RawDetections, make_backend
from defectnet.runtime.engine import engine_from_manifest
from defectnet.runtime.manifest import Manifest

VERIFY_BATCH = 3
SECOND_SCALE = 0.6  # the second verification scale, relative to the model's


@dataclass(frozen=True)
class Tolerances:
    """Parity tolerances (see the module docstring)."""

    p_abs: float = 1e-4
    score_abs: float = 1e-3
    box_abs: float = 0.5
    match_iou: float = 0.9
    nms_band: float = 0.02


# ----------------------------------------------------------------------------- images
def _crop(image: Tensor) -> Tensor:
    """The left 70 % / top 85 % of an image: a second image size from real content."""
    h, w = image.shape[-2:]
    return image[:, : max(32, int(h * 0.85)), : max(32, int(w * 0.7))].contiguous()


def synthetic_images(n: int = VERIFY_BATCH, seed: int = 0) -> list[Tensor]:
    """Defective synthetic images of different sizes (fabric- and bottle-like)."""
    from defectnet.data.synthetic import KINDS, image_rng
    from defectnet.data.transforms import to_chw_uint8

    specs = [("fabric", (612, 250)), ("bottle", (329, 246)), ("fabric", (400, 300))]
    out = []
    for i in range(n):
        kind, size = specs[i % len(specs)]
        rgb, _ = KINDS[kind].render(image_rng(seed, i), size, True)
        out.append(to_chw_uint8(rgb))
    return out


def dataset_images(data_dir: str | os.PathLike[str], n: int = VERIFY_BATCH) -> list[Tensor]:
    """Up to ``n`` test-split images of a data folder (defective ones first), originals."""
    from defectnet.data.coco import load_split
    from defectnet.data.image_io import read_image

    dataset = load_split(Path(data_dir), "test")
    if len(dataset) == 0:
        raise DataError(f"the test split of {data_dir} has no images; pass another --data folder or none "
                        "(synthetic verification images)")
    order = sorted(range(len(dataset)), key=lambda i: not dataset.is_defective(i))[:n]
    return [read_image(dataset.image_dir / dataset.image_info(i)[1]) for i in order]


def _verification_batch(images: list[Tensor]) -> list[Tensor]:
    """Exactly VERIFY_BATCH images with at least two different sizes."""
    if not images:
        raise ExportError("verification needs at least one image")
    out = list(images[:VERIFY_BATCH])
    while len(out) < VERIFY_BATCH:
        out.append(_crop(out[len(out) % len(images)]))
    if len({tuple(im.shape) for im in out}) == 1:
        out[-1] = _crop(out[-1])
    return out


# ----------------------------------------------------------------------------- matching
def _match(a: tuple[Tensor, Tensor, Tensor], b: tuple[Tensor, Tensor, Tensor], iou_thr: float
           ) -> list[tuple[int, int]]:
    """Greedy one-to-one matches (same label, IoU >= iou_thr), by falling score of ``a``."""
    (ab, as_, al), (bb, bs, bl) = a, b
    if len(as_) == 0 or len(bs) == 0:
        return []
    iou = box_iou(ab.double(), bb.double())
    ok = (iou >= iou_thr) & (al[:, None] == bl[None, :])
    taken: set[int] = set()
    pairs = []
    for i in torch.argsort(as_, descending=True).tolist():
        cands = [j for j in torch.where(ok[i])[0].tolist() if j not in taken]
        if cands:
            j = min(cands, key=lambda j: (abs(float(as_[i] - bs[j])), -float(iou[i, j])))
            taken.add(j)
            pairs.append((i, j))
    return pairs


def _cutoff(scores: Tensor, max_dets: int, score_thresh: float) -> float:
    return float(scores.min()) if len(scores) >= max_dets else score_thresh


def _explained(i: int, mine: tuple[Tensor, Tensor, Tensor], other: tuple[Tensor, Tensor, Tensor],
               other_cut: float, score_thresh: float, nms_thresh: float, tol: Tolerances) -> bool:
    box, score, label = mine[0][i], float(mine[1][i]), int(mine[2][i])
    if score <= max(other_cut, score_thresh) + tol.score_abs:
        return True
    same = other[2] == label
    if not bool(same.any()):
        return False
    iou = box_iou(box[None].double(), other[0][same].double())[0]
    near = ((iou - nms_thresh).abs() <= tol.nms_band) & (other[1][same] >= score - tol.score_abs)
    return bool(near.any())


def compare_image(ref: tuple[Tensor, Tensor, Tensor], got: tuple[Tensor, Tensor, Tensor], *, max_dets: int,
                  score_thresh: float, nms_thresh: float, tol: Tolerances) -> dict[str, Any]:
    """Match two detection sets of one image; returns counts and worst differences."""
    pairs = _match(ref, got, tol.match_iou)
    score_diff = max((abs(float(ref[1][i] - got[1][j])) for i, j in pairs), default=0.0)
    box_diff = max((float((ref[0][i] - got[0][j]).abs().max()) for i, j in pairs), default=0.0)
    ref_cut = _cutoff(ref[1], max_dets, score_thresh)
    got_cut = _cutoff(got[1], max_dets, score_thresh)
    matched_ref = {i for i, _ in pairs}
    matched_got = {j for _, j in pairs}
    explained = unexplained = 0
    for side, other, cut, done in ((ref, got, got_cut, matched_ref), (got, ref, ref_cut, matched_got)):
        for i in range(len(side[1])):
            if i in done:
                continue
            if _explained(i, side, other, cut, score_thresh, nms_thresh, tol):
                explained += 1
            else:
                unexplained += 1
    return {"torch": len(ref[1]), "onnx": len(got[1]), "matched": len(pairs), "unmatched_explained": explained,
            "unmatched_unexplained": unexplained, "score_max_abs_diff": score_diff, "box_max_abs_diff": box_diff}


# ----------------------------------------------------------------------------- verification
def _scales(scale: tuple[int, int], divisor: int) -> list[tuple[int, int]]:
    small = tuple(max(divisor, int(round(s * SECOND_SCALE))) for s in scale)
    return [scale, (small[0], small[1])]


@torch.no_grad()
def verify_engine_dir(root: str | os.PathLike[str], manifest: Manifest, source: ModelSource, *,
                      images: list[Tensor] | None = None, image_source: str = "synthetic",
                      tolerances: Tolerances | None = None, providers: str | list[str] | None = None
                      ) -> dict[str, Any]:
    """Compare the engine in ``root`` (described by ``manifest``) with ``source.model``.

    Returns the JSON-able report; raises ExportError (with the numbers) when a tolerance is
    exceeded. The report is also written to ``root/verification-failed.json`` on failure.
    providers: ONNX Runtime providers (:class:`~defectnet.runtime.backends.BackendOptions`;
    default CPU).
    """
    tol = tolerances or Tolerances()
    engine = engine_from_manifest(root, manifest)
    backend = make_backend(engine, OnnxRuntimeBackend.name, BackendOptions(providers=providers))
    assert isinstance(backend, OnnxRuntimeBackend)  # the report records its providers
    backend.load()
    if images is None:
        images, image_source = synthetic_images(), "synthetic"
    batch_images = _verification_batch(images)
    cfg = source.detector.config
    model = source.model.eval()
    runs = []
    for scale in _scales(source.scale, source.size_divisor):
        batch = Preprocessor(scale=scale, size_divisor=source.size_divisor)(batch_images)
        sizes = torch.tensor(batch.image_sizes, dtype=torch.int64)
        ref = model.inference(batch.images, batch.image_sizes, gate_threshold=0.0)  # type: ignore[operator]
        if engine.has_classifier:
            p = backend.run_classifier(batch.images, sizes)
            _, feats = backend.run_gate(batch.images, sizes)
        else:
            p, feats = backend.run_gate(batch.images, sizes)
        raw: RawDetections = backend.run_detector(feats, sizes)
        p_ref = torch.tensor([d.p_defective for d in ref])
        per_image = [compare_image((d.boxes, d.scores, d.labels), raw.image(i), max_dets=cfg.detections_per_img,
                                   score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh, tol=tol)
                     for i, d in enumerate(ref)]
        runs.append({
            "scale": list(scale), "input_size": list(batch.images.shape[-2:]),
            "image_sizes": [list(s) for s in batch.image_sizes], "batch": len(batch),
            "p_max_abs_diff": float((p - p_ref).abs().max()),
            **{k: sum(r[k] for r in per_image) for k in ("torch", "onnx", "matched", "unmatched_explained",
                                                        "unmatched_unexplained")},
            "score_max_abs_diff": max(r["score_max_abs_diff"] for r in per_image),
            "box_max_abs_diff": max(r["box_max_abs_diff"] for r in per_image),
        })
    failures = []
    for r in runs:
        where = f"input {r['input_size'][0]}x{r['input_size'][1]}"
        if r["p_max_abs_diff"] > tol.p_abs:
            failures.append(f"{where}: P(defective) differs by {r['p_max_abs_diff']:.3g} > {tol.p_abs}")
        if r["score_max_abs_diff"] > tol.score_abs:
            failures.append(f"{where}: matched scores differ by {r['score_max_abs_diff']:.3g} > {tol.score_abs}")
        if r["box_max_abs_diff"] > tol.box_abs:
            failures.append(f"{where}: matched boxes differ by {r['box_max_abs_diff']:.3g} px > {tol.box_abs}")
        if r["unmatched_unexplained"]:
            failures.append(f"{where}: {r['unmatched_unexplained']} detections found by only one side "
                            f"(torch {r['torch']}, onnx {r['onnx']}, matched {r['matched']})")
    report = {"passed": not failures, "failures": failures, "images": image_source, "runs": runs,
              "tolerances": asdict(tol), "providers": backend.providers,
              "reference": "model.inference(gate_threshold=0.0) in PyTorch (CPU)"}
    failed_file = Path(root) / "verification-failed.json"
    if not failures:
        failed_file.unlink(missing_ok=True)  # a report of an earlier, failed export
    else:
        atomic_write_json(failed_file, report)
        raise ExportError("ONNX Runtime does not match PyTorch: " + "; ".join(failures)
                          + f". Full report: {failed_file}. The graphs are unusable; "
                            "this is an exporter bug (or a model whose detections sit on decision boundaries) — "
                            "report it with the model config")
    return report
