"""Run a TensorRT engine built by :mod:`trt_yolact.deploy.tensorrt_build` on torch CUDA tensors.

Inputs and outputs stay on the GPU: TensorRT reads and writes torch-allocated memory directly
(``set_tensor_address`` + ``execute_async_v3``), there is no host copy. Each runner enqueues on a CUDA stream of
its own (never the legacy default stream, on which TensorRT would synchronise), ordered after the caller's
current stream and before whatever the caller queues next. This module only opens engines, it never builds
one. TensorRT objects are named as in ``trt_yolact.deploy.engine_format.TRT_OBJECT_TYPES`` (see the API
contract test).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ..config import PRECISIONS, YolactConfig
from ..deploy.engine_format import (
    engine_compatibility_problem,
    gpu_info,
    import_tensorrt,
    process_logger,
    read_sidecar,
    rebuild_command,
    sidecar_path,
)
from ..deploy.onnx_format import HOST_OUTPUTS, INPUT_NAME, NETWORK_OUTPUT_NAMES, prior_boxes
from ..errors import ConfigError, RunnerError
from ..structures import GRAPH_OUTPUT_NAMES
from .base import Runner
from .graph_outputs import has_graph_outputs, recorded_postprocess_config


def _torch_dtypes(trt: Any) -> dict[Any, torch.dtype]:
    return {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.INT8: torch.int8,
        trt.DataType.UINT8: torch.uint8,
        trt.DataType.BOOL: torch.bool,
    }


def deserialize_engine(trt: Any, engine_path: str | os.PathLike) -> tuple[Any, Any]:
    """(runtime, engine); the runtime must outlive the engine."""
    engine_path = Path(engine_path)
    runtime = trt.Runtime(process_logger(trt))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise RunnerError(
            f"TensorRT {trt.__version__} could not deserialize {engine_path.name}: it was probably built with "
            f"another TensorRT version or GPU; {rebuild_command(engine_path)}"
        )
    return runtime, engine


def engine_activation_bytes(engine: Any) -> int:
    """The activation memory an execution context of ``engine`` allocates: ``device_memory_size_v2`` from
    TensorRT 10.1 on, ``device_memory_size`` (its 32-bit predecessor, gone in 11.0) on 10.0."""
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)


def engine_layers(engine_path: str | os.PathLike) -> dict[str, Any]:
    """The engine inspector's per-layer information (its JSON, parsed).

    Full detail needs an engine built with ``ProfilingVerbosity.DETAILED`` (the builder sets it)."""
    trt = import_tensorrt()
    runtime, engine = deserialize_engine(trt, engine_path)
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    del inspector, engine, runtime
    return info


class TensorRTRunner(Runner):
    """Runner over a serialized TensorRT engine (``.engine`` + its ``.engine.json`` sidecar).

    The batch profile comes from the engine (batches above its max are split, below its min padded); an
    engine with an FP16 input takes FP16. The ``priors`` are made from the sidecar's ``config`` and
    ``prior_grid`` (an engine of an earlier export that has them as an output still runs). An engine of an export
    with the post-processing in the graph has the outputs of ``GraphDetections`` instead (``postprocess ==
    "graph"``, its settings read from the sidecar). Not thread safe: one execution context and one CUDA stream,
    use one runner per thread.
    """

    backend = "tensorrt"
    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, device: str | torch.device = "cuda", check_sidecar: bool = True):
        super().__init__()
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise RunnerError(f"TensorRT engine not found: {self.engine_path}; {rebuild_command(self.engine_path)}")
        trt = import_tensorrt()
        device = torch.device(device)
        if device.type != "cuda":
            raise RunnerError(f"TensorRT engines run on CUDA devices only, got device {str(device)!r}")
        if not torch.cuda.is_available():
            raise RunnerError("TensorRT needs an NVIDIA GPU, but torch sees no CUDA device")
        self._device = device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
        self.trt_version = trt.__version__
        self.metadata = read_sidecar(self.engine_path)
        self._check_sidecar(check_sidecar)
        self.activate()

    def __repr__(self) -> str:
        return (
            f"TensorRTRunner({self.engine_path.name!r}, device={str(self._device)!r}, precision={self.precision}, "
            f"batch {self.min_batch}..{self.max_batch}, input {self._input_size}, TensorRT {self.trt_version})"
        )

    def _check_sidecar(self, check: bool) -> None:
        if self.metadata is None:
            print(
                f"warning: {sidecar_path(self.engine_path).name} is missing or unreadable; "
                "cannot check that the engine matches this TensorRT version and GPU",
                file=sys.stderr,
            )
            return
        problem = engine_compatibility_problem(self.metadata, self.trt_version, gpu_info(self._device.index))
        if check and problem:
            raise RunnerError(
                f"TensorRT engine {self.engine_path} cannot run here: {problem}. {rebuild_command(self.engine_path)}"
            )

    def _activate(self) -> None:
        trt = import_tensorrt()
        with torch.cuda.device(self._device):
            self._runtime, self._engine = deserialize_engine(trt, self.engine_path)
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise RunnerError(
                    f"TensorRT could not create an execution context for {self.engine_path.name} (out of GPU memory?)"
                )
            self._stream = torch.cuda.Stream(self._device)
        self._read_interface(trt)

    def _deactivate(self) -> None:
        self._stream.synchronize()  # nothing queued may outlive the context it runs in
        del self._context, self._engine, self._runtime, self._stream

    def _read_interface(self, trt: Any) -> None:
        """Input dtype, output dtypes, batch profile, input size and precision, from the engine."""
        dtypes = _torch_dtypes(trt)
        inputs, self._output_dtypes = [], {}
        for i in range(self._engine.num_io_tensors):
            tensor_name = self._engine.get_tensor_name(i)
            dtype = dtypes.get(self._engine.get_tensor_dtype(tensor_name))
            if self._engine.get_tensor_mode(tensor_name) == trt.TensorIOMode.INPUT:
                inputs.append(tensor_name)
                self.input_dtype = dtype
            elif dtype is None:
                raise RunnerError(f"engine output {tensor_name!r} has an unsupported data type")
            else:
                self._output_dtypes[tensor_name] = dtype
        if inputs != [INPUT_NAME] or self.input_dtype not in (torch.float32, torch.float16):
            raise RunnerError(f"engine must have exactly one float32/float16 input {INPUT_NAME!r}, has {inputs}")
        graph = has_graph_outputs(self._output_dtypes)  # an engine of the export with the post-processing inside
        if graph:
            self.output_names, self.postprocess = GRAPH_OUTPUT_NAMES, "graph"
            self.postprocess_config = recorded_postprocess_config(self.metadata)
        required = GRAPH_OUTPUT_NAMES if graph else NETWORK_OUTPUT_NAMES
        missing = [n for n in required if n not in self._output_dtypes]
        if missing:
            has = sorted(self._output_dtypes)
            raise RunnerError(f"engine lacks outputs {missing} (has {has}); {rebuild_command(self.engine_path)}")
        self._host_outputs = {} if graph else self._made_on_host()
        # What the engine holds on the GPU outside torch's allocator: its weights (about the plan's size) and
        # the activation memory its context allocated; `bench` adds this to torch's CUDA peak.
        self.device_memory_bytes = engine_activation_bytes(self._engine) + self.engine_path.stat().st_size
        min_shape, _opt_shape, max_shape = (tuple(d) for d in self._engine.get_tensor_profile_shape(INPUT_NAME, 0))
        self.min_batch, self.max_batch = int(min_shape[0]), int(max_shape[0])
        self._input_size = int(max_shape[2])
        recorded = (self.metadata or {}).get("precision")
        self.precision = (
            recorded if recorded in PRECISIONS else ("fp16" if self.input_dtype == torch.float16 else "fp32")
        )

    def _made_on_host(self) -> dict[str, torch.Tensor]:
        """The raw outputs the engine leaves to the host (its priors, from the sidecar), or {}."""
        if all(name in self._output_dtypes for name in HOST_OUTPUTS):
            return {}
        record = self.metadata or {}
        try:
            config, grid = YolactConfig.from_dict(record["config"]), record["prior_grid"]
        except (KeyError, TypeError, ConfigError):
            raise RunnerError(
                f"engine {self.engine_path.name} has no priors output and its sidecar lacks the config and "
                f"prior_grid to make them; {rebuild_command(self.engine_path)}"
            ) from None
        priors = torch.from_numpy(prior_boxes(config, grid).copy())
        return {HOST_OUTPUTS[0]: priors.to(self._device)}

    def _infer(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.cuda.device(self._device):
            caller = torch.cuda.current_stream(self._device)
            if not self._context.set_input_shape(INPUT_NAME, tuple(images.shape)):
                raise RunnerError(f"TensorRT rejected input shape {list(images.shape)}")
            self._context.set_tensor_address(INPUT_NAME, images.data_ptr())
            outputs = {}
            for tensor_name, dtype in self._output_dtypes.items():
                shape = tuple(self._context.get_tensor_shape(tensor_name))
                if any(d < 0 for d in shape):
                    raise RunnerError(f"output {tensor_name!r} has an unresolved shape {list(shape)}")
                out = torch.empty(shape, dtype=dtype, device=self._device)  # on the caller's stream
                self._context.set_tensor_address(tensor_name, out.data_ptr())
                outputs[tensor_name] = out
            self._enqueue(caller, [images, *outputs.values()])
        outputs.update(self._host_outputs)
        return {name: outputs[name] for name in self.output_names}

    def _enqueue(self, caller: torch.cuda.Stream, buffers: list[torch.Tensor]) -> None:
        """Run the context on the runner's stream between the caller's work: the input is complete before
        TensorRT reads it, the outputs before the caller's next kernel reads them."""
        self._stream.wait_stream(caller)
        for buffer in buffers:
            # Allocated on the caller's stream but used on ours: the caching allocator must not hand their
            # memory out again (when the caller drops them) before our queued work is done.
            buffer.record_stream(self._stream)
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RunnerError(f"TensorRT execution of {self.engine_path.name} failed (see the log above)")
        caller.wait_stream(self._stream)
