"""Lay deployed artifacts out as an NVIDIA Triton Inference Server model repository.

    DIR/<model>/config.pbtxt + 1/model.plan          (platform tensorrt_plan: the TensorRT engine)
    DIR/<model>_onnx/config.pbtxt + 1/model.onnx     (platform onnxruntime_onnx: the FP32 ONNX export)
    DIR/<model>_postprocess_onnx/...                 (the export with the post-processing in the graph)

Each model's inputs and outputs (names, data types, dims) are read from the ONNX file it is, or was built
from: an engine built strongly typed keeps the I/O of its ONNX. With a dynamic batch axis the batch is
Triton's (``max_batch_size`` from the engine profile's max, ``dynamic_batching`` preferring the profile's
opt and max sizes) and the dims leave it out; a tensor of shape ``[B]`` is declared ``dims: [1]`` with
``reshape: {shape: []}``, as Triton wants. Every model runs on the GPU (``instance_group`` ``KIND_GPU``).
A repository is written whole: the model folders are made in a private folder and each replaces its old
folder at the end (:func:`~trt_yolact.files.replaced_entries`).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExportError
from ..files import atomic_write_text, replaced_entries
from .onnx_format import INPUT_NAME, load_onnx
from .tensorrt_build import BuildProfile

TENSORRT_PLATFORM = "tensorrt_plan"
ONNX_PLATFORM = "onnxruntime_onnx"
MODEL_FILES = {TENSORRT_PLATFORM: "model.plan", ONNX_PLATFORM: "model.onnx"}
MODEL_VERSION = "1"
# ONNX TensorProto element types (FLOAT, FLOAT16, UINT8, INT8, INT32, INT64, BOOL) -> Triton's DataType names.
TRITON_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 2: "TYPE_UINT8", 3: "TYPE_INT8", 6: "TYPE_INT32", 7: "TYPE_INT64"}
TRITON_TYPES[9] = "TYPE_BOOL"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as Triton declares it; ``dims`` leave out the batch axis of a batched model
    (-1: a dynamic size). A batched tensor of shape ``[B]`` has ``dims (1,)`` and ``reshape ()``."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TritonModel:
    """One model of the repository: the file it serves and its interface."""

    name: str
    platform: str
    source: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int  # 0: the model's tensors carry their batch axis themselves
    preferred_batch_sizes: tuple[int, ...] = ()

    @property
    def filename(self) -> str:
        return MODEL_FILES[self.platform]


def _spec(value_info, batched: bool, what: str) -> TensorSpec:
    tensor_type = value_info.type.tensor_type
    if tensor_type.elem_type not in TRITON_TYPES:
        raise ExportError(f"{what}: {value_info.name!r} has an element type Triton models here cannot declare")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
    if batched:
        if not dims or dims[0] != -1:
            raise ExportError(
                f"{what}: output {value_info.name!r} has no batch axis, which Triton's batching needs on every "
                "tensor (re-export it)"
            )
        dims = dims[1:]
    if not dims:  # [B]: Triton wants at least one dim
        return TensorSpec(value_info.name, TRITON_TYPES[tensor_type.elem_type], (1,), reshape=())
    return TensorSpec(value_info.name, TRITON_TYPES[tensor_type.elem_type], tuple(dims))


def onnx_interface(onnx_path: str | os.PathLike) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], bool]:
    """(inputs, outputs, batched) of an ONNX export; batched when the ``images`` input's batch is dynamic."""
    graph = load_onnx(onnx_path).graph
    images = next((i for i in graph.input if i.name == INPUT_NAME), None)
    if images is None:
        raise ExportError(f"{Path(onnx_path).name} has no input {INPUT_NAME!r}")
    batch_dim = images.type.tensor_type.shape.dim[0]
    batched = not batch_dim.HasField("dim_value")
    what = Path(onnx_path).name
    inputs = tuple(_spec(i, batched, what) for i in graph.input)
    outputs = tuple(_spec(o, batched, what) for o in graph.output)
    return inputs, outputs, batched


def model_name(text: str) -> str:
    """A Triton model name (a folder name) from a model's name: letters, digits, ``_`` and ``-``."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    if not name:
        raise ExportError(f"cannot make a Triton model name of {text!r}")
    return name


def triton_model(
    name: str, artifact: str | os.PathLike, onnx_path: str | os.PathLike, profile: BuildProfile
) -> TritonModel:
    """The Triton model serving ``artifact`` (an ``.engine`` or ``.onnx``), its interface read from
    ``onnx_path`` (the ONNX itself, or the one the engine was built from); batching from ``profile``."""
    artifact = Path(artifact)
    platform = TENSORRT_PLATFORM if artifact.suffix in (".engine", ".plan") else ONNX_PLATFORM
    inputs, outputs, batched = onnx_interface(onnx_path)
    if not batched:
        return TritonModel(model_name(name), platform, artifact, inputs, outputs, 0)
    preferred = tuple(sorted({profile.opt_batch, profile.max_batch}))
    return TritonModel(model_name(name), platform, artifact, inputs, outputs, profile.max_batch, preferred)


def _dims(values: tuple[int, ...]) -> str:
    return f"[ {', '.join(str(v) for v in values)} ]" if values else "[ ]"


def _tensor_block(spec: TensorSpec) -> list[str]:
    lines = ["  {", f'    name: "{spec.name}"', f"    data_type: {spec.data_type}", f"    dims: {_dims(spec.dims)}"]
    if spec.reshape is not None:
        lines.append(f"    reshape: {{ shape: {_dims(spec.reshape)} }}")
    return [*lines, "  }"]


def _tensor_list(key: str, specs: tuple[TensorSpec, ...]) -> list[str]:
    blocks = [_tensor_block(spec) for spec in specs]
    lines = [f"{key} ["]
    for index, block in enumerate(blocks):
        lines += block[:-1] + [block[-1] + ("," if index < len(blocks) - 1 else "")]
    return [*lines, "]"]


def config_pbtxt(model: TritonModel) -> str:
    """The model's ``config.pbtxt`` (protobuf text of Triton's ``ModelConfig``)."""
    lines = [f'name: "{model.name}"', f'platform: "{model.platform}"', f"max_batch_size: {model.max_batch_size}"]
    lines += _tensor_list("input", model.inputs) + _tensor_list("output", model.outputs)
    if model.max_batch_size > 0:
        lines += ["dynamic_batching {", f"  preferred_batch_size: {_dims(model.preferred_batch_sizes)}", "}"]
    lines += ["instance_group [", "  {", "    count: 1", "    kind: KIND_GPU", "  }", "]"]
    return "\n".join(lines) + "\n"


def write_repository(out_dir: str | os.PathLike, models: list[TritonModel]) -> list[Path]:
    """Write ``models`` into the repository ``out_dir`` (other models there are kept; each of these replaces
    its folder whole); returns the model folders."""
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        raise ExportError(f"two Triton models of one name in {names}")
    with replaced_entries(out_dir, tuple(names)) as staging:
        for model in models:
            folder = staging / model.name
            (folder / MODEL_VERSION).mkdir(parents=True)
            shutil.copyfile(model.source, folder / MODEL_VERSION / model.filename)
            atomic_write_text(folder / "config.pbtxt", config_pbtxt(model))
    return [Path(out_dir) / name for name in names]
