"""Which blocks INT8 hurts, and how many to leave unquantized: the mask AP of each block quantized alone and
left out alone, on an image set disjoint from the calibration images, and a greedy search that keeps the most
sensitive blocks in higher precision until the AP drop is within a bound."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import Int8Options
from ..data.synthetic import generate_dataset
from ..deploy.artifacts import ArtifactChain
from ..deploy.onnx_format import load_onnx
from ..deploy.onnx_int8 import blocks, quantizable_layers
from ..errors import CalibrationError
from ..files import atomic_write_bytes
from ..inference.calibration_images import (
    SHAPES_IMAGE_SIZE,
    SHAPES_SENSITIVITY_SEED,
    ImageFiles,
    is_shapes_model,
    source_images,
)
from ..inference.predictor import Predictor
from ..runtime.open import open_artifact
from ..tables import format_table
from .coco_eval import evaluate


@dataclass
class BlockSensitivity:
    block: str
    layers: int
    alone: float  # mask AP change (points) with only this block quantized
    left_out: float  # mask AP change with every block quantized but this one


@dataclass
class SensitivityReport:
    """One INT8 flavour of one model on the sensitivity set; AP in points, changes against FP32."""

    model: str
    flavour: str
    images: int
    fp32_ap: float
    quantized_ap: float  # every block quantized (but the layers --int8-exclude names)
    blocks: list[BlockSensitivity]
    max_ap_drop: float | None = None
    left_unquantized: list[str] = field(default_factory=list)  # blocks the search kept in higher precision
    final_ap: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        rows = [[b.block, str(b.layers), f"{b.alone:+.2f}", f"{b.left_out:+.2f}"] for b in self.blocks]
        return format_table(rows, ["block", "layers", "quantized alone", "left out alone"], first_column_left=True)

    def summary(self) -> str:
        line = (
            f"{self.model} INT8 {self.flavour}: mask AP {self.quantized_ap:.2f} vs FP32 {self.fp32_ap:.2f} "
            f"({self.quantized_ap - self.fp32_ap:+.2f}) on {self.images} images"
        )
        if self.max_ap_drop is not None and self.final_ap is not None:
            kept = ", ".join(self.left_unquantized) or "none"
            line += (
                f"; within {self.max_ap_drop:g} points: {self.final_ap:.2f} "
                f"({self.final_ap - self.fp32_ap:+.2f}), unquantized: {kept}"
            )
        return line


def sensitivity_set(options: Int8Options, chain: ArtifactChain, folder: Path) -> tuple[Path, Path]:
    """(annotation file, image folder) of the sensitivity set: ``--int8-eval``, or for a shapes model
    generated shapes images (a seed the calibration set does not use), made once in ``folder``."""
    if options.sensitivity_set:
        ann, sep, images = options.sensitivity_set.rpartition(":")
        if not sep or not ann.lower().endswith(".json"):
            raise CalibrationError(f"--int8-eval must be ANN.json:IMAGES, got {options.sensitivity_set}")
        _check_disjoint(options.sensitivity_set, chain)
        return Path(ann), Path(images)
    if not is_shapes_model(chain.source.config):
        raise CalibrationError("the INT8 sensitivity needs an annotated image set: pass --int8-eval ANN.json:IMAGES")
    root = folder / f"shapes_sensitivity_{SHAPES_SENSITIVITY_SEED}_{options.sensitivity_images}"
    ann = root / "annotations" / "instances_val.json"
    if not ann.is_file():  # the annotations are written last: present means complete
        generate_dataset(root, 0, options.sensitivity_images, SHAPES_IMAGE_SIZE, SHAPES_SENSITIVITY_SEED)
    return ann, root / "val"


def _check_disjoint(spec: str, chain: ArtifactChain) -> None:
    data = chain.int8.data if chain.int8 is not None else None
    if not isinstance(data, ImageFiles):
        return

    def digests(paths: Sequence[Path]) -> set[str]:
        return {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}

    shared = digests(data.paths) & digests(source_images(spec))
    if shared:
        raise CalibrationError(
            f"{len(shared)} images of --int8-eval are also calibration images: the sensitivity set must be disjoint"
        )


def _mask_ap(path: Path, ann: Path, images: Path) -> float:
    with open_artifact(path) as runner:
        result, _ = evaluate(Predictor(runner, runner.config), ann, images, batch_size=8, progress=False)
    return 100 * result.segm["AP"]


def analyse(
    chain: ArtifactChain, flavour: str, eval_set: tuple[Path, Path], options: Int8Options, progress: bool = True
) -> SensitivityReport:
    """Every block's sensitivity for ``flavour``, and with ``options.max_ap_drop`` the search."""
    ann, images = eval_set
    layers = quantizable_layers(load_onnx(chain.onnx("fp32").path))
    names = blocks(layers)
    with tempfile.TemporaryDirectory(prefix="int8-sensitivity-") as scratch:
        bar = tqdm(total=2 * len(names) + 2, desc=f"sensitivity {flavour}", unit="model", disable=not progress)

        def ap(exclude: Sequence[str]) -> float:
            path = Path(scratch) / "trial.onnx"
            chain.write_int8_variant(flavour, tuple(options.exclude) + tuple(exclude), path)
            bar.update()
            return _mask_ap(path, ann, images)

        fp32 = _mask_ap(chain.onnx("fp32").path, ann, images)
        bar.update()
        quantized = ap(())
        report = SensitivityReport(chain.source.name, flavour, _count(ann), fp32, quantized, [], options.max_ap_drop)
        for name in names:
            alone = ap([other for other in names if other != name]) - fp32
            left_out = ap([name]) - fp32
            count = sum(layer.block == name for layer in layers)
            report.blocks.append(BlockSensitivity(name, count, alone, left_out))
        if options.max_ap_drop is not None:
            bar.total += len(names)  # at most one trial per block; the total shrinks to what was run
            _search(report, options.max_ap_drop, ap)
            bar.total = bar.n
        bar.close()
    return report


