"""FP32 / FP16 ONNX + activation ranges -> INT8 ONNX with QuantizeLinear/DequantizeLinear (Q/DQ) nodes.

Two flavours, because TensorRT and ONNX Runtime's CPU kernels want different INT8 graphs:

* ``tensorrt``: built from the FP16 export. Symmetric int8 (every zero point 0); a dedicated Q -> DQ pair in
  front of each convolution's input and of the shortcut input of each residual add, and a DQ of per-channel
  int8 weights (output-channel axis) in front of each convolution, so that TensorRT fuses DQ -> Conv into an
  INT8 convolution (NVIDIA's explicit-quantization placement). The rest stays in FP16, inputs and outputs in
  FP32. Opset 19, whose Q/DQ take FP16 scales, so the strongly typed builder of TensorRT 10 and 11 keeps
  the FP16 compute as it is.
* ``onnxruntime``: built from the FP32 export by ONNX Runtime's own QDQ quantizer. uint8 activations, int8
  per-channel weights, FP32 elsewhere: the form ONNX Runtime's x86 kernels fuse into integer convolutions.

Layers are named by their PyTorch module path (``backbone.layers.0.0.conv1``) and grouped into blocks
(``stem``, ``stage1`` ... of the backbone, ``fpn``, ``protonet``, ``head``): what ``--int8-exclude`` matches.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError, UsageError, first_line
from ..files import atomic_write_bytes
from .onnx_export import finalize
from .onnx_format import NETWORK_SCOPE, load_onnx
from .onnx_fp16 import verify_in_onnxruntime

INT8_FLAVOURS = ("onnxruntime", "tensorrt")
TENSORRT_INT8_OPSET = 19  # the first opset whose QuantizeLinear/DequantizeLinear take FP16 scales
# What the ONNX Runtime flavour quantizes: convolutions, the adds of residual blocks and the FPN, and the
# ops between them that ONNX Runtime runs on uint8 tensors directly (so no dequantize-requantize between).
# Never the head's output assembly (reshapes, concatenations, softmax, tanh): the outputs stay exact FP32.
ONNXRUNTIME_OP_TYPES = ("Conv", "Add", "Relu", "MaxPool", "Resize")
_SCOPE_SUFFIX = re.compile(r"_\d+$")  # the exporter's suffix for a module called more than once
_BLOCK_NAMES = {"fpn": "fpn", "proto_net": "protonet", "prediction_layers": "head"}


@dataclass(frozen=True)
class Layer:
    """A node that INT8 can quantize, named as the PyTorch module it comes from."""

    node: str  # the ONNX node name
    op_type: str
    module: str  # e.g. backbone.layers.0.0.conv1
    block: str  # stem, stage1 ..., fpn, protonet, head


def module_path(node_name: str) -> str:
    """``/model/backbone/layers.0/layers.0.0/conv1/Conv`` -> ``backbone.layers.0.0.conv1``: the scopes of a
    node name are module names relative to their parent, each repeating its parent's name as a prefix."""
    parts = node_name[len(NETWORK_SCOPE) :].split("/")[:-1] if node_name.startswith(NETWORK_SCOPE) else []
    path: list[str] = []
    for part in (_SCOPE_SUFFIX.sub("", p) for p in parts if p):
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path)


def block_of(module: str) -> str:
    """The block a module belongs to: ``stem`` or ``stageN`` in the backbone, else its top-level module."""
    head, _, rest = module.partition(".")
    if head == "backbone":
        match = re.match(r"layers\.(\d+)", rest)
        return f"stage{int(match.group(1)) + 1}" if match else "stem"
    top = head.split(".")[0] if head else "other"
    return _BLOCK_NAMES.get(re.sub(r"\.\d+$", "", top), top)


def quantizable_layers(model: Any, op_types: Sequence[str] = ("Conv", "Add")) -> list[Layer]:
    """The nodes of ``op_types`` inside the network's modules, in graph order; an add only when it adds two
    activations. Nodes that produce a graph output are never quantized: the outputs stay exact."""
    constants, outputs = _constant_names(model), {o.name for o in model.graph.output}
    layers = []
    for node in model.graph.node:
        module = module_path(node.name)
        if not module or node.op_type not in op_types or set(node.output) & outputs:
            continue
        if node.op_type != "Add" or (len(node.input) == 2 and not set(node.input) & constants):
            layers.append(Layer(node.name, node.op_type, module, block_of(module)))
    return layers


