"""What an exported ONNX model is: its tensor names, its ``metadata_props`` schema, and how to read them.

The graph has one input ``images [B,3,S,S]`` (float32, normalised as the model expects) and either the
network outputs ``loc, conf, coeffs, proto`` (``NETWORK_OUTPUT_NAMES``) or, with the post-processing in the
graph, the fixed-size detections ``num_dets, boxes, scores, classes, masks``. Every output has the batch
axis. The fifth raw output, ``priors``, depends only on the config and the input size: it is no graph output
(a constant as an engine output buys nothing and breaks batching servers such as Triton), runners make it on
the host from the metadata's ``config`` and ``prior_grid`` (:func:`prior_boxes`, cached) and return all
five raw outputs (``RAW_OUTPUT_NAMES``). Exports of earlier versions with a ``priors`` output still run.
Everything a consumer needs to prepare inputs and read outputs is stored as string metadata
(:func:`build_metadata`, :func:`parse_metadata`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import PostprocessConfig, YolactConfig, make_priors
from ..errors import EngineBuildError, ExportError, first_line

# The graph's output names are those of the typed outputs (re-exported here as part of the format).
from ..structures import GRAPH_OUTPUT_NAMES
from ..structures import OUTPUT_NAMES as RAW_OUTPUT_NAMES

__all__ = [
    "EXPORTER",
    "GRAPH_OUTPUT_NAMES",
    "HOST_OUTPUTS",
    "INPUT_NAME",
    "NETWORK_OUTPUT_NAMES",
    "NETWORK_SCOPE",
    "POSTPROCESS_MODES",
    "RAW_OUTPUT_NAMES",
    "build_metadata",
    "deployed_parameter_count",
    "load_onnx",
    "onnx_input_size",
    "check_tensorrt_qdq",
    "onnx_is_fp16",
    "onnx_precision",
    "parse_metadata",
    "prior_boxes",
    "read_onnx_metadata",
]

INPUT_NAME = "images"
EXPORTER = "torch.onnx.export (TorchScript-based, dynamo=False)"
POSTPROCESS_MODES = ("none", "graph")
# Raw outputs made on the host from the metadata rather than by the graph (and the engine built from it).
HOST_OUTPUTS = ("priors",)
NETWORK_OUTPUT_NAMES = tuple(name for name in RAW_OUTPUT_NAMES if name not in HOST_OUTPUTS)
# Node names inside the network start with this scope (the export wrappers hold the network as ``model``);
# every other node is post-processing or the priors constant.
NETWORK_SCOPE = "/model/"


def build_metadata(
    config: YolactConfig,
    *,
    precision: str,
    postprocess: PostprocessConfig | None,
    source_sha256: str | None,
    prior_grid: Sequence[tuple[int, int]] | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` of an export: all values are strings, structured ones JSON. ``prior_grid``:
    (h, w) of each FPN level, which with the config gives the priors (:func:`prior_boxes`)."""
    meta = {
        "config": json.dumps(config.to_dict()),
        "input_size": str(config.max_size),
        "mean": json.dumps(list(config.mean)),
        "std": json.dumps(list(config.std)),
        "normalization": config.normalization,
        "class_names": json.dumps(list(config.class_names)),
        "category_ids": json.dumps(list(config.category_ids)),
        "trt_yolact_version": __version__,
        "postprocess": "graph" if postprocess is not None else "none",
        "precision": precision,
        "exporter": EXPORTER,
    }
    if postprocess is not None:
        meta["postprocess_config"] = json.dumps(asdict(postprocess))
    if prior_grid is not None:
        meta["prior_grid"] = json.dumps([[int(h), int(w)] for h, w in prior_grid])
    if source_sha256:
        meta["source_sha256"] = source_sha256
    return meta


def parse_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """Typed values of export metadata (as read by ONNX or by ONNX Runtime's ``custom_metadata_map``):
    ``config`` -> :class:`YolactConfig`, ``postprocess_config`` -> :class:`PostprocessConfig`,
    ``input_size`` -> int, ``prior_grid`` -> ((h, w), ...), lists -> tuples; unknown keys stay strings."""
    out: dict[str, Any] = dict(props)
    try:
        if "config" in props:
            out["config"] = YolactConfig.from_dict(json.loads(props["config"]))
        if "postprocess_config" in props:
            out["postprocess_config"] = PostprocessConfig(**json.loads(props["postprocess_config"]))
        if "input_size" in props:
            out["input_size"] = int(props["input_size"])
        for key, cast in (("mean", float), ("std", float), ("class_names", str), ("category_ids", int)):
            if key in props:
                out[key] = tuple(cast(v) for v in json.loads(props[key]))
        if "prior_grid" in props:
            out["prior_grid"] = tuple((int(h), int(w)) for h, w in json.loads(props["prior_grid"]))
    except (ValueError, TypeError) as exc:  # ConfigError and JSONDecodeError are ValueErrors
        raise ExportError(f"malformed trt_yolact metadata in the ONNX model: {exc}") from None
    return out


