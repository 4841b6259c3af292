"""FP32 ONNX -> FP16 ONNX for strongly typed TensorRT and for ONNX Runtime.

Weights and most operators become FP16; inputs and outputs stay FP32. Kept in FP32: the operators whose
tails FP16 loses (softmax, exp, sigmoid: class scores near the candidate threshold, box sizes from
``exp(loc)``, mask probabilities), resizes, reductions that can overflow, every node of the graph
post-processing (cheap, and thresholds and coordinates must not move) and the ``priors`` constant. The
constants that give a Resize its ``roi``/``scales`` stay FP32 constants the Resize reads directly: behind an
FP16 -> FP32 Cast they would be computed tensors, which TensorRT's ONNX parser treats as shape tensors.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import ExportError, first_line
from ..files import atomic_write_bytes
from .onnx_export import finalize
from .onnx_format import NETWORK_SCOPE, load_onnx

# Op types kept in FP32 besides onnxconverter-common's own block list (Resize, TopK, Range, Max/Min, ...).
DEFAULT_KEEP_FP32_OPS: tuple[str, ...] = ("Softmax", "Exp", "Sigmoid", "Resize", "ReduceMax", "ReduceSum", "TopK")
# Inputs of a Resize that describe the output's geometry (roi, scales, sizes), by position.
RESIZE_SHAPE_INPUTS = (1, 2, 3)


def resize_shape_constants(model) -> list[str]:
    """Names of the Constant nodes that feed a Resize's roi/scales/sizes (to be kept out of the conversion)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        for index in RESIZE_SHAPE_INPUTS:
            source = producers.get(node.input[index]) if index < len(node.input) and node.input[index] else None
            if source is not None and source.op_type == "Constant":
                names.append(source.name)
    return names


def verify_in_onnxruntime(data: bytes, what: str) -> None:
    """Load and run the model once on zeros in ONNX Runtime (CPU): a converted model must be usable."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        return  # nothing to verify with; the checker already passed
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        (image_input,) = session.get_inputs()
        shape = [d if isinstance(d, int) else 1 for d in image_input.shape]
        dtype = np.float16 if image_input.type == "tensor(float16)" else np.float32
        outputs = session.run(None, {image_input.name: np.zeros(shape, dtype)})
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"{what} does not run in ONNX Runtime: {first_line(exc)}") from None
    for meta, value in zip(session.get_outputs(), outputs):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ExportError(f"{what} produces non-finite values in output {meta.name!r}")


def _remove_cast_round_trips(model) -> None:
    """Bypass FP32 -> FP16 -> FP32 cast pairs. onnxconverter-common wraps each blocked node in casts on
    its own, so a chain of FP32 nodes gets a pointless FP16 rounding between every two of them."""
    import onnx

    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16

    def cast_to(node) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    graph_outputs = {o.name for o in model.graph.output}
    producers = {out: node for node in model.graph.node for out in node.output}
    rename: dict[str, str] = {}
    for node in model.graph.node:
        first = producers.get(node.input[0]) if node.input else None
        is_round_trip = cast_to(node) == float32 and first is not None and cast_to(first) == float16
        if is_round_trip and node.output[0] not in graph_outputs:
            # The converter only casts FP32 tensors to FP16, so the pair's input is FP32 already.
            rename[node.output[0]] = first.input[0]
    if not rename:
        return
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    # Drop the casts that nothing reads any more (the FP16 casts may still feed FP16 nodes).
    while True:
        used = {name for node in model.graph.node for name in node.input} | graph_outputs
        dead = [n for n in model.graph.node if n.op_type == "Cast" and n.output[0] not in used]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    kept = {out for node in model.graph.node for out in node.output}
    stale = [v for v in model.graph.value_info if v.name not in kept]
    for info in stale:
        model.graph.value_info.remove(info)


def _restore_float_outputs(model, float_outputs: set[str]) -> None:
    """Make the outputs that were float32 float32 again. With ``keep_io_types`` onnxconverter-common
    still ends an output produced by a blocked (FP32) node with a cast to FP16; that cast, or a new one,
    now casts to FP32 (a cast FP32 -> FP32 is a no-op that ONNX Runtime and TensorRT remove)."""
    import onnx

    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    producers = {out: node for node in model.graph.node for out in node.output}
    for output in model.graph.output:
        if output.name not in float_outputs or output.type.tensor_type.elem_type != float16:
            continue
        node = producers.get(output.name)
        if node is not None and node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = float32
        else:
            inner = f"{output.name}_fp16"
            if node is not None:
                node.output[list(node.output).index(output.name)] = inner
            model.graph.node.append(
                onnx.helper.make_node("Cast", [inner], [output.name], to=float32, name=f"{output.name}_to_fp32")
            )
        output.type.tensor_type.elem_type = float32
        for info in model.graph.value_info:
            if info.name == output.name:
                info.type.tensor_type.elem_type = float32


def convert_fp16(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    keep_fp32_ops: Sequence[str] = DEFAULT_KEEP_FP32_OPS,
    extra_metadata: Mapping[str, str] | None = None,
) -> Path:
    """FP32 export -> FP16 ONNX (float32 inputs and outputs, weights and most ops in FP16).

    Kept in FP32: the op types ``keep_fp32_ops`` plus onnxconverter-common's default block list, every
    node of the graph post-processing, and the ``priors`` constant (exact prior boxes). The FP32 export's
    metadata is kept (updated by ``extra_metadata``). The result is checked with onnx.checker and run once
    in ONNX Runtime (CPU) before it is written atomically.
    """
    import onnx
    from onnxconverter_common import float16

    model = load_onnx(fp32_path)
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("precision", "fp32") != "fp32":
        raise ExportError(f"{fp32_path} is already {props['precision']}: convert the FP32 export")
    if any(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in model.graph.input):
        raise ExportError(f"{fp32_path} already has an FP16 input: convert the FP32 export")
    nodes = list(model.graph.node)
    if any(n.name.startswith(NETWORK_SCOPE) for n in nodes):
        keep_nodes = [n.name for n in nodes if not n.name.startswith(NETWORK_SCOPE)]
    else:  # not our export's naming: keep at least the priors constant exact
        keep_nodes = [n.name for n in nodes if "priors" in n.output]
    keep_nodes += resize_shape_constants(model)
    block_ops = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_fp32_ops))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "values truncated to the FP16 range" notes, expected
            half = float16.convert_float_to_float16(
                model, keep_io_types=True, op_block_list=block_ops, node_block_list=keep_nodes
            )
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"FP16 conversion of {fp32_path} failed: {first_line(exc)}") from None
    _remove_cast_round_trips(half)
    _restore_float_outputs(
        half, {o.name for o in model.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    )
    props["precision"] = "fp16"
    props["fp32_ops"] = json.dumps(list(keep_fp32_ops))
    props.update(extra_metadata or {})
    finalize(half, props)
    data = half.SerializeToString()
    verify_in_onnxruntime(data, f"the FP16 model converted from {Path(fp32_path).name}")
    return atomic_write_bytes(out_path, data)