def blocks(layers: Iterable[Layer]) -> list[str]:
    """The blocks of ``layers`` in graph order."""
    return list(dict.fromkeys(layer.block for layer in layers))


def excluded_nodes(layers: Sequence[Layer], patterns: Sequence[str]) -> set[str]:
    """The nodes of the layers whose module path or block matches one of the glob ``patterns``; a pattern
    that matches nothing is an error (a typo would otherwise quantize everything silently)."""
    chosen: set[str] = set()
    for pattern in patterns:
        hits = {layer.node for layer in layers if fnmatch.fnmatchcase(layer.module, pattern) or layer.block == pattern}
        if not hits:
            examples = ", ".join([*blocks(layers)[:3], layers[0].module if layers else ""])
            raise UsageError(
                f"--int8-exclude {pattern!r} matches no layer: give a block or a module path glob (e.g. {examples})"
            )
        chosen |= hits
    return chosen


def calibration_tensors(model: Any) -> list[str]:
    """The activations whose ranges either flavour needs: every float input and output of the op types the
    ONNX Runtime flavour quantizes (a superset of what the TensorRT flavour needs), inside the network."""
    constants = _constant_names(model)
    float_tensors = _float_tensors(model)
    names: dict[str, None] = {}
    for node in model.graph.node:
        if module_path(node.name) and node.op_type in ONNXRUNTIME_OP_TYPES:  # the Adds' inputs included
            for name in (*node.input, *node.output):
                if name and name not in constants and name in float_tensors:
                    names[name] = None
    return list(names)


