"""Run a TensorRT engine built by :mod:`trt_yolact.engine` on torch CUDA tensors.

Inputs and outputs stay on the GPU: TensorRT reads and writes torch-allocated memory directly
(``set_tensor_address`` + ``execute_async_v3`` on torch's current stream), there is no host copy.
TensorRT is imported lazily (:class:`~trt_yolact.engine.TensorRTUnavailable` when absent).
TensorRT objects are named as in ``trt_yolact.engine.TRT_OBJECT_TYPES`` (see the API contract test).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from .engine import (
    INPUT_NAME,
    EngineBuildError,
    deserialize_engine,
    engine_compatibility_problem,
    gpu_info,
    import_tensorrt,
    read_sidecar,
    rebuild_command,
    sidecar_path,
)
from .runners import Runner, RunnerError
from .structures import OUTPUT_NAMES, RawOutputs


def _torch_dtypes(trt) -> dict:
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


class TensorRTRunner(Runner):
    """Runner over a serialized TensorRT engine (``.engine`` + its ``.engine.json`` sidecar).

    ``runner(images)`` takes a CUDA tensor ``[B,3,S,S]`` (float32, or float16 for an engine with
    an FP16 input; other float dtypes are converted) of any batch size: batches above the
    engine profile's max batch are split into chunks, smaller than its min batch are padded.
    Returns :class:`RawOutputs` on the GPU, in float32 like every runner (an FP16 engine's
    outputs are converted on the GPU). ``priors`` is a constant output, taken once.
    Not thread safe: one execution context, use one runner per thread.
    """

    backend = "tensorrt"
    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, device: str | torch.device = "cuda", check_sidecar: bool = True):
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise RunnerError(
                f"TensorRT engine not found: {self.engine_path}; build it with: {rebuild_command(self.engine_path)}"
            )
        trt = import_tensorrt()
        device = torch.device(device)
        if device.type != "cuda":
            raise RunnerError(f"TensorRT engines run on CUDA devices only, got device {str(device)!r}")
        if not torch.cuda.is_available():
            raise RunnerError("TensorRT needs an NVIDIA GPU, but torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self._device = device
        self.trt_version = trt.__version__

        self.metadata = read_sidecar(self.engine_path)
        if self.metadata is None:
            print(f"warning: {sidecar_path(self.engine_path).name} is missing or unreadable; "
                  "cannot check that the engine matches this TensorRT version and GPU", file=sys.stderr)
        elif check_sidecar:
            problem = engine_compatibility_problem(self.metadata, trt.__version__, gpu_info(device.index))
            if problem:
                raise RunnerError(
                    f"TensorRT engine {self.engine_path} cannot run here: {problem}. "
                    f"Rebuild it on this machine: {rebuild_command(self.engine_path)}"
                )

        with torch.cuda.device(device):
            self._trt_logger = trt.Logger(trt.Logger.WARNING)
            try:
                self._runtime, self._engine = deserialize_engine(trt, self.engine_path, self._trt_logger)
            except EngineBuildError as exc:
                raise RunnerError(f"{exc}: {rebuild_command(self.engine_path)}") from None
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise RunnerError(
                    f"TensorRT could not create an execution context for {self.engine_path.name} "
                    "(out of GPU memory?)"
                )

        dtypes = _torch_dtypes(trt)
        inputs, self._output_dtypes = [], {}
        for i in range(self._engine.num_io_tensors):
            tensor_name = self._engine.get_tensor_name(i)
            dtype = dtypes.get(self._engine.get_tensor_dtype(tensor_name))
            if self._engine.get_tensor_mode(tensor_name) == trt.TensorIOMode.INPUT:
                inputs.append(tensor_name)
                self._input_dtype = dtype
            else:
                if dtype is None:
                    raise RunnerError(f"engine output {tensor_name!r} has an unsupported data type")
                self._output_dtypes[tensor_name] = dtype
        if inputs != [INPUT_NAME]:
            raise RunnerError(f"engine must have exactly one input {INPUT_NAME!r}, has {inputs}")
        if self._input_dtype not in (torch.float32, torch.float16):
            raise RunnerError(f"engine input {INPUT_NAME!r} must be float32 or float16")
        missing = [n for n in OUTPUT_NAMES if n not in self._output_dtypes]
        if missing:
            raise RunnerError(
                f"engine lacks outputs {missing} (has {sorted(self._output_dtypes)}); rebuild it from the current "
                f"ONNX export: {rebuild_command(self.engine_path)}"
            )

        # What the engine holds on the GPU outside torch's allocator: its weights (about the plan's size) and
        # the activation memory its context allocated; `bench` adds this to torch's CUDA peak.
        self.device_memory_bytes = int(self._engine.device_memory_size_v2) + self.engine_path.stat().st_size
        min_shape, _opt_shape, max_shape = (tuple(d) for d in self._engine.get_tensor_profile_shape(INPUT_NAME, 0))
        self.min_batch, self.max_batch = int(min_shape[0]), int(max_shape[0])
        self._input_size = int(max_shape[2])
        if self.metadata and self.metadata.get("precision") in ("fp16", "fp32"):
            self.precision = self.metadata["precision"]
        else:
            self.precision = "fp16" if self._input_dtype == torch.float16 else "fp32"

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def input_size(self) -> int:
        return self._input_size

    @property
    def input_dtype(self) -> torch.dtype:
        return self._input_dtype

    def __repr__(self) -> str:
        return (f"TensorRTRunner({self.engine_path.name!r}, device={str(self._device)!r}, precision={self.precision}, "
                f"batch {self.min_batch}..{self.max_batch}, input {self._input_size}, TensorRT {self.trt_version})")

    def infer(self, images: torch.Tensor) -> RawOutputs:
        """One engine execution: ``min_batch <= B`` after padding, ``B <= max_batch``."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        s = self._input_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"images must be [B,3,{s},{s}], got {list(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")
        batch = images.shape[0]
        if batch == 0:
            raise ValueError("empty batch")
        if batch > self.max_batch:
            return self(images)  # Runner.__call__ splits into chunks of max_batch
        x = images.to(device=self._device, dtype=self._input_dtype).contiguous()
        if batch < self.min_batch:
            x = torch.cat([x, x.new_zeros((self.min_batch - batch, 3, s, s))])

        with torch.cuda.device(self._device):
            stream = torch.cuda.current_stream(self._device)
            if not self._context.set_input_shape(INPUT_NAME, tuple(x.shape)):
                raise RunnerError(f"TensorRT rejected input shape {list(x.shape)}")
            self._context.set_tensor_address(INPUT_NAME, x.data_ptr())
            outputs = {}
            for tensor_name, dtype in self._output_dtypes.items():
                shape = tuple(self._context.get_tensor_shape(tensor_name))
                if any(d < 0 for d in shape):
                    raise RunnerError(f"output {tensor_name!r} has an unresolved shape {list(shape)}")
                out = torch.empty(shape, dtype=dtype, device=self._device)
                self._context.set_tensor_address(tensor_name, out.data_ptr())
                outputs[tensor_name] = out
            if not self._context.execute_async_v3(stream.cuda_stream):
                raise RunnerError(f"TensorRT execution of {self.engine_path.name} failed (see the log above)")
        # x and the outputs were allocated on this stream: the caching allocator will not reuse
        # their memory before the queued execution, so no synchronisation is needed here.

        def finish(tensor_name: str) -> torch.Tensor:
            t = outputs[tensor_name]
            if tensor_name != "priors" and t.shape[0] != batch:
                t = t[:batch]
            return t if t.dtype == torch.float32 else t.float()

        return RawOutputs(*(finish(n) for n in OUTPUT_NAMES))