def prior_boxes(config: YolactConfig, prior_grid: Sequence[tuple[int, int]]) -> Any:
    """The ``priors [P, 4]`` (float32 numpy, read-only) of ``config`` on ``prior_grid``; computed once per
    config and grid in a process."""
    grid = tuple((int(h), int(w)) for h, w in prior_grid)
    return _prior_boxes(json.dumps(config.to_dict(), sort_keys=True), grid)


@functools.lru_cache(maxsize=8)
def _prior_boxes(config_json: str, grid: tuple[tuple[int, int], ...]) -> Any:
    priors = make_priors(YolactConfig.from_dict(json.loads(config_json)), list(grid))
    priors.setflags(write=False)  # shared by every caller
    return priors


def load_onnx(path: str | os.PathLike) -> Any:
    """The ONNX ``ModelProto`` of ``path`` (weights stored outside the file are not loaded)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is one message
        raise ExportError(f"{path} is not a readable ONNX model: {first_line(exc)}") from None


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The export metadata of an ONNX file, typed (see :func:`parse_metadata`)."""
    model = load_onnx(path)
    return parse_metadata({p.key: p.value for p in model.metadata_props})


def onnx_is_fp16(onnx_path: str | os.PathLike) -> bool:
    """True when most floating-point weights of the ONNX are float16 (an FP16 export), or the ``images``
    input itself is float16."""
    import onnx

    model = load_onnx(onnx_path)
    f16 = onnx.TensorProto.FLOAT16
    for graph_input in model.graph.input:
        if graph_input.name == INPUT_NAME and graph_input.type.tensor_type.elem_type == f16:
            return True
    counts = {onnx.TensorProto.FLOAT: 0, f16: 0}
    for init in model.graph.initializer:
        if init.data_type in counts:
            n = 1
            for d in init.dims:
                n *= int(d)
            counts[init.data_type] += n
    return counts[f16] > counts[onnx.TensorProto.FLOAT]


def onnx_precision(onnx_path: str | os.PathLike) -> str:
    """``int8`` for a graph with QuantizeLinear/DequantizeLinear nodes, else ``fp16`` or ``fp32``
    (:func:`onnx_is_fp16`)."""
    model = load_onnx(onnx_path)
    if any(node.op_type in _QDQ_OPS for node in model.graph.node):
        return "int8"
    return "fp16" if onnx_is_fp16(onnx_path) else "fp32"


_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def check_tensorrt_qdq(onnx_path: str | os.PathLike) -> None:
    """Raise :class:`EngineBuildError` unless every Q/DQ node of the graph is int8 with a zero point of 0 (what
    TensorRT's explicit quantization accepts; ONNX Runtime's CPU flavour uses uint8 activations)."""
    import numpy as np
    import onnx

    model = load_onnx(onnx_path)
    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in _QDQ_OPS:
            continue
        zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is None and len(node.input) > 2 and node.input[2]:
            raise EngineBuildError(f"{node.name}: the zero point must be a constant for TensorRT")
        if zero is not None and (
            zero.data_type != onnx.TensorProto.INT8 or np.any(onnx.numpy_helper.to_array(zero) != 0)
        ):
            raise EngineBuildError(
                f"{Path(onnx_path).name} is not a TensorRT INT8 graph: {node.name} has a non-zero or uint8 zero "
                "point (the ONNX Runtime flavour); build from the TensorRT flavour (model.int8-trt.onnx)"
            )


def onnx_input_size(onnx_path: str | os.PathLike) -> int:
    """S of the ``images`` input [B, 3, S, S]; an engine needs it static (:class:`EngineBuildError`)."""
    model = load_onnx(onnx_path)
    for graph_input in model.graph.input:
        if graph_input.name == INPUT_NAME:
            dims = graph_input.type.tensor_type.shape.dim
            if len(dims) != 4:
                raise EngineBuildError(f"ONNX input {INPUT_NAME!r} must be [B,3,S,S], has rank {len(dims)}")
            h, w = dims[2].dim_value, dims[3].dim_value
            if h <= 0 or h != w or dims[1].dim_value not in (0, 3):
                raise EngineBuildError(
                    f"ONNX input {INPUT_NAME!r} must be [B,3,S,S] with a static S, "
                    f"got [{', '.join(d.dim_param or str(d.dim_value) for d in dims)}]"
                )
            return int(h)
    names = [i.name for i in model.graph.input]
    raise EngineBuildError(f"ONNX model has no input named {INPUT_NAME!r} (inputs: {names})")


def deployed_parameter_count(path: str | os.PathLike) -> int:
    """The weights an ``.onnx`` file holds (elements of its floating-point initializers and of the quantized
    ones a DequantizeLinear reads, not counting scales and zero points); 0 for a file whose weights cannot be
    counted (an engine)."""
    if Path(path).suffix.lower() != ".onnx":
        return 0
    import onnx

    model = load_onnx(path)
    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    qdq = [node for node in model.graph.node if node.op_type in _QDQ_OPS]
    quantized = {node.input[0] for node in qdq if node.op_type == "DequantizeLinear"}
    parameters = {name for node in qdq for name in node.input[1:]}
    count = 0
    for init in model.graph.initializer:
        if init.name not in parameters and (init.data_type in floating or init.name in quantized):
            elements = 1
            for d in init.dims:
                elements *= int(d)
            count += elements
    return count