def _constant_names(model: Any) -> set[str]:
    names = {init.name for init in model.graph.initializer}
    return names | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def _float_tensors(model: Any) -> set[str]:
    """Names of the float32 tensors of an FP32 model (from shape inference)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name for v in infos if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


# --------------------------------------------------------------------------- scales


def symmetric_scale(lo: float, hi: float, dtype: Any = np.float32) -> np.ndarray:
    """The int8 scale of a symmetric range covering ``[lo, hi]`` (zero point 0), in ``dtype``, never rounded
    below the exact value (so the range's ends do not clip) and never 0."""
    return _scale_not_below(max(-lo, hi, 0.0) / 127.0, dtype)


def _scale_not_below(exact: np.ndarray | float, dtype: Any) -> np.ndarray:
    exact = np.asarray(exact, np.float64)
    exact = np.where(exact > 0, exact, 1.0)  # an all-zero tensor: any scale, 1 keeps it exact
    scale = exact.astype(dtype)
    low = scale.astype(np.float64) < exact
    scale = np.where(low, np.nextafter(scale, np.array(np.inf, dtype)), scale).astype(dtype)
    return np.maximum(scale, np.finfo(dtype).smallest_subnormal).astype(dtype)


def quantize_weight(weight: np.ndarray, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, per-output-channel scales in ``dtype``), symmetric over each channel's largest
    magnitude."""
    weight = weight.astype(np.float64)
    amax = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
    scale = _scale_not_below(amax / 127.0, dtype)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    q = np.clip(np.rint(weight / scale.astype(np.float64).reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


# --------------------------------------------------------------------------- TensorRT flavour


def quantize_for_tensorrt(
    fp16_model: Any, fp32_model: Any, ranges: Mapping[str, tuple[float, float]], excluded: set[str]
) -> Any:
    """The TensorRT flavour of ``fp16_model`` (modified in place and returned). ``fp32_model``: the FP32
    export it was converted from, whose weights are quantized and whose tensor names key ``ranges``."""
    import onnx

    fp32_nodes = {node.name: node for node in fp32_model.graph.node}
    fp32_weights = {init.name: init for init in fp32_model.graph.initializer}
    editor = _GraphEditor(fp16_model)
    layers = [layer for layer in quantizable_layers(fp16_model) if layer.node not in excluded]
    producers = {out: node for node in fp16_model.graph.node for out in node.output}
    for layer in layers:
        node, original = editor.nodes[layer.node], fp32_nodes.get(layer.node)
        if original is None:
            raise ExportError(f"{layer.node} is not in the FP32 export the FP16 model was converted from")
        if layer.op_type == "Conv":
            editor.quantize_input(node, 0, ranges[original.input[0]])
            editor.quantize_weight(node, onnx.numpy_helper.to_array(fp32_weights[original.input[1]]))
        else:
            index = _shortcut_input(node, producers)
            editor.quantize_input(node, index, ranges[original.input[index]])
    editor.drop_unused_initializers()
    return _to_opset(fp16_model, TENSORRT_INT8_OPSET)


def _shortcut_input(add: Any, producers: Mapping[str, Any]) -> int:
    """Which input of a residual add gets the Q/DQ: the one not produced by a convolution (the shortcut), so
    that TensorRT fuses the other branch's convolution with the add; the second when both or neither are."""
    from_conv = [_through_casts(producers, name) == "Conv" for name in add.input]
    return 0 if from_conv[1] and not from_conv[0] else 1


def _through_casts(producers: Mapping[str, Any], name: str) -> str | None:
    node = producers.get(name)
    while node is not None and node.op_type == "Cast":
        node = producers.get(node.input[0])
    return None if node is None else node.op_type


class _GraphEditor:
    """Inserts Q/DQ nodes into a graph whose tensors are typed by shape inference."""

    def __init__(self, model: Any):
        import onnx

        self.model, self.graph = model, model.graph
        self.nodes = {node.name: node for node in model.graph.node}
        inferred = onnx.shape_inference.infer_shapes(model)
        infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
        self.types = {v.name: v.type.tensor_type.elem_type for v in infos}
        self.types.update({init.name: init.data_type for init in model.graph.initializer})
        self.new_nodes: dict[str, list[Any]] = {}  # inserted before the node of that name
        self.done_weights: set[str] = set()

    def _dtype(self, tensor: str) -> Any:
        import onnx

        elem = self.types.get(tensor)
        if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            raise ExportError(f"cannot quantize {tensor!r}: its type is not float32 or float16")
        return np.float16 if elem == onnx.TensorProto.FLOAT16 else np.float32

    def _constant(self, name: str, value: np.ndarray) -> str:
        import onnx

        if not any(init.name == name for init in self.graph.initializer):
            self.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
        return name

    def quantize_input(self, node: Any, index: int, value_range: tuple[float, float]) -> None:
        """A dedicated Q -> DQ pair on input ``index`` of ``node``."""
        import onnx

        tensor = node.input[index]
        dtype = self._dtype(tensor)
        scale = self._constant(f"{node.name}/input{index}_scale", symmetric_scale(*value_range, dtype))
        zero = self._constant(f"{node.name}/input{index}_zero_point", np.array(0, np.int8))
        quantized, dequantized = f"{node.name}/input{index}_q", f"{node.name}/input{index}_dq"
        self._insert(
            node,
            onnx.helper.make_node("QuantizeLinear", [tensor, scale, zero], [quantized], name=quantized),
            onnx.helper.make_node("DequantizeLinear", [quantized, scale, zero], [dequantized], name=dequantized),
        )
        node.input[index] = dequantized

    def quantize_weight(self, node: Any, weight: np.ndarray) -> None:
        """int8 per-channel weights and a DQ in front of the convolution (the weight's scale in the type the
        convolution computes in); shared weights are quantized once."""
        import onnx

        name = node.input[1]
        dtype = self._dtype(name)
        q_name, scale_name, zero_name = f"{name}_int8", f"{name}_scale", f"{name}_zero_point"
        if name not in self.done_weights:
            q, scale = quantize_weight(weight, dtype)
            self._constant(q_name, q)
            self._constant(scale_name, scale)
            self._constant(zero_name, np.zeros(len(scale), np.int8))
            self.done_weights.add(name)
        output = f"{node.name}/weight_dq"
        self._insert(node, onnx.helper.make_node("DequantizeLinear", [q_name, scale_name, zero_name], [output], axis=0))
        node.input[1] = output

    def _insert(self, before: Any, *nodes: Any) -> None:
        self.new_nodes.setdefault(before.name, []).extend(nodes)

    def drop_unused_initializers(self) -> None:
        ordered = []
        for node in self.graph.node:
            ordered.extend(self.new_nodes.get(node.name, []))
            ordered.append(node)
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        used = {name for node in self.graph.node for name in node.input} | {o.name for o in self.graph.output}
        kept = [init for init in self.graph.initializer if init.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)


def _to_opset(model: Any, opset: int) -> Any:
    import onnx

    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if current >= opset:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, opset)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        raise ExportError(f"cannot convert the model to opset {opset} for FP16 Q/DQ: {first_line(exc)}") from None
    del model.opset_import[:]
    model.opset_import.extend(converted.opset_import)
    del model.graph.node[:]
    model.graph.node.extend(converted.graph.node)
    return model


