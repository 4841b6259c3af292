"""Loading checkpoint files safely, and saying what a refused file is.

Every checkpoint is read with ``torch.load(..., weights_only=True)``: tensors and plain containers only, so a
file cannot run code when it is opened. When a file is refused, the reason is worked out from its bytes
(read, never executed: :mod:`pickletools` only parses opcodes): empty, text, a zip archive that is no
checkpoint, a truncated checkpoint, or a pickle that would import something.
"""

from __future__ import annotations

import io
import os
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, first_line

_ZIP_MAGIC = b"PK\x03\x04"
# Files people give by mistake, by their first bytes.
_OTHER_KINDS = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"ftrt": "a TensorRT engine",
}
_SAFE_LOAD_NOTE = "checkpoints are loaded with weights_only=True, so they may hold only tensors and plain containers"


def load_tensors(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file it refuses is a :class:`CheckpointError`
    saying what the file is and why it was refused."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's note about the pickle protocol is not the user's concern
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every refusal becomes one line with its reason
        raise CheckpointError(f"{path} is not a usable PyTorch checkpoint: {refusal_reason(path, exc)}") from None


def refusal_reason(path: Path, exc: BaseException) -> str:
    """Why ``torch.load`` refused ``path``, from the file's bytes and the error."""
    data = path.read_bytes()
    if not data:
        return "the file is empty"
    for magic, kind in _OTHER_KINDS.items():
        if data.startswith(magic):
            return f"it is {kind}"
    if data[:1] == b"\x08" and data[2:3] == b"\x12":  # ONNX's ModelProto: ir_version, then producer_name
        return "it is an ONNX model (predict, eval and demo run .onnx files named so)"
    if data.startswith(_ZIP_MAGIC):
        return _zip_reason(data, exc)
    if data[:1] == b"\x80":  # a pickle (protocol 2 or later) outside torch's zip format
        return _pickle_reason(data, exc)
    if _looks_like_text(data):
        return "it is a text file"
    return f"it is neither a zip archive nor a pickle ({first_line(_without_advice(exc), 150)})"


def _zip_reason(data: bytes, exc: BaseException) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") or name == "data.pkl"]
            if not pickles:
                return "it is a zip archive, but holds no PyTorch checkpoint (no data.pkl)"
            return _pickle_reason(archive.read(pickles[0]), exc)
    except zipfile.BadZipFile:
        return "it is truncated or damaged (its zip archive is incomplete)"


def _pickle_reason(data: bytes, exc: BaseException) -> str:
    imports = [name for name in pickle_imports(data) if not name.startswith(("torch.", "collections."))]
    if imports:
        return f"refused: it would import {', '.join(sorted(set(imports))[:3])}; {_SAFE_LOAD_NOTE}"
    return f"refused: {first_line(_without_advice(exc), 150)}; {_SAFE_LOAD_NOTE}"


def pickle_imports(data: bytes) -> list[str]:
    """The ``module.name`` globals a pickle would import, read from its opcodes without running it."""
    names, strings = [], []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - a damaged pickle: report what was read before the damage
        pass
    return names


def _looks_like_text(data: bytes) -> bool:
    head = data[:4096]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def _without_advice(exc: BaseException) -> str:
    """torch's refusal without its advice to load the file with ``weights_only=False``: the part after
    "WeightsUnpickler error:", else the message itself."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        return text.split(marker, 1)[1].strip()
    return text if "weights_only" not in text else "its contents are not plain tensors"
