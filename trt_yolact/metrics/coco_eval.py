"""COCO box and mask AP of a predictor on an annotated image set (pycocotools, the original's protocol), and
the comparison of every deployed form of a model against torch FP32."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from ..config import PostprocessConfig, RuntimeOptions, YolactConfig
from ..data.coco import load_coco_json
from ..errors import BackendUnavailable, DatasetError, ImageError
from ..inference.coco_results import detections_to_coco
from ..inference.images import read_image
from ..inference.predictor import Predictor
from ..inference.sources import comparison_configurations, open_runner, runner_for, with_backend
from ..model.checkpoint import ModelSource, model_name
from ..runtime.base import Runner
from ..runtime.open import artifact_backend
from ..tables import format_table

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class EvalResult:
    bbox: dict[str, float]
    segm: dict[str, float]
    images_evaluated: int
    images_missing: list[str]  # why each listed image that is not evaluated was not (absent, unreadable)
    num_detections: int
    seconds: float

    @property
    def fps(self) -> float:
        return self.images_evaluated / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fps": self.fps}


def load_annotations(ann_file: str | Path, evaluation: bool = True) -> COCO:
    """The pycocotools index of a COCO instances file, checked by the rules training shares
    (:func:`~trt_yolact.data.coco.load_coco_json`); ``evaluation``: as ground truth to score against."""
    data = load_coco_json(ann_file, evaluation=evaluation)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def check_image_dir(image_dir: str | Path) -> Path:
    """The folder of the annotated images, or why it cannot be."""
    image_dir = Path(image_dir)
    if image_dir.is_file():
        raise DatasetError(f"image folder {image_dir} is a file; pass the folder that holds the annotated images")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} does not exist")
    return image_dir


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


def _present_images(coco_gt: COCO, image_ids: list[int], image_dir: Path) -> tuple[list[int], list[str]]:
    """(the listed images whose files exist, a message for each one that does not)."""
    present, absent = [], []
    for image_id in image_ids:
        path = image_dir / coco_gt.imgs[image_id]["file_name"]
        if path.is_file():
            present.append(image_id)
        else:
            absent.append(f"{path}: no such file")
    return present, absent


def _image_batches(
    coco_gt: COCO, image_ids: list[int], image_dir: Path, batch_size: int, missing: list[str] | None
) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """(ids, images) of the readable images, ``batch_size`` listed images at a time. An unreadable image is
    an error, or with ``missing`` given, recorded there and left out."""
    for first in range(0, len(image_ids), batch_size):
        batch_ids, images = [], []
        for image_id in image_ids[first : first + batch_size]:
            info = coco_gt.imgs[image_id]
            try:
                image = read_image(image_dir / info["file_name"])
            except ImageError as exc:
                if missing is None:
                    raise DatasetError(f"{exc} (pass --allow-missing-images to evaluate the others)") from None
                missing.append(str(exc))
                continue
            if image.shape[:2] != (info["height"], info["width"]):  # its masks would be scored at the wrong size
                raise DatasetError(
                    f"image {image_dir / info['file_name']} is {image.shape[1]}x{image.shape[0]} but its annotation "
                    f"says {info['width']}x{info['height']}: the annotation file does not belong to these images"
                )
            images.append(image)
            batch_ids.append(image_id)
        yield batch_ids, images


def _require_ground_truth(coco_gt: COCO, image_ids: list[int], ann_file: str | Path) -> None:
    """COCO AP is undefined (pycocotools: -1) over images without a non-crowd annotation: no score to gate on.
    ``image_ids`` must not be empty (pycocotools reads no ids as all of them)."""
    if not any(not ann["iscrowd"] for ann in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=image_ids))):
        raise DatasetError(
            f"the {len(image_ids)} image(s) to evaluate have no non-crowd annotation in {ann_file}: "
            "COCO AP is undefined without ground truth"
        )


def evaluate(
    predictor: Predictor,
    ann_file: str | Path,
    image_dir: str | Path,
    batch_size: int = 4,
    max_images: int | None = None,
    progress: bool = True,
    allow_missing: bool = False,
    ground_truth: COCO | None = None,
) -> tuple[EvalResult, list[dict]]:
    """Predict every annotated image and score the results: (metrics, COCO results list).

    A listed image that is absent or unreadable is an error (an absent one before any inference); with
    ``allow_missing`` the others are scored on their own annotations only, and the result counts the rest.
    ``ground_truth``: ``ann_file`` already loaded (:func:`load_annotations`), for a caller scoring many models.
    """
    coco_gt = load_annotations(ann_file) if ground_truth is None else ground_truth
    config = predictor.config
    check_categories(coco_gt, config.category_ids, config.class_names)
    image_dir = check_image_dir(image_dir)
    image_ids = sorted(coco_gt.getImgIds())[:max_images]
    present, missing = _present_images(coco_gt, image_ids, image_dir)
    if missing and not allow_missing:
        raise DatasetError(
            f"{len(missing)} of {len(image_ids)} images listed in {ann_file} are missing (first: {missing[0]}); "
            "pass --allow-missing-images to evaluate the others on their own annotations"
        )
    if present:  # (none: reported below, as unreadable)
        _require_ground_truth(coco_gt, present, ann_file)
    results: list[dict] = []
    evaluated: list[int] = []
    start = time.perf_counter()
    with tqdm(total=len(present), desc="eval", unit="img", disable=not progress) as bar:
        batches = _image_batches(coco_gt, present, image_dir, batch_size, missing if allow_missing else None)
        for batch_ids, images in batches:
            if images:
                evaluated.extend(batch_ids)
                for image_id, dets in zip(batch_ids, predictor(images)):
                    file_name = coco_gt.imgs[image_id]["file_name"]
                    results.extend(detections_to_coco(dets, image_id, config.category_ids, file_name))
            bar.update(min(batch_size, len(present) - bar.n))
    if not evaluated:
        raise DatasetError(f"none of the {len(image_ids)} images listed in {ann_file} could be read from {image_dir}")
    _require_ground_truth(coco_gt, evaluated, ann_file)
    metrics = EvalResult(
        bbox=coco_metrics(coco_gt, results, "bbox", evaluated),
        segm=coco_metrics(coco_gt, results, "segm", evaluated),
        images_evaluated=len(evaluated),
        images_missing=missing,
        num_detections=len(results),
        seconds=time.perf_counter() - start,
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
    bbox_ap_change: float | None  # points against the torch FP32 reference; None: no reference to compare with
    mask_ap_change: float | None
    fps: float  # end to end, measured during the evaluation
    bbox: dict[str, float]
    segm: dict[str, float]
    images_evaluated: int
    images_missing: int  # listed in the annotations but absent or unreadable (with --allow-missing-images)
    postprocess: str = "host"  # where detections were selected: "host" (torch) or "graph" (inside the export)


@dataclass(frozen=True)
class EvalOptions:
    """What one comparison evaluates and how."""

    ann_file: str | Path
    image_dir: str | Path
    backends: tuple[str, ...] = ("torch",)
    precisions: tuple[str, ...] = ("fp32",)
    runtime: RuntimeOptions = RuntimeOptions()
    batch_size: int = 4
    max_images: int | None = None
    allow_missing_images: bool = False
    postprocess: PostprocessConfig = PostprocessConfig()
    postprocess_places: tuple[str, ...] = ("host",)  # "graph": also each export with the post-processing inside


@dataclass
class Comparison:
    rows: list[ComparisonRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # configurations left out, with the reason
    unavailable: list[str] = field(default_factory=list)  # of those, the ones that exist but cannot run here
    missing_images: list[str] = field(default_factory=list)  # of the first row, when allowed
    first_results: list[dict] | None = None  # the COCO results of the first row


_Configuration = tuple[str | None, str | None, str | None]  # backend, precision, post-processing place


def _plan(source: ModelSource | None, options: EvalOptions, skipped: list[str]) -> list[_Configuration]:
    """(backend, precision, post-processing place) to evaluate: torch FP32 host first for a checkpoint (the
    reference of its other rows); a deployed file runs as it is. Configurations that cannot exist (torch INT8,
    torch with the graph post-processing) are listed in ``skipped``."""
    if source is None:
        return [(None, None, None)]
    reference = ("torch", "fp32", "host")
    triples, left_out = comparison_configurations(options.backends, options.precisions, options.postprocess_places)
    skipped.extend(f"{source.name} {line}" for line in left_out)
    return [reference] + [triple for triple in triples if triple != reference]


def _open(
    weights: str | None, source: ModelSource | None, configuration: _Configuration, options: EvalOptions
) -> tuple[Runner, YolactConfig]:
    runtime = replace(options.runtime, max_batch=options.batch_size)
    if source is None:
        return open_runner(weights, runtime)
    return runner_for(source, with_backend(runtime, *configuration)), source.config


def compare(
    weights_list: Sequence[str | None],
    options: EvalOptions,
    progress: bool = True,
    ground_truth: COCO | None = None,
) -> Comparison:
    """Evaluate every model (``None``: the default one) on every backend x precision of ``options``.

    Each row's AP change is against the torch FP32 row of its checkpoint; a deployed file (``.onnx``,
    ``.engine``) is compared with the checkpoint listed before it, and has no reference when none was. A
    configuration that cannot run here is listed in ``skipped`` with the reason. ``ground_truth``: the
    annotation file already loaded.
    """
    comparison, reference = Comparison(), None
    if ground_truth is None:  # read and checked once, for every row
        ground_truth = load_annotations(options.ann_file)
    for weights in weights_list:
        source = None if artifact_backend(weights) else ModelSource.load(weights, options.runtime.config)
        name = model_name(weights)
        for configuration in _plan(source, options, comparison.skipped):
            try:
                runner, config = _open(weights, source, configuration, options)
            except BackendUnavailable as exc:
                comparison.skipped.append(f"{' '.join([name, *(c for c in configuration if c)])}: {exc}")
                comparison.unavailable.append(comparison.skipped[-1])
                continue
            place = "graph" if runner.postprocess == "graph" else "host"
            if progress:
                print(f"{name}: {runner.backend} {runner.precision}, {place} post-processing")
            with runner:
                predictor = Predictor(runner, config, options.postprocess)
                result, results = evaluate(
                    predictor,
                    options.ann_file,
                    options.image_dir,
                    options.batch_size,
                    options.max_images,
                    progress,
                    options.allow_missing_images,
                    ground_truth,
                )
            if source is not None and configuration == ("torch", "fp32", "host"):
                reference = result
            if comparison.first_results is None:
                comparison.first_results, comparison.missing_images = results, result.images_missing
            comparison.rows.append(_row(name, runner.backend, runner.precision, result, reference, place))
    return comparison


def _row(
    name: str, backend: str, precision: str, result: EvalResult, reference: EvalResult | None, postprocess: str
) -> ComparisonRow:
    def change(kind: str) -> float | None:
        return None if reference is None else 100 * (getattr(result, kind)["AP"] - getattr(reference, kind)["AP"])

    return ComparisonRow(
        model=name,
        backend=backend,
        precision=precision,
        bbox_ap=result.bbox["AP"],
        mask_ap=result.segm["AP"],
        bbox_ap_change=change("bbox"),
        mask_ap_change=change("segm"),
        fps=result.fps,
        bbox=result.bbox,
        segm=result.segm,
        images_evaluated=result.images_evaluated,
        images_missing=len(result.images_missing),
        postprocess=postprocess,
    )


def comparison_table(rows: list[ComparisonRow]) -> str:
    body = [
        [
            r.model,
            r.backend,
            r.precision,
            r.postprocess,
            f"{100 * r.bbox_ap:.2f}",
            _signed(r.bbox_ap_change),
            f"{100 * r.mask_ap:.2f}",
            _signed(r.mask_ap_change),
            f"{r.fps:.2f}",
            str(r.images_evaluated),
            str(r.images_missing),
        ]
        for r in rows
    ]
    header = [
        "model",
        "backend",
        "precision",
        "post",
        "box AP",
        "change",
        "mask AP",
        "change",
        "FPS",
        "images",
        "missing",
    ]
    return format_table(body, header)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def plot_comparison(rows: list[ComparisonRow]) -> bytes:
    """Box and mask AP per model x backend x precision, as grouped bars: the PNG's bytes (written with the
    command's other outputs)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    figure = Figure(figsize=(max(6, 1.2 * len(rows) + 2), 4), layout="constrained")
    ax = figure.subplots()
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [100 * r.bbox_ap for r in rows], 0.4, label="box AP")
    ax.bar(x + 0.2, [100 * r.mask_ap for r in rows], 0.4, label="mask AP")
    ax.set_xticks(x, [f"{r.model}\n{r.backend} {r.precision} {r.postprocess}" for r in rows], fontsize=7)
    ax.set_ylabel("AP@[.5:.95] (%)")
    ax.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
