"""COCO box and mask AP of a predictor on an annotated image set (pycocotools, the original's protocol), and
the comparison of every deployed form of a model against torch FP32."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from ..config import PostprocessConfig
from ..errors import BackendUnavailable, DatasetError, ImageError
from ..files import atomic_write_bytes
from ..inference.coco_results import detections_to_coco
from ..inference.images import read_image
from ..inference.predictor import Predictor
from ..inference.sources import DEFAULT_CACHE, open_runner, runner_for
from ..model.checkpoint import ModelSource, model_name
from ..runtime.open import artifact_backend
from ..tables import format_table

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class EvalResult:
    bbox: dict[str, float]
    segm: dict[str, float]
    num_images: int
    num_detections: int
    seconds: float
    skipped_images: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fps": self.fps}


def load_annotations(ann_file: str | Path) -> COCO:
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise DatasetError(f"{path} is not a COCO annotation file (needs images, annotations, categories)")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def coco_metrics(coco_gt: COCO, results: list[dict], iou_type: str, image_ids: list[int]) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl (as fractions) from pycocotools, quietly."""
    if not results:
        return dict.fromkeys(METRIC_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(max(value, 0.0)) for name, value in zip(METRIC_NAMES, evaluator.stats[:6])}


def check_categories(coco_gt: COCO, category_ids: Sequence[int], class_names: Sequence[str]) -> None:
    known = set(coco_gt.getCatIds())
    foreign = [cid for cid in category_ids if cid not in known]
    if foreign:
        raise DatasetError(
            f"the model's category ids {foreign[:10]} are not in the annotation file "
            f"(model classes: {list(class_names)[:10]}...; annotation ids: {sorted(known)[:10]}...)"
        )


def _image_batches(
    coco_gt: COCO, image_ids: list[int], image_dir: Path, batch_size: int, skipped: list[str]
) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """(ids, images) of the readable images, ``batch_size`` listed images at a time; unreadable ones are
    recorded in ``skipped``."""
    for first in range(0, len(image_ids), batch_size):
        batch_ids, images = [], []
        for image_id in image_ids[first : first + batch_size]:
            try:
                images.append(read_image(image_dir / coco_gt.imgs[image_id]["file_name"]))
                batch_ids.append(image_id)
            except ImageError as exc:
                skipped.append(str(exc))
        yield batch_ids, images


def evaluate(
    predictor: Predictor,
    ann_file: str | Path,
    image_dir: str | Path,
    batch_size: int = 4,
    max_images: int | None = None,
    progress: bool = True,
) -> tuple[EvalResult, list[dict]]:
    """Predict every annotated image and score the results: (metrics, COCO results list)."""
    coco_gt = load_annotations(ann_file)
    config = predictor.config
    check_categories(coco_gt, config.category_ids, config.class_names)
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} does not exist")
    image_ids = sorted(coco_gt.getImgIds())[:max_images]
    results: list[dict] = []
    skipped: list[str] = []
    evaluated: list[int] = []
    start = time.perf_counter()
    with tqdm(total=len(image_ids), desc="eval", unit="img", disable=not progress) as bar:
        for batch_ids, images in _image_batches(coco_gt, image_ids, image_dir, batch_size, skipped):
            if images:
                evaluated.extend(batch_ids)
                for image_id, dets in zip(batch_ids, predictor(images)):
                    file_name = coco_gt.imgs[image_id]["file_name"]
                    results.extend(detections_to_coco(dets, image_id, config.category_ids, file_name))
            bar.update(min(batch_size, len(image_ids) - bar.n))
    metrics = EvalResult(
        bbox=coco_metrics(coco_gt, results, "bbox", evaluated),
        segm=coco_metrics(coco_gt, results, "segm", evaluated),
        num_images=len(evaluated),
        num_detections=len(results),
        seconds=time.perf_counter() - start,
        skipped_images=skipped,
    )
    return metrics, results


def metrics_table(result: EvalResult) -> str:
    rows = [[kind, *(f"{100 * getattr(result, kind)[name]:.2f}" for name in METRIC_NAMES)] for kind in ("bbox", "segm")]
    return format_table(rows, ["", *METRIC_NAMES])


# ------------------------------------------------------------------------------------ the comparison
@dataclass
class ComparisonRow:
    model: str
    backend: str
    precision: str
    bbox_ap: float
    mask_ap: float
    bbox_ap_change: float  # points against torch FP32 of the same model
    mask_ap_change: float
    fps: float  # end to end, measured during the evaluation
    bbox: dict[str, float]
    segm: dict[str, float]
    num_images: int


