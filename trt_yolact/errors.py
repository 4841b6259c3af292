"""Errors a user can cause, under one base class (commands report them with ``command_line.run_command``).

Every command catches :class:`TrtYolactError` (and ``OSError``) and prints its message; any other exception
is a bug and keeps its traceback. Each class also derives from the built-in type it replaces, so that code
catching ``ValueError`` or ``ImportError`` keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class TrtYolactError(Exception):
    """Base of every error a user can cause: bad input, a missing backend, an artifact that cannot be used."""


class UsageError(TrtYolactError, ValueError):
    """An option or argument out of its allowed range."""


class ConfigError(TrtYolactError, ValueError):
    """A configuration that cannot describe a YOLACT model."""


class CheckpointError(TrtYolactError, ValueError):
    """A checkpoint that cannot be read or does not fit its config."""


class DatasetError(TrtYolactError, ValueError):
    """Annotations or images that do not form a usable COCO-format dataset."""


class ImageError(TrtYolactError, ValueError):
    """An image that cannot be read or fed to the network."""


class FuseError(TrtYolactError, ValueError):
    """A model or checkpoint that cannot be fused."""


class PruneError(TrtYolactError, ValueError):
    """Pruning options or a model that cannot be pruned."""


class TrainingError(TrtYolactError, ValueError):
    """Bad training input, reported before training starts."""


class ExportError(TrtYolactError, RuntimeError):
    """A model that cannot be exported or converted to ONNX."""


class CalibrationError(TrtYolactError, ValueError):
    """Calibration images, settings or a calibration cache that INT8 quantization cannot use."""


class PrecisionError(TrtYolactError, ValueError):
    """A precision that cannot be built from this ONNX with this TensorRT version."""


class EngineBuildError(TrtYolactError, RuntimeError):
    """An ONNX model that could not be turned into a TensorRT engine."""


class TensorRTUnavailable(TrtYolactError, ImportError):
    """The ``tensorrt`` package cannot be imported (not installed, libnvinfer missing) or is unsupported."""


class RunnerError(TrtYolactError, RuntimeError):
    """A runner that cannot be opened here, or inputs it cannot run."""


class BackendUnavailable(RunnerError):
    """A backend or precision that cannot run on this machine; the message says why."""


class DemoError(TrtYolactError, ValueError):
    """A video source, output or demo argument the demo cannot work with."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when empty), at most ``limit`` characters."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


class OutOfMemory(TrtYolactError, MemoryError):
    """Work that needs more memory than this machine can give; the message says what to lower."""


@contextmanager
def memory_needed_for(what: str, advice: str) -> Iterator[None]:
    """Inside, running out of memory (``MemoryError``, or torch's failed allocation, which is a
    ``RuntimeError``) is an :class:`OutOfMemory` saying ``what`` needed it and ``advice``."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, TrtYolactError) or not (isinstance(exc, MemoryError) or _allocation_failed(exc)):
            raise
        raise OutOfMemory(f"not enough memory for {what}: {advice}") from None


def _allocation_failed(exc: RuntimeError) -> bool:
    text = str(exc)
    return "can't allocate memory" in text or "out of memory" in text.lower()
