"""Activation ranges of an FP32 ONNX model on calibration images, for INT8 quantization, and their cache.

The FP32 model runs in ONNX Runtime (CPU) with the tensors to calibrate added as outputs, one batch at a time;
only running statistics are kept, so memory does not grow with the number of images. ``minmax`` needs one
pass over the images; ``entropy`` and ``percentile`` a second one that fills a histogram of ``|x|`` over the
range the first pass found. The ranges are saved as a plain-JSON cache keyed by the ONNX's sha256 and the
calibration settings, so a rebuild on any machine skips calibration and quantizes to the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from ..errors import CalibrationError, first_line
from ..files import atomic_write_text
from .onnx_format import INPUT_NAME, load_onnx

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CACHE_FORMAT = 1
RANGES_VERSION = 1  # of the statistics below: raise it when they change, so that old caches are not reused
HISTOGRAM_BINS = 2048  # of |x| over [0, max |x|]
ENTROPY_LEVELS = 128  # int8's positive levels: the quantized histogram the entropy method compares against
MIN_CALIBRATION_IMAGES = 8

Range = tuple[float, float]


@dataclass(frozen=True)
class CalibrationSettings:
    """How activation ranges are found."""

    method: str = "minmax"  # the default of Int8Options.calib_method, which says why
    percentile: float = 99.99  # of |x|, for method "percentile"
    batch_size: int = 4  # images per calibration run: what bounds its memory

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise CalibrationError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise CalibrationError(f"the calibration percentile must be in (50, 100], got {self.percentile}")
        if self.batch_size < 1:
            raise CalibrationError(f"the calibration batch size must be >= 1, got {self.batch_size}")

    def key(self) -> dict[str, Any]:
        """What decides the ranges (the batch size does not)."""
        return {"method": self.method, "percentile": self.percentile if self.method == "percentile" else None}


class CalibrationData(Protocol):
    """Preprocessed calibration images: ``fingerprint`` names the images and their preprocessing, so that a
    cache made from other images is not reused; ``batches`` may be iterated more than once."""

    fingerprint: str

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """``[B, 3, S, S]`` float32 network inputs, each image once."""
        ...


@dataclass
class CalibrationCache:
    """Activation ranges of one FP32 ONNX (by sha256) under one set of settings and images."""

    onnx_sha256: str
    settings: dict[str, Any]  # CalibrationSettings.key() plus the data's fingerprint and size
    ranges: dict[str, Range]
    format: int = CACHE_FORMAT

    def to_json(self) -> str:
        data = asdict(self)
        data["ranges"] = {name: [lo, hi] for name, (lo, hi) in sorted(self.ranges.items())}
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def read(cls, path: str | os.PathLike) -> CalibrationCache | None:
        """The cache in ``path``; None when it is absent, unreadable or of another format."""
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != CACHE_FORMAT:
                return None
            ranges = {str(k): (float(lo), float(hi)) for k, (lo, hi) in data["ranges"].items()}
            return cls(str(data["onnx_sha256"]), dict(data["settings"]), ranges)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


def cache_settings(settings: CalibrationSettings, data: CalibrationData) -> dict[str, Any]:
    return {**settings.key(), "images": len(data), "data": data.fingerprint, "ranges_version": RANGES_VERSION}


def load_or_calibrate(
    cache_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    onnx_sha256: str,
    tensors: Sequence[str],
    data: CalibrationData,
    settings: CalibrationSettings,
    progress: bool = True,
) -> tuple[dict[str, Range], bool]:
    """(ranges of ``tensors``, whether they came from the cache). The cache is used when it was made from
    this ONNX with these settings and images and covers every tensor; otherwise the model is calibrated and
    the cache rewritten. A cache made from another model is reported on stderr before it is replaced."""
    wanted = cache_settings(settings, data)
    cache = CalibrationCache.read(cache_path)
    if cache is not None and cache.onnx_sha256 != onnx_sha256:
        print(
            f"warning: calibration cache {Path(cache_path).name} was made for another model "
            "(its ONNX sha256 differs); recalibrating",
            file=sys.stderr,
        )
    elif cache is not None and cache.settings == wanted and set(tensors) <= set(cache.ranges):
        return {name: cache.ranges[name] for name in tensors}, True
    ranges = calibrate(onnx_path, tensors, data, settings, progress)
    atomic_write_text(cache_path, CalibrationCache(onnx_sha256, wanted, ranges).to_json())
    return ranges, False


def calibrate(
    onnx_path: str | os.PathLike,
    tensors: Sequence[str],
    data: CalibrationData,
    settings: CalibrationSettings = CalibrationSettings(),
    progress: bool = True,
) -> dict[str, Range]:
    """The range ``(lo, hi)`` of each tensor of ``tensors`` on ``data``; it always contains 0."""
    if len(data) < MIN_CALIBRATION_IMAGES:
        raise CalibrationError(
            f"calibration needs at least {MIN_CALIBRATION_IMAGES} images, got {len(data)}: pass more with --calib"
        )
    session = _calibration_session(onnx_path, tensors)
    passes = 1 if settings.method == "minmax" else 2
    lows = dict.fromkeys(tensors, math.inf)
    highs = dict.fromkeys(tensors, -math.inf)
    for outputs in _run(session, tensors, data, settings.batch_size, progress, f"calibrate 1/{passes}"):
        for name, value in outputs.items():
            low, high = float(value.min()), float(value.max())  # NaN propagates into both
            if not (math.isfinite(low) and math.isfinite(high)):
                raise CalibrationError(
                    f"tensor {name!r} of {Path(onnx_path).name} holds NaN or inf on the calibration images: "
                    "the FP32 model is not finite on them, so no INT8 range can be found (check the checkpoint)"
                )
            lows[name], highs[name] = min(lows[name], low), max(highs[name], high)
    ranges = {name: (min(lows[name], 0.0), max(highs[name], 0.0)) for name in tensors}
    if settings.method == "minmax":
        return ranges
    amax = {name: max(-lo, hi) for name, (lo, hi) in ranges.items()}
    histograms = {name: np.zeros(HISTOGRAM_BINS, np.int64) for name in tensors}
    for outputs in _run(session, tensors, data, settings.batch_size, progress, "calibrate 2/2"):
        for name, value in outputs.items():
            histograms[name] += abs_histogram(value, amax[name])
    return {name: _clip_range(ranges[name], threshold(histograms[name], amax[name], settings)) for name in tensors}


def _clip_range(observed: Range, limit: float) -> Range:
    lo, hi = observed
    return max(lo, -limit), min(hi, limit)


def abs_histogram(values: np.ndarray, amax: float, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Counts of the non-zero ``|values|`` in ``bins`` equal bins over ``[0, amax]``. Exact zeros (half of a
    ReLU's output) are left out: quantization represents them exactly, and their spike would otherwise
    dominate the entropy method's comparison and pull every threshold of a ReLU output to its minimum."""
    magnitudes = np.abs(values.ravel())
    magnitudes = magnitudes[magnitudes != 0]
    if amax <= 0 or magnitudes.size == 0:
        return np.zeros(bins, np.int64)
    index = np.minimum((magnitudes * (bins / amax)).astype(np.int64), bins - 1)
    return np.bincount(index, minlength=bins)


