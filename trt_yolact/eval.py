"""COCO box and mask AP of a model on an annotated image set (pycocotools, the original's protocol).

    python -m trt_yolact.eval --weights CKPT --ann instances.json --images DIR [--json out.json]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from .errors import first_line
from .files import atomic_write_text
from .images import read_image
from .postprocess import PostprocessConfig
from .predict import Predictor, add_model_arguments
from .preprocess import ImageError
from .results import detections_to_coco

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
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise ValueError(f"{path} is not a COCO annotation file (needs images, annotations, categories)")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def coco_metrics(coco_gt: COCO, results: list[dict], iou_type: str, image_ids: list[int]) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl (as fractions) from pycocotools, quietly."""
    if not results:
        return {name: 0.0 for name in METRIC_NAMES}
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
        raise ValueError(
            f"the model's category ids {foreign[:10]} are not in the annotation file "
            f"(model classes: {list(class_names)[:10]}...; annotation ids: {sorted(known)[:10]}...)"
        )


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
    bar = tqdm(total=len(image_ids), desc="eval", unit="img", disable=not progress)
    for first in range(0, len(image_ids), batch_size):
        batch_ids, images = [], []
        for image_id in image_ids[first : first + batch_size]:
            info = coco_gt.imgs[image_id]
            try:
                images.append(read_image(image_dir / info["file_name"]))
                batch_ids.append(image_id)
            except ImageError as exc:
                skipped.append(str(exc))
        if images:
            evaluated.extend(batch_ids)
            for image_id, dets in zip(batch_ids, predictor(images)):
                file_name = coco_gt.imgs[image_id]["file_name"]
                results.extend(detections_to_coco(dets, image_id, config.category_ids, file_name))
        bar.update(len(image_ids[first : first + batch_size]))
    bar.close()
    seconds = time.perf_counter() - start
    metrics = EvalResult(
        bbox=coco_metrics(coco_gt, results, "bbox", evaluated),
        segm=coco_metrics(coco_gt, results, "segm", evaluated),
        num_images=len(evaluated),
        num_detections=len(results),
        seconds=seconds,
        skipped_images=skipped,
    )
    return metrics, results


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def format_markdown_table(rows: list[list[str]], header: list[str]) -> str:
    """The same rows as a markdown table (README and results files)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in cells) + " |" for cells in rows])


def metrics_table(result: EvalResult) -> str:
    rows = [
        [kind, *(f"{100 * getattr(result, kind)[name]:.2f}" for name in METRIC_NAMES)]
        for kind in ("bbox", "segm")
    ]
    return format_table(rows, ["", *METRIC_NAMES])


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


def comparison_table(rows: list[ComparisonRow]) -> str:
    body = [
        [r.model, r.backend, r.precision, f"{100 * r.bbox_ap:.2f}", f"{r.bbox_ap_change:+.2f}",
         f"{100 * r.mask_ap:.2f}", f"{r.mask_ap_change:+.2f}", f"{r.fps:.2f}"]
        for r in rows
    ]  # fmt: skip
    return format_table(body, ["model", "backend", "precision", "box AP", "change", "mask AP", "change", "FPS"])


def plot_comparison(rows: list[ComparisonRow], out_png: str | Path) -> None:
    """Box and mask AP per model x backend x precision, as grouped bars."""
    import io as _io

    import numpy as np
    from matplotlib.figure import Figure

    from .files import atomic_write_bytes

    figure = Figure(figsize=(max(6, 1.2 * len(rows) + 2), 4), layout="constrained")
    ax = figure.subplots()
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [100 * r.bbox_ap for r in rows], 0.4, label="box AP")
    ax.bar(x + 0.2, [100 * r.mask_ap for r in rows], 0.4, label="mask AP")
    ax.set_xticks(x, [f"{r.model}\n{r.backend} {r.precision}" for r in rows], fontsize=7)
    ax.set_ylabel("AP@[.5:.95] (%)")
    ax.legend()
    buffer = _io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(out_png, buffer.getvalue())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trt_yolact.eval", description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--backends", default="torch", help="comma-separated: torch,onnxruntime,tensorrt")
    parser.add_argument("--precision", default="fp32", help="comma-separated: fp32,fp16")
    parser.add_argument("--ann", required=True, help="COCO instances JSON")
    parser.add_argument("--images", required=True, help="folder of the annotated images")
    parser.add_argument("--json", default=None, help="write the comparison rows here")
    parser.add_argument("--plot", default=None, help="bar chart PNG of the APs")
    parser.add_argument("--results", default=None, help="COCO results JSON of the first row")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--max-ap-drop", type=float, default=None, metavar="POINTS",
                        help="exit non-zero when a backend loses more mask AP than this against torch FP32")  # fmt: skip
    parser.add_argument("--cache", default="export/cache", help="folder for the ONNX/engines the backends need")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    with torch.no_grad():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    from .backends import BACKENDS, DEPLOYED_SUFFIXES, BackendUnavailable, ModelSource, make_runner, open_runner

    args = build_parser().parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    precisions = [p for p in args.precision.split(",") if p]
    post = PostprocessConfig(score_threshold=args.score_threshold, max_detections=args.top_k)
    rows: list[ComparisonRow] = []
    skipped: list[str] = []
    first_results: list[dict] | None = None
    try:
        unknown = [b for b in backends if b not in BACKENDS] + [p for p in precisions if p not in ("fp32", "fp16")]
        if unknown:
            raise ValueError(f"unknown backend/precision {unknown}: use {', '.join(BACKENDS)} and fp32/fp16")
        load_annotations(args.ann)  # fail on bad annotations before any model work
        weights = args.weights.split(",") if args.weights else [None]
        for weight in weights:
            deployed = weight is not None and Path(weight).suffix.lower() in DEPLOYED_SUFFIXES
            name = Path(weight).stem if weight and Path(weight).suffix else (weight or "yolact_shapes")
            if deployed:  # an .onnx/.engine file runs as it is; it is its own reference
                plan = [(DEPLOYED_SUFFIXES[Path(weight).suffix.lower()], "file")]
            else:
                source = ModelSource.load(weight or "yolact_shapes", args.config)
                # torch FP32 is the reference every other form of the model is compared with.
                plan = [("torch", "fp32")] + [(b, p) for b in backends for p in precisions if (b, p) != ("torch", "fp32")]
            reference: EvalResult | None = None
            for backend, precision in plan:
                try:
                    if deployed:
                        runner, config = open_runner(weight, None, "fp32", args.config, args.device, args.cache)
                        precision = runner.precision
                    else:
                        runner = make_runner(source, backend, precision, args.device, args.cache, args.batch_size)
                        config = source.config
                except BackendUnavailable as exc:
                    skipped.append(f"{name} {backend} {precision}: {exc}")
                    continue
                print(f"{name}: {backend} {precision}")
                result, results = evaluate(Predictor(runner, config, post), args.ann, args.images,
                                           args.batch_size, args.max_images)  # fmt: skip
                reference = reference or result
                first_results = first_results if first_results is not None else results
                rows.append(ComparisonRow(
                    model=name, backend=backend, precision=precision, bbox_ap=result.bbox["AP"],
                    mask_ap=result.segm["AP"], bbox_ap_change=100 * (result.bbox["AP"] - reference.bbox["AP"]),
                    mask_ap_change=100 * (result.segm["AP"] - reference.segm["AP"]), fps=result.fps,
                    bbox=result.bbox, segm=result.segm, num_images=result.num_images,
                ))  # fmt: skip
                for message in result.skipped_images:
                    print(f"skipped image: {message}", file=sys.stderr)
    except (ValueError, RuntimeError, FileNotFoundError, OSError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    print(comparison_table(rows))
    for line in skipped:
        print(f"skipped: {line}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"rows": [asdict(r) for r in rows], "skipped": skipped}, indent=2))
    if args.plot and rows:
        plot_comparison(rows, args.plot)
    if args.results and first_results is not None:
        atomic_write_text(args.results, json.dumps(first_results))
    if args.max_ap_drop is not None:
        failing = [r for r in rows if -r.mask_ap_change > args.max_ap_drop]
        for r in failing:
            print(f"error: {r.model} {r.backend} {r.precision} loses {-r.mask_ap_change:.2f} mask AP points "
                  f"(allowed {args.max_ap_drop})", file=sys.stderr)  # fmt: skip
        if failing:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