# --------------------------------------------------------------------------- ONNX Runtime flavour


def quantize_for_onnxruntime(fp32_model: Any, ranges: Mapping[str, tuple[float, float]], excluded: set[str]) -> Any:
    """The ONNX Runtime flavour of ``fp32_model``: ONNX Runtime's QDQ quantizer with these ranges (uint8
    activations, full 8-bit int8 per-channel weights); the nodes in ``excluded`` (any of its op types) stay
    FP32. The weights are not range-reduced to 7 bits: the saturation that guards against on x86 CPUs without
    VNNI did not cost accuracy on the demo models (benchmarks/RESULTS.md)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantType
    from onnxruntime.quantization.calibrate import TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    inferred = onnx.shape_inference.infer_shapes(fp32_model)
    tensors = TensorsData(
        CalibrationMethod.MinMax, {name: (np.float32(lo), np.float32(hi)) for name, (lo, hi) in ranges.items()}
    )
    network = [layer.node for layer in quantizable_layers(fp32_model, ONNXRUNTIME_OP_TYPES)]
    quantizer = QDQQuantizer(
        inferred,
        True,  # per-channel weights
        False,  # no 7-bit weights
        QuantType.QInt8,
        QuantType.QUInt8,
        tensors,
        [name for name in network if name not in excluded],
        sorted(excluded),
        list(ONNXRUNTIME_OP_TYPES),
        {"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    try:
        quantizer.quantize_model()
    except Exception as exc:  # noqa: BLE001 - the quantizer raises bare exceptions
        raise ExportError(f"ONNX Runtime's quantizer failed: {first_line(exc)}") from None
    quantizer.model.topological_sort()  # the quantizer appends its nodes at the end
    return quantizer.model.model


# --------------------------------------------------------------------------- the artifact


def write_int8(
    flavour: str,
    parent_path: str | os.PathLike,
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    ranges: Mapping[str, tuple[float, float]],
    exclude: Sequence[str],
    calibration: Mapping[str, Any],
    extra_metadata: Mapping[str, str] | None = None,
) -> str:
    """Quantize ``parent_path`` (the FP16 export for ``tensorrt``, the FP32 one for ``onnxruntime``) and write
    it atomically to ``out_path`` once it passes onnx.checker and runs in ONNX Runtime; returns a summary.

    The parent's metadata is kept, with ``precision`` ``int8`` and the flavour, the calibration settings and
    the layers left unquantized recorded.
    """
    if flavour not in INT8_FLAVOURS:
        raise UsageError(f"INT8 flavours are {', '.join(INT8_FLAVOURS)}, not {flavour!r}")
    fp32_model = load_onnx(fp32_path)
    layers = quantizable_layers(fp32_model)
    excluded = excluded_nodes(layers, exclude)
    parent = load_onnx(parent_path)
    props = {p.key: p.value for p in parent.metadata_props}
    if flavour == "tensorrt":
        model = quantize_for_tensorrt(parent, fp32_model, ranges, excluded)
    else:  # the ReLUs, pools and resizes of an excluded module stay FP32 with its convolutions
        around = excluded_nodes(quantizable_layers(fp32_model, ONNXRUNTIME_OP_TYPES), exclude) if exclude else set()
        model = quantize_for_onnxruntime(parent, ranges, excluded | around)
    kept = sorted({layer.module for layer in layers if layer.node in excluded})
    props.update(
        precision="int8",
        int8_flavour=flavour,
        int8_calibration=json.dumps(dict(calibration), sort_keys=True),
        int8_excluded=json.dumps(kept),
        **dict(extra_metadata or {}),
    )
    finalize(model, props)
    data = model.SerializeToString()
    verify_in_onnxruntime(data, f"the {flavour} INT8 model made from {Path(parent_path).name}")
    atomic_write_bytes(out_path, data)
    return f"{len(layers) - len(excluded)} of {len(layers)} layers quantized"