def threshold(histogram: np.ndarray, amax: float, settings: CalibrationSettings) -> float:
    """The clipping threshold of ``|x|`` the method picks from the histogram of ``|x|`` over ``[0, amax]``."""
    if amax <= 0 or histogram.sum() == 0:
        return amax
    width = amax / len(histogram)
    if settings.method == "percentile":
        cumulative = np.cumsum(histogram) / histogram.sum()
        last = int(np.searchsorted(cumulative, settings.percentile / 100.0))
        return min(amax, (last + 1) * width)
    return min(amax, entropy_bins(histogram) * width)


def entropy_bins(histogram: np.ndarray, levels: int = ENTROPY_LEVELS) -> int:
    """The number of histogram bins to keep below the threshold that minimizes the KL divergence between the
    clipped distribution (outliers folded into its last bin) and its ``levels``-level quantization (the
    entropy calibration of TensorRT's legacy INT8 calibrator)."""
    histogram = histogram.astype(np.float64)
    if len(histogram) <= levels:
        return len(histogram)
    best_bins, best_divergence = len(histogram), math.inf
    for bins in range(levels, len(histogram) + 1):
        reference = histogram[:bins].copy()
        reference[-1] += histogram[bins:].sum()
        divergence = _kl_divergence(reference, _quantized(histogram[:bins], levels))
        if divergence < best_divergence:
            best_bins, best_divergence = bins, divergence
    return best_bins


def _quantized(histogram: np.ndarray, levels: int) -> np.ndarray:
    """``histogram`` merged into ``levels`` groups of adjacent bins and spread back evenly over each group's
    non-empty bins (empty bins stay empty: they are not in the support)."""
    group = (np.arange(len(histogram)) * levels) // len(histogram)
    nonzero = histogram > 0
    totals = np.bincount(group, weights=histogram, minlength=levels)
    supports = np.bincount(group, weights=nonzero, minlength=levels)
    share = np.divide(totals, supports, out=np.zeros(levels), where=supports > 0)
    return np.where(nonzero, share[group], 0.0)


def _kl_divergence(reference: np.ndarray, candidate: np.ndarray) -> float:
    p = reference / reference.sum()
    total = candidate.sum()
    if total == 0:
        return math.inf
    q = candidate / total
    support = p > 0
    if np.any(q[support] == 0):
        return math.inf
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


def _calibration_session(onnx_path: str | os.PathLike, tensors: Sequence[str]) -> Any:
    """An ONNX Runtime CPU session of the model with ``tensors`` as extra outputs."""
    import onnx
    import onnxruntime as ort

    model = load_onnx(onnx_path)
    produced = {name for node in model.graph.node for name in node.output}
    unknown = [name for name in tensors if name not in produced and name != INPUT_NAME]
    if unknown:
        raise CalibrationError(f"{Path(onnx_path).name} has no tensors {unknown[:3]} to calibrate")
    existing = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in existing and name != INPUT_NAME:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Every added output must stay a distinct tensor: the optimizer would fuse them away otherwise.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types
        raise CalibrationError(f"cannot run {Path(onnx_path).name} for calibration: {first_line(exc)}") from None


def _run(
    session: Any, tensors: Sequence[str], data: CalibrationData, batch_size: int, progress: bool, desc: str
) -> Iterator[dict[str, np.ndarray]]:
    fetched = [name for name in tensors if name != INPUT_NAME]  # the input is fed, not computed
    fixed = session.get_inputs()[0].shape[0]
    fixed = fixed if isinstance(fixed, int) else None  # an export with --batch N takes exactly N images
    with tqdm(total=len(data), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in data.batches(fixed or batch_size):
            count = len(batch)
            if fixed and count < fixed:  # the last batch: padded with its first image, whose copies are dropped
                batch = np.concatenate([batch, np.repeat(batch[:1], fixed - count, axis=0)])
            outputs = session.run(fetched, {INPUT_NAME: batch})
            values = {name: value[:count] for name, value in zip(fetched, outputs)}
            if INPUT_NAME in tensors:
                values[INPUT_NAME] = batch[:count]
            yield values
            bar.update(count)