def _search(report: SensitivityReport, max_drop: float, ap: Callable[[Sequence[str]], float]) -> None:
    """Leave blocks unquantized, the one whose absence helps most first, until the drop is within bound."""
    order = sorted(report.blocks, key=lambda b: b.left_out, reverse=True)
    current, kept = report.quantized_ap, []
    for block in order:
        if report.fp32_ap - current <= max_drop:
            break
        kept.append(block.block)
        current = ap(kept)
    report.left_unquantized, report.final_ap = kept, current
    if report.fp32_ap - current > max_drop or len(kept) == len(order):  # no INT8 model within the bound
        raise CalibrationError(
            f"{report.model}, {report.flavour} flavour: no INT8 model is within {max_drop:g} mask AP points of FP32 "
            f"({report.fp32_ap:.2f}) on the sensitivity set; every block quantized: {report.quantized_ap:.2f}, "
            f"every block left out: {current:.2f}. Raise --int8-max-ap-drop, or try another --calib-method or "
            "more --calib-images"
        )


def _count(ann: Path) -> int:
    return len(json.loads(ann.read_text())["images"])


def write_report(report: SensitivityReport, stem: Path) -> tuple[Path, Path]:
    """``STEM.json`` and ``STEM.png`` (the two changes of each block as bars)."""
    json_path = atomic_write_bytes(stem.with_suffix(".json"), json.dumps(report.to_dict(), indent=2).encode())
    return json_path, plot_sensitivity(report, stem.with_suffix(".png"))


def plot_sensitivity(report: SensitivityReport, out_png: Path) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [b.block for b in report.blocks]
    positions = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names)), 3.6))
    ax.bar([p - 0.2 for p in positions], [b.alone for b in report.blocks], 0.4, label="quantized alone")
    ax.bar([p + 0.2 for p in positions], [b.left_out for b in report.blocks], 0.4, label="left out alone")
    ax.axhline(report.quantized_ap - report.fp32_ap, color="k", lw=0.8, ls="--", label="all quantized")
    ax.set_xticks(list(positions), names)
    ax.set_ylabel("mask AP change vs FP32 (points)")
    ax.set_title(f"{report.model}: INT8 sensitivity ({report.flavour} flavour, {report.images} images)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(out_png, buffer.getvalue())
