"""Run an exported YOLACT ONNX model with ONNX Runtime behind the :class:`~trt_yolact.runners.Runner` interface.

CPU by default. With onnxruntime-gpu installed, ``device="cuda"`` uses the CUDA execution provider (or
TensorRT's, when listed in ``providers``) with IO binding: ONNX Runtime reads the torch CUDA input and
writes into torch CUDA tensors, so nothing goes through host memory.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import first_line as _first_line
from .export import INPUT_NAME, RAW_OUTPUT_NAMES, ExportError, parse_metadata
from .runners import PRECISIONS, Runner, RunnerError
from .structures import RawOutputs

ProviderSpec = str | tuple[str, dict[str, Any]]
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}
_TORCH_TYPES = {np.float32: torch.float32, np.float16: torch.float16, np.int32: torch.int32,
                np.int64: torch.int64, np.bool_: torch.bool}  # fmt: skip


def _provider_name(spec: ProviderSpec) -> str:
    return spec if isinstance(spec, str) else spec[0]


class OnnxRuntimeRunner(Runner):
    """Runner over an ONNX export of :mod:`trt_yolact.export`.

    ``providers``: ONNX Runtime execution providers in priority order (names, or ``(name, options)``);
    None picks CPU for ``device="cpu"`` and CUDA (+ CPU fallback) for a CUDA device. ``threads``: intra-op
    threads of the CPU provider (None: ONNX Runtime's default). The config, precision and input size come
    from the export's metadata (:attr:`metadata`, :attr:`config`).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        providers: Sequence[ProviderSpec] | None = None,
        device: str | torch.device = "cpu",
        threads: int | None = None,
    ):
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise RunnerError(f"ONNX model not found: {self.onnx_path}")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RunnerError(f"onnxruntime is not installed ({exc}); pip install onnxruntime") from None
        self._device = torch.device(device)
        if self._device.type not in ("cpu", "cuda"):
            raise RunnerError(f"device must be cpu or cuda, got {str(device)!r}")
        available = ort.get_available_providers()
        if providers is None:
            providers = ["CPUExecutionProvider"] if self._device.type == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]
        providers = list(providers)
        missing = [_provider_name(p) for p in providers if _provider_name(p) not in available]
        if missing:
            hint = " (GPU providers need the onnxruntime-gpu package)" if set(missing) & set(_GPU_PROVIDERS) else ""
            raise RunnerError(f"ONNX Runtime providers {missing} are not available here{hint}; available: {available}")
        uses_gpu = any(_provider_name(p) in _GPU_PROVIDERS for p in providers)
        if self._device.type == "cuda":
            if not uses_gpu:
                raise RunnerError("device cuda needs the CUDAExecutionProvider or TensorrtExecutionProvider")
            if not torch.cuda.is_available():
                raise RunnerError("CUDA was requested but this torch sees no GPU: use device='cpu'")
            if self._device.index is None:
                self._device = torch.device("cuda", torch.cuda.current_device())
            providers = [
                (p, {"device_id": self._device.index}) if isinstance(p, str) and p in _GPU_PROVIDERS else p
                for p in providers
            ]
        elif uses_gpu:
            raise RunnerError(f"GPU providers {providers} need device='cuda'")

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: shape-merge warnings are noise here
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        # ORT's idle worker threads spin by default; pre- and post-processing run in torch on the same
        # cores right after each inference and would be slowed by them (measured: post-processing ~2x).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - corrupt file, unsupported op, ...: one line
            raise RunnerError(f"{self.onnx_path} is not a loadable ONNX model: {_first_line(exc)}") from None

        try:
            self.metadata: dict[str, Any] = parse_metadata(self.session.get_modelmeta().custom_metadata_map)
        except ExportError as exc:
            raise RunnerError(f"{self.onnx_path}: {exc}") from None
        self.config = self.metadata.get("config")
        self.postprocess = self.metadata.get("postprocess", "none")

        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != [INPUT_NAME]:
            raise RunnerError(f"{self.onnx_path.name} must have one input {INPUT_NAME!r}, has {[i.name for i in inputs]}")
        shape = inputs[0].shape
        if len(shape) != 4:
            raise RunnerError(f"input {INPUT_NAME!r} must be [B,3,S,S], has shape {shape}")
        self._input_dtype = _NUMPY_TYPES.get(inputs[0].type)
        if self._input_dtype not in (np.float32, np.float16):
            raise RunnerError(f"input {INPUT_NAME!r} must be float32 or float16, is {inputs[0].type}")
        size = self.metadata.get("input_size", shape[2])
        if not isinstance(size, int) or size < 1:
            raise RunnerError(f"cannot tell the input size of {self.onnx_path.name} (input shape {shape})")
        self._input_size = size
        # A static batch N: bigger batches are split (Runner.__call__), smaller ones padded (infer).
        self.max_batch = shape[0] if isinstance(shape[0], int) else None
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self._output_meta = {o.name: (o.shape, _NUMPY_TYPES.get(o.type)) for o in self.session.get_outputs()}
        precision = self.metadata.get("precision")
        self.precision = precision if precision in PRECISIONS else ("fp16" if self._input_dtype == np.float16 else "fp32")
        self.providers = self.session.get_providers()

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def input_size(self) -> int:
        return self._input_size

    def __repr__(self) -> str:
        return (f"OnnxRuntimeRunner({self.onnx_path.name!r}, device={str(self._device)!r}, precision={self.precision}, "
                f"postprocess={self.postprocess}, providers={self.providers})")  # fmt: skip

    # ---------------------------------------------------------------------------------------- running
    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        s = self._input_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s) or images.shape[0] == 0:
            raise ValueError(f"images must be [B,3,{s},{s}] with B >= 1, got {list(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")

    def run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every output of the model by name, as torch tensors on :attr:`device` (float outputs float32).

        Works for raw exports and for ``--postprocess graph`` exports alike.
        """
        self._check_images(images)
        batch = int(images.shape[0])
        if self.max_batch is not None and batch > self.max_batch:
            raise ValueError(f"batch {batch} exceeds the model's fixed batch {self.max_batch}; call the runner itself to split it")
        if self.max_batch is not None and batch < self.max_batch:  # fixed-batch export: pad
            images = torch.cat([images, images.new_zeros((self.max_batch - batch, *images.shape[1:]))])
        if self._device.type == "cuda":
            outputs = self._run_cuda(images)
        else:
            x = images.detach().to("cpu").numpy().astype(self._input_dtype, copy=False)
            values = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(x)})
            outputs = {name: torch.from_numpy(np.asarray(v)) for name, v in zip(self.output_names, values)}
        result = {}
        for name, tensor in outputs.items():
            if tensor.dtype == torch.float16:
                tensor = tensor.float()
            if name != "priors" and self.max_batch is not None and tensor.dim() > 0 and tensor.shape[0] != batch:
                tensor = tensor[:batch]
            result[name] = tensor
        return result

    def _run_cuda(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """IO binding on torch CUDA memory; outputs with unknown shapes fall back to ORT allocation."""
        x = images.detach().to(device=self._device, dtype=_TORCH_TYPES[self._input_dtype]).contiguous()
        batch = int(x.shape[0])
        binding = self.session.io_binding()
        index = self._device.index
        binding.bind_input(INPUT_NAME, "cuda", index, self._input_dtype, list(x.shape), x.data_ptr())
        outputs: dict[str, torch.Tensor] = {}
        for name in self.output_names:
            shape, dtype = self._output_meta[name]
            dims = [batch if (i == 0 and name != "priors" and not isinstance(d, int)) else d for i, d in enumerate(shape)]
            if dtype is None or not all(isinstance(d, int) for d in dims):
                binding.bind_output(name, "cuda", index)
                continue
            out = torch.empty(dims, dtype=_TORCH_TYPES[dtype], device=self._device)
            binding.bind_output(name, "cuda", index, dtype, dims, out.data_ptr())
            outputs[name] = out
        # ONNX Runtime works on its own stream: the input must be ready before it starts.
        torch.cuda.current_stream(self._device).synchronize()
        self.session.run_with_iobinding(binding)
        if len(outputs) < len(self.output_names):
            for name, value in zip(self.output_names, binding.get_outputs()):
                if name not in outputs:
                    outputs[name] = torch.from_numpy(value.numpy()).to(self._device)
        return {name: outputs[name] for name in self.output_names}

    def infer(self, images: torch.Tensor) -> RawOutputs:
        if self.output_names != RAW_OUTPUT_NAMES:
            raise RunnerError(
                f"{self.onnx_path.name} has outputs {list(self.output_names)}, not the raw outputs "
                f"{list(RAW_OUTPUT_NAMES)} (postprocess={self.postprocess}); use runner.run(images) for its outputs"
            )
        out = self.run(images)
        return RawOutputs(*(out[name].float() for name in RAW_OUTPUT_NAMES))
