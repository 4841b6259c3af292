"""The runner interface every backend implements.

A runner takes a normalised ``[B,3,S,S]`` float batch and returns :class:`RawOutputs` (or, for an export
with the post-processing in the graph, its named outputs) on its own device, in float32, so one
post-processing serves all backends. The base class validates the input (type, shape, dtype), moves and
casts it to what the artifact takes, splits a batch larger than the artifact's batch profile into chunks and
pads one smaller than its minimum; a subclass implements :meth:`Runner._infer` for one chunk.

Runners open their artifact when made, and release it (session, engine, execution context) when
deactivated; ``with runner:`` deactivates at the end, :meth:`Runner.activate` opens it again.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from ..config import PostprocessConfig, YolactConfig
from ..errors import RunnerError, UsageError
from ..structures import OUTPUT_NAMES, UNBATCHED_OUTPUTS, RawOutputs


class Runner(ABC):
    backend: ClassVar[str] = ""
    precision: str = "fp32"
    min_batch: int = 1
    max_batch: int | None = None  # None: any batch size in one call
    input_dtype: torch.dtype = torch.float32
    output_names: tuple[str, ...] = OUTPUT_NAMES
    config: YolactConfig | None = None  # the model config the artifact records, when it records one
    # "graph": the artifact has the post-processing inside (outputs GRAPH_OUTPUT_NAMES, not the raw ones),
    # exported with ``postprocess_config`` (None: the artifact does not record it)
    postprocess: str = "none"
    postprocess_config: PostprocessConfig | None = None

    def __init__(self) -> None:
        self._active = False
        self._device = torch.device("cpu")  # subclasses set both when they open their artifact
        self._input_size = 0

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def input_size(self) -> int:
        """S of the ``[B,3,S,S]`` input."""
        return self._input_size

    # ---- lifecycle
    def activate(self) -> Runner:
        """Open the artifact (a no-op when already open)."""
        if not self._active:
            self._activate()
            self._active = True
        return self

    def deactivate(self) -> None:
        """Release what the artifact holds (a no-op when already released)."""
        if self._active:
            self._deactivate()
            self._active = False

    @property
    def is_active(self) -> bool:
        return self._active

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc_info: Any) -> None:
        self.deactivate()

    def _activate(self) -> None:  # noqa: B027 - a hook: runners without a session have nothing to load
        """Load the session or engine; subclasses that hold one override this."""

    def _deactivate(self) -> None:  # noqa: B027 - a hook, as _activate
        """Free the session or engine; subclasses that hold one override this."""

    # ---- running
    def __call__(self, images: torch.Tensor) -> RawOutputs:
        """Raw outputs of a batch of any size."""
        if tuple(self.output_names) != OUTPUT_NAMES:
            raise RunnerError(
                f"{self} has outputs {list(self.output_names)}, not the raw outputs {list(OUTPUT_NAMES)}; "
                "use runner.run(images) for its outputs"
            )
        outputs = self.run(images)
        return RawOutputs(*(outputs[name] for name in OUTPUT_NAMES))

    def run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every output by name for a batch of any size, on :attr:`device`, floating outputs in float32."""
        images = self._validated(images)
        step = self.max_batch or images.shape[0]
        chunks = [self._run_chunk(part) for part in torch.split(images, step)]
        if len(chunks) == 1:
            return chunks[0]
        return {
            name: chunks[0][name] if name in UNBATCHED_OUTPUTS else torch.cat([c[name] for c in chunks])
            for name in chunks[0]
        }

    @abstractmethod
    def _infer(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every output of one batch within the batch profile; ``images`` is on :attr:`device`, contiguous,
        of :attr:`input_dtype`."""

    def synchronize(self) -> None:
        """Wait for queued device work (for honest timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _validated(self, images: Any) -> torch.Tensor:
        if not self._active:
            raise RunnerError(f"{self} is not active: call activate() (or use it in a with block) first")
        if not isinstance(images, torch.Tensor):
            raise RunnerError(f"images must be a torch.Tensor, got {type(images).__name__}")
        size = self.input_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size) or images.shape[0] == 0:
            raise RunnerError(f"images must be [B,3,{size},{size}] with B >= 1, got {list(images.shape)}")
        if not images.is_floating_point():
            raise RunnerError(f"images must be a floating-point tensor, got {images.dtype}")
        return images.to(device=self.device, dtype=self.input_dtype).contiguous()

    def _run_chunk(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = int(images.shape[0])
        if batch < self.min_batch:  # pad up to the profile's minimum; the padding is cut off again below
            images = torch.cat([images, images.new_zeros((self.min_batch - batch, *images.shape[1:]))])
        outputs = self._infer(images)
        result = {}
        for name, tensor in outputs.items():
            if name not in UNBATCHED_OUTPUTS and tensor.dim() > 0 and tensor.shape[0] != batch:
                tensor = tensor[:batch]
            result[name] = tensor.float() if tensor.is_floating_point() and tensor.dtype != torch.float32 else tensor
        return result


# The devices runners run on, as --device spells them (torch knows more: mps, meta, ... run nothing here).
DEVICE_CHOICES = "cpu, cuda or cuda:N"


def parse_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, or a :class:`UsageError` naming the devices every command accepts."""
    text = str(device) if isinstance(device, torch.device) else device
    if not isinstance(text, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise UsageError(f"device must be {DEVICE_CHOICES}, got {text!r}")
    return torch.device(text)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or the GPU when torch sees one and the CPU otherwise; an unusable CUDA request fails."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = parse_device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunnerError("CUDA was requested but this torch sees no GPU: use --device cpu")
    return device