@dataclass(frozen=True)
class EvalOptions:
    """What one comparison evaluates and how."""

    ann_file: str | Path
    image_dir: str | Path
    backends: tuple[str, ...] = ("torch",)
    precisions: tuple[str, ...] = ("fp32",)
    config: str | None = None
    device: str | None = None
    cache_dir: str | os.PathLike = DEFAULT_CACHE
    batch_size: int = 4
    max_images: int | None = None
    postprocess: PostprocessConfig = PostprocessConfig()


@dataclass
class Comparison:
    rows: list[ComparisonRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # configurations that cannot run here, with the reason
    skipped_images: list[str] = field(default_factory=list)
    first_results: list[dict] | None = None  # the COCO results of the first row


def _plan(weights: str | None, options: EvalOptions) -> list[tuple[str, str]]:
    """(backend, precision) pairs to evaluate; torch FP32 first, the reference of every other row."""
    if artifact_backend(weights) is not None:  # an .onnx/.engine file runs as it is: its own reference
        return [(artifact_backend(weights), "file")]
    pairs = [(b, p) for b in options.backends for p in options.precisions]
    return [("torch", "fp32")] + [pair for pair in pairs if pair != ("torch", "fp32")]


def compare(weights_list: Sequence[str | None], options: EvalOptions, progress: bool = True) -> Comparison:
    """Evaluate every model (``None``: the default one) on every backend x precision of ``options``, each row
    with its AP change against the model's first row; a configuration that cannot run here is listed in
    ``skipped`` with the reason."""
    comparison = Comparison()
    for weights in weights_list:
        name, reference = model_name(weights), None
        source = None if artifact_backend(weights) else ModelSource.load(weights, options.config)
        for backend, precision in _plan(weights, options):
            try:
                if source is None:
                    runner, config = open_runner(weights, None, "fp32", options.config, options.device)
                    precision = runner.precision
                else:
                    runner, config = (
                        runner_for(source, backend, precision, options.device, options.cache_dir, options.batch_size),
                        source.config,
                    )
            except BackendUnavailable as exc:
                comparison.skipped.append(f"{name} {backend} {precision}: {exc}")
                continue
            if progress:
                print(f"{name}: {backend} {precision}")
            with runner:
                result, results = evaluate(
                    Predictor(runner, config, options.postprocess),
                    options.ann_file,
                    options.image_dir,
                    options.batch_size,
                    options.max_images,
                    progress,
                )
            reference = reference or result
            if comparison.first_results is None:
                comparison.first_results = results
            comparison.rows.append(_row(name, backend, precision, result, reference))
            comparison.skipped_images.extend(result.skipped_images)
    return comparison


def _row(name: str, backend: str, precision: str, result: EvalResult, reference: EvalResult) -> ComparisonRow:
    return ComparisonRow(
        model=name,
        backend=backend,
        precision=precision,
        bbox_ap=result.bbox["AP"],
        mask_ap=result.segm["AP"],
        bbox_ap_change=100 * (result.bbox["AP"] - reference.bbox["AP"]),
        mask_ap_change=100 * (result.segm["AP"] - reference.segm["AP"]),
        fps=result.fps,
        bbox=result.bbox,
        segm=result.segm,
        num_images=result.num_images,
    )


def comparison_table(rows: list[ComparisonRow]) -> str:
    body = [
        [
            r.model,
            r.backend,
            r.precision,
            f"{100 * r.bbox_ap:.2f}",
            f"{r.bbox_ap_change:+.2f}",
            f"{100 * r.mask_ap:.2f}",
            f"{r.mask_ap_change:+.2f}",
            f"{r.fps:.2f}",
        ]
        for r in rows
    ]
    return format_table(body, ["model", "backend", "precision", "box AP", "change", "mask AP", "change", "FPS"])


def plot_comparison(rows: list[ComparisonRow], out_png: str | Path) -> None:
    """Box and mask AP per model x backend x precision, as grouped bars."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    figure = Figure(figsize=(max(6, 1.2 * len(rows) + 2), 4), layout="constrained")
    ax = figure.subplots()
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [100 * r.bbox_ap for r in rows], 0.4, label="box AP")
    ax.bar(x + 0.2, [100 * r.mask_ap for r in rows], 0.4, label="mask AP")
    ax.set_xticks(x, [f"{r.model}\n{r.backend} {r.precision}" for r in rows], fontsize=7)
    ax.set_ylabel("AP@[.5:.95] (%)")
    ax.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(out_png, buffer.getvalue())
