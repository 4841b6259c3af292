"""Export YOLACT to ONNX (FP32, optionally with the post-processing in the graph).

The graph's interface and metadata are described in :mod:`trt_yolact.deploy.onnx_format`.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. For this static CNN it gives a
clean graph (batch norm folded into the convolutions, dynamic batch through ``dynamic_axes``) and needs no
onnxscript; onnxsim then folds the shape arithmetic of the FPN resizes. The raw export leaves the priors out
of the graph and records the grid they are made from (``prior_grid``, checked against the model's priors).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..config import PostprocessConfig, YolactConfig, make_priors
from ..errors import ExportError, first_line
from ..files import atomic_write_bytes, sha256_file
from ..structures import UNBATCHED_OUTPUTS
from .onnx_format import EXPORTER, GRAPH_OUTPUT_NAMES, INPUT_NAME, NETWORK_OUTPUT_NAMES, build_metadata
from .onnx_postprocess import YolactWithPostprocess

MIN_OPSET = 17
DEFAULT_OPSET = MIN_OPSET
# The largest k TensorRT's TopK layer takes (NVIDIA's operator reference: k <= 3840); the graph
# post-processing runs TopK with k = top_k and k = max_detections.
TENSORRT_MAX_TOPK = 3840
# The highest IR version written (unless the opset needs more): what ONNX Runtime >= 1.20 reads, and
# the onnx release TensorRT 10's parser is built with; opsets 17..21 need IR 8..10.
MAX_IR_VERSION = 10


class _RawExport(nn.Module):
    """The model with its network outputs (``loc, conf, coeffs, proto``): the priors are made on the host."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw = self.model(images)
        return tuple(getattr(raw, name) for name in NETWORK_OUTPUT_NAMES)


def prior_grid(model: nn.Module, config: YolactConfig) -> list[tuple[int, int]]:
    """The FPN grid of ``model`` the runners make the priors on, checked to give the model's own priors."""
    grid = model.feature_sizes(config.max_size)
    with torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            size = config.max_size
            own = model(torch.zeros((1, 3, size, size), device=next(model.parameters()).device)).priors
        finally:
            model.train(was_training)
    if not torch.equal(torch.from_numpy(make_priors(config, grid)), own.cpu()):
        raise ExportError("the priors made from the config and the FPN grid differ from the model's own")
    return grid


@dataclass(frozen=True)
class ExportResult:
    """One written ONNX artifact."""

    path: Path
    precision: str  # "fp32" or "fp16"
    postprocess: str  # "none" or "graph"
    opset: int
    ir_version: int
    input_shape: tuple[int | str, ...]  # ("batch", 3, S, S) with a dynamic batch
    output_names: tuple[str, ...]
    simplified: bool
    simplify_error: str | None  # why onnxsim was skipped or failed (the unsimplified model was kept)
    size_bytes: int
    sha256: str
    metadata: dict[str, str] = field(default_factory=dict)
    exporter: str = EXPORTER
    seconds: float = 0.0

    @property
    def batch_dynamic(self) -> bool:
        return isinstance(self.input_shape[0], str)


def _max_ir_version(model) -> int:
    import onnx.helper

    # Never below what the opset needs (opset 17 needs IR 8), never above what runtimes here read.
    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    return max(needed, min(model.ir_version, MAX_IR_VERSION))


def _set_output_shapes(model, shapes: Mapping[str, Sequence[int | str]]) -> None:
    """Write the known output shapes: the exporter leaves symbolic names for the prior count because
    ``reshape(batch, -1, ...)`` cannot be inferred with a symbolic batch; consumers want numbers."""
    for output in model.graph.output:
        if output.name not in shapes:
            continue
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for value in shapes[output.name]:
            dim = dims.add()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = int(value)


def _simplify(model) -> tuple[Any, str | None]:
    """onnxsim, or the model unchanged with the reason when it fails or breaks the interface."""
    try:
        import onnxsim
    except ImportError:
        return model, "onnxsim is not installed"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            simplified, ok = onnxsim.simplify(model, certify=False)
    except Exception as exc:  # noqa: BLE001 - a failed simplification keeps the exported model
        return model, f"onnxsim failed: {first_line(exc)}"
    if not ok:
        return model, "onnxsim could not validate the simplified model"

    def interface(m):
        return [
            (v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim][:1])
            for v in [*m.graph.input, *m.graph.output]
        ]

    if interface(simplified) != interface(model):
        return model, "onnxsim changed the model's inputs/outputs (e.g. the dynamic batch)"
    return simplified, None


def finalize(model: Any, metadata: Mapping[str, str]) -> None:
    """Set the IR version, the metadata and the producer, then run the full ONNX checker."""
    import onnx

    model.ir_version = _max_ir_version(model)
    del model.metadata_props[:]  # onnxsim leaves its own bookkeeping here
    onnx.helper.set_model_props(model, dict(metadata))
    model.producer_name, model.producer_version = "trt_yolact", __version__
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"the exported model does not pass onnx.checker: {first_line(exc)}") from None


