"""Run an exported YOLACT ONNX model with ONNX Runtime.

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

from ..config import PRECISIONS
from ..deploy.onnx_format import HOST_OUTPUTS, INPUT_NAME, NETWORK_OUTPUT_NAMES, parse_metadata, prior_boxes
from ..errors import ExportError, RunnerError, first_line
from ..structures import OUTPUT_NAMES, UNBATCHED_OUTPUTS
from .base import Runner, resolve_device

ProviderSpec = str | tuple[str, dict[str, Any]]
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}
_TORCH_TYPES = {
    np.float32: torch.float32,
    np.float16: torch.float16,
    np.int32: torch.int32,
    np.int64: torch.int64,
    np.bool_: torch.bool,
}


def _provider_name(spec: ProviderSpec) -> str:
    return spec if isinstance(spec, str) else spec[0]


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RunnerError(f"onnxruntime is not installed ({exc}); pip install onnxruntime") from None
    return ort


def choose_providers(
    providers: Sequence[ProviderSpec] | None, device: torch.device, available: Sequence[str]
) -> list[ProviderSpec]:
    """The execution providers for ``device`` (CPU, or CUDA with a CPU fallback when ``providers`` is None),
    with the GPU ones pinned to the device's index; an unusable choice fails with the reason."""
    if providers is None:
        providers = (
            ["CPUExecutionProvider"] if device.type == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
    providers = list(providers)
    missing = [_provider_name(p) for p in providers if _provider_name(p) not in available]
    if missing:
        hint = " (GPU providers need the onnxruntime-gpu package)" if set(missing) & set(_GPU_PROVIDERS) else ""
        raise RunnerError(
            f"ONNX Runtime providers {missing} are not available here{hint}; available: {list(available)}"
        )
    uses_gpu = any(_provider_name(p) in _GPU_PROVIDERS for p in providers)
    if device.type == "cpu":
        if uses_gpu:
            raise RunnerError(f"GPU providers {providers} need device='cuda'")
        return providers
    if not uses_gpu:
        raise RunnerError("device cuda needs the CUDAExecutionProvider or TensorrtExecutionProvider")
    return [(p, {"device_id": device.index}) if isinstance(p, str) and p in _GPU_PROVIDERS else p for p in providers]


def cuda_provider_available() -> bool:
    """Whether this ONNX Runtime can run on a CUDA GPU (onnxruntime-gpu) and torch sees one."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()


class OnnxRuntimeRunner(Runner):
    """Runner over an ONNX export (:mod:`trt_yolact.deploy.onnx_format`).

    ``providers``: ONNX Runtime execution providers in priority order (names, or ``(name, options)``); None
    picks CPU for ``device="cpu"`` and CUDA (+ CPU fallback) for a CUDA device. ``threads``: intra-op threads
    of the CPU provider (None: ONNX Runtime's default). The config, precision and input size come from the
    export's metadata (:attr:`metadata`, :attr:`config`); a fixed-batch export sets the batch profile. The
    ``priors`` of a raw export are made from its metadata (they are no graph output).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        providers: Sequence[ProviderSpec] | None = None,
        device: str | torch.device = "cpu",
        threads: int | None = None,
    ):
        super().__init__()
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise RunnerError(f"ONNX model not found: {self.onnx_path}")
        ort = _import_onnxruntime()
        self._device = resolve_device(device)
        if self._device.type not in ("cpu", "cuda"):
            raise RunnerError(f"device must be cpu or cuda, got {str(device)!r}")
        if self._device.type == "cuda" and self._device.index is None:
            self._device = torch.device("cuda", torch.cuda.current_device())
        self._providers = choose_providers(providers, self._device, ort.get_available_providers())
        self._threads = threads
        self.activate()

    def __repr__(self) -> str:
        return (
            f"OnnxRuntimeRunner({self.onnx_path.name!r}, device={str(self._device)!r}, precision={self.precision}, "
            f"postprocess={self.postprocess}, providers={self.providers})"
        )

    def _activate(self) -> None:
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: shape-merge warnings are noise here
        if self._threads is not None:
            options.intra_op_num_threads = int(self._threads)
        # Idle worker threads spin by default and would slow the pre- and post-processing that run on the
        # same cores right after each inference.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), options, providers=self._providers)
        except Exception as exc:  # noqa: BLE001 - corrupt file, unsupported op, ...: one line
            raise RunnerError(f"{self.onnx_path} is not a loadable ONNX model: {first_line(exc)}") from None
        self._read_interface()

    def _deactivate(self) -> None:
        del self.session

    def _read_interface(self) -> None:
        """Config, precision, input size, batch profile and outputs, from the session and its metadata."""
        try:
            self.metadata: dict[str, Any] = parse_metadata(self.session.get_modelmeta().custom_metadata_map)
        except ExportError as exc:
            raise RunnerError(f"{self.onnx_path}: {exc}") from None
        self.config = self.metadata.get("config")
        self.postprocess = self.metadata.get("postprocess", "none")
        self.postprocess_config = self.metadata.get("postprocess_config")
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != [INPUT_NAME]:
            raise RunnerError(
                f"{self.onnx_path.name} must have one input {INPUT_NAME!r}, has {[i.name for i in inputs]}"
            )
        shape = inputs[0].shape
        if len(shape) != 4:
            raise RunnerError(f"input {INPUT_NAME!r} must be [B,3,S,S], has shape {shape}")
        numpy_dtype = _NUMPY_TYPES.get(inputs[0].type)
        if numpy_dtype not in (np.float32, np.float16):
            raise RunnerError(f"input {INPUT_NAME!r} must be float32 or float16, is {inputs[0].type}")
        self.input_dtype = _TORCH_TYPES[numpy_dtype]
        size = self.metadata.get("input_size", shape[2])
        if not isinstance(size, int) or size < 1:
            raise RunnerError(f"cannot tell the input size of {self.onnx_path.name} (input shape {shape})")
        self._input_size = size
        if isinstance(shape[0], int):  # a fixed-batch export: smaller batches are padded, larger ones split
            self.min_batch = self.max_batch = shape[0]
        self._graph_outputs = tuple(o.name for o in self.session.get_outputs())
        self._output_meta = {o.name: (o.shape, _NUMPY_TYPES.get(o.type)) for o in self.session.get_outputs()}
        self._host_outputs = self._made_on_host()
        self.output_names = OUTPUT_NAMES if self._host_outputs else self._graph_outputs
        precision = self.metadata.get("precision")
        self.precision = precision if precision in PRECISIONS else ("fp16" if numpy_dtype == np.float16 else "fp32")
        self.providers = self.session.get_providers()

    def _made_on_host(self) -> dict[str, torch.Tensor]:
        """The raw outputs a raw export leaves to the host (its priors, from the metadata), or {}."""
        if self._graph_outputs != NETWORK_OUTPUT_NAMES:  # graph post-processing, or an export with priors
            return {}
        if self.config is None or "prior_grid" not in self.metadata:
            raise RunnerError(f"{self.onnx_path.name} has no priors output and no config/prior_grid to make them")
        priors = torch.from_numpy(np.array(prior_boxes(self.config, self.metadata["prior_grid"])))
        return {HOST_OUTPUTS[0]: priors.to(self._device)}

    def _infer(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._device.type == "cuda":
            outputs = self._infer_cuda(images)
        else:
            values = self.session.run(None, {INPUT_NAME: images.detach().numpy()})
            outputs = {name: torch.from_numpy(np.asarray(v)) for name, v in zip(self._graph_outputs, values)}
        outputs.update(self._host_outputs)
        return {name: outputs[name] for name in self.output_names}

    def _infer_cuda(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """IO binding on torch CUDA memory; outputs with unknown shapes fall back to ORT allocation."""
        batch, index = int(images.shape[0]), self._device.index
        binding = self.session.io_binding()
        input_type = next(k for k, v in _TORCH_TYPES.items() if v == self.input_dtype)
        binding.bind_input(INPUT_NAME, "cuda", index, input_type, list(images.shape), images.data_ptr())
        outputs: dict[str, torch.Tensor] = {}
        for name in self._graph_outputs:
            shape, dtype = self._output_meta[name]
            dims = [
                batch if (i == 0 and name not in UNBATCHED_OUTPUTS and not isinstance(d, int)) else d
                for i, d in enumerate(shape)
            ]
            if dtype is None or not all(isinstance(d, int) for d in dims):
                binding.bind_output(name, "cuda", index)
                continue
            out = torch.empty(dims, dtype=_TORCH_TYPES[dtype], device=self._device)
            binding.bind_output(name, "cuda", index, dtype, dims, out.data_ptr())
            outputs[name] = out
        # ONNX Runtime works on its own stream: the input must be ready before it starts.
        torch.cuda.current_stream(self._device).synchronize()
        self.session.run_with_iobinding(binding)
        for name, value in zip(self._graph_outputs, binding.get_outputs()):
            if name not in outputs:
                outputs[name] = torch.from_numpy(value.numpy()).to(self._device)
        return outputs