def _check_export_arguments(model: nn.Module, opset: int, batch_size: int) -> YolactConfig:
    import onnx

    config = getattr(model, "config", None)
    if not isinstance(config, YolactConfig) or not isinstance(model, nn.Module):
        raise ExportError(f"expected a Yolact model with a .config, got {type(model).__name__}")
    max_opset = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset:
        raise ExportError(f"opset must be an integer from {MIN_OPSET} to {max_opset}, got {opset!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExportError(f"batch_size must be a positive integer, got {batch_size!r}")
    return config


def _check_topk_limits(postprocess: PostprocessConfig) -> None:
    """The in-graph post-processing must build in TensorRT too: refuse TopK sizes it rejects."""
    for name, k in (("top_k", postprocess.top_k), ("max_detections", postprocess.max_detections)):
        if k > TENSORRT_MAX_TOPK:
            raise ExportError(
                f"{name} {k} is more than the {TENSORRT_MAX_TOPK} TensorRT's TopK takes: the graph post-processing "
                f"would not build into an engine; use at most {TENSORRT_MAX_TOPK}"
            )


def _trace(
    wrapped: nn.Module, example: torch.Tensor, output_names: Sequence[str], batch_dim: int | str, opset: int
) -> tuple[bytes, dict[str, list[int | str]]]:
    """The exported graph's bytes and each output's shape (the batch axis named when dynamic)."""
    with torch.no_grad():
        reference = wrapped(example)
    batch_outputs = [n for n in output_names if n not in UNBATCHED_OUTPUTS]
    shapes = {
        n: ([batch_dim, *t.shape[1:]] if n in batch_outputs else list(t.shape)) for n, t in zip(output_names, reference)
    }
    buffer = io.BytesIO()
    dynamic = isinstance(batch_dim, str)
    with warnings.catch_warnings(), torch.no_grad():
        # Expected tracer notes: static feature sizes become constants, priors come from numpy.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            dynamic_axes={n: {0: "batch"} for n in (INPUT_NAME, *batch_outputs)} if dynamic else None,
            do_constant_folding=True,
        )
    return buffer.getvalue(), shapes


def _trace_in_eval_mode(
    model: nn.Module, wrapped: nn.Module, example: torch.Tensor, names: Sequence[str], batch_dim: int | str, opset: int
) -> tuple[bytes, dict[str, list[int | str]]]:
    """:func:`_trace` with ``model`` in eval mode (its mode is restored); exporter failures are one line."""
    was_training = model.training
    model.eval()
    try:
        return _trace(wrapped, example, names, batch_dim, opset)
    except Exception as exc:  # noqa: BLE001 - tracing/exporter failures become one message
        raise ExportError(f"torch.onnx.export failed: {first_line(exc)}") from None
    finally:
        model.train(was_training)


def _export_metadata(
    model: nn.Module,
    config: YolactConfig,
    postprocess: PostprocessConfig | None,
    source_sha: str | None,
    extra_metadata: Mapping[str, str] | None,
) -> dict[str, str]:
    grid = prior_grid(model, config)
    metadata = build_metadata(
        config, precision="fp32", postprocess=postprocess, source_sha256=source_sha, prior_grid=grid
    )
    return {**metadata, **(extra_metadata or {})}


def export_onnx(
    model: nn.Module,
    out_path: str | os.PathLike,
    batch_dynamic: bool = True,
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
    source_checkpoint: str | os.PathLike | None = None,
    *,
    batch_size: int = 1,
    postprocess: PostprocessConfig | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> ExportResult:
    """Export a :class:`~trt_yolact.model.yolact.Yolact` to ``out_path`` (FP32), written atomically.

    ``batch_dynamic=False`` fixes the batch at ``batch_size``. ``postprocess``: None exports the raw
    outputs; a :class:`PostprocessConfig` exports the graph post-processing
    (:class:`~trt_yolact.deploy.onnx_postprocess.YolactWithPostprocess`) instead. ``source_checkpoint``:
    the checkpoint file the weights came from; its sha256 goes into the metadata, with ``extra_metadata``.
    """
    config = _check_export_arguments(model, opset, batch_size)
    if postprocess is not None:
        _check_topk_limits(postprocess)
    if source_checkpoint is not None and not Path(source_checkpoint).is_file():
        raise ExportError(f"source checkpoint not found: {source_checkpoint}")
    source_sha = sha256_file(source_checkpoint) if source_checkpoint is not None else None
    start = time.perf_counter()
    wrapped = _RawExport(model) if postprocess is None else YolactWithPostprocess(model, postprocess)
    output_names = NETWORK_OUTPUT_NAMES if postprocess is None else GRAPH_OUTPUT_NAMES
    size = config.max_size
    example = torch.zeros((batch_size, 3, size, size), dtype=torch.float32, device=next(model.parameters()).device)
    batch_dim: int | str = "batch" if batch_dynamic else batch_size
    exported, shapes = _trace_in_eval_mode(model, wrapped, example, output_names, batch_dim, opset)
    import onnx

    onnx_model = onnx.load_from_string(exported)
    onnx_model, simplify_error = _simplify(onnx_model) if simplify else (onnx_model, None)
    _set_output_shapes(onnx_model, shapes)
    metadata = _export_metadata(model, config, postprocess, source_sha, extra_metadata)
    finalize(onnx_model, metadata)
    data = onnx_model.SerializeToString()
    return ExportResult(
        path=atomic_write_bytes(out_path, data),
        precision="fp32",
        postprocess=metadata["postprocess"],
        opset=opset,
        ir_version=int(onnx_model.ir_version),
        input_shape=(batch_dim, 3, size, size),
        output_names=tuple(output_names),
        simplified=simplify and simplify_error is None,
        simplify_error=simplify_error,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        metadata=metadata,
        seconds=time.perf_counter() - start,
    )
