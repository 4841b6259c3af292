"""Checkpoints: reading released YOLACT files and our own, choosing the config, strict loading.

Our own checkpoints are a dict ``{"model": state_dict, "config": config dict, ...}`` so they carry their
config; released files are plain state dicts whose config follows from the file name.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..config import DEFAULT_MODEL, EMBEDDED_MODELS, YolactConfig, get_config, infer_config_name
from ..errors import CheckpointError, ConfigError
from ..files import atomic_write_bytes
from .fuse import fuse_model, is_fused_state_dict
from .safe_load import load_tensors
from .yolact import Yolact


@dataclass(frozen=True)
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    config: YolactConfig | None  # embedded in the file, if it was one of ours
    path: Path
    extra: dict[str, Any]


def embedded_model_path(name: str) -> Path:
    return Path(str(resources.files("trt_yolact") / "weights" / f"{name}.pth"))


def model_name(weights: str | os.PathLike | None) -> str:
    """How reports name a model: the file stem, or the embedded name (None: the default model)."""
    if weights is None:
        return DEFAULT_MODEL
    return Path(weights).stem if Path(weights).suffix else str(weights)


def resolve_weights(weights: str | os.PathLike | None) -> Path:
    """A checkpoint path from a path or an embedded model name (``yolact_shapes``); None -> the default."""
    name = DEFAULT_MODEL if weights is None else os.fspath(weights)
    hint = f" (embedded models: {', '.join(EMBEDDED_MODELS)})"
    if not name:
        raise CheckpointError(f"no checkpoint given (an empty name): name a checkpoint file or an embedded model{hint}")
    if name in EMBEDDED_MODELS:
        path = embedded_model_path(name)
        if not path.is_file():
            raise CheckpointError(f"embedded model {name!r} is not shipped in this installation ({path})")
        return path
    path = Path(name)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist{hint}")
    return path


# Deployed files, which a command that needs a checkpoint names instead of failing to unpickle them.
DEPLOYED_KINDS = {".onnx": "an ONNX export", ".engine": "a TensorRT engine", ".plan": "a TensorRT engine"}


def read_checkpoint(weights: str | os.PathLike | None) -> Checkpoint:
    """Load a checkpoint file safely (``weights_only=True``) into a float32 state dict."""
    path = resolve_weights(weights)
    kind = DEPLOYED_KINDS.get(path.suffix.lower())
    if kind is not None:
        raise CheckpointError(
            f"{path} is {kind}, not a checkpoint: this step needs the checkpoint it was made from "
            "(predict, eval and demo run .onnx and .engine files as they are)"
        )
    data = load_tensors(path)
    config = None
    extra: dict[str, Any] = {}
    if isinstance(data, Mapping) and "model" in data and isinstance(data["model"], Mapping):
        extra = {k: v for k, v in data.items() if k not in ("model", "config")}
        if data.get("config") is not None:
            if not isinstance(data["config"], Mapping):
                kind = type(data["config"]).__name__
                raise CheckpointError(f"{path} is damaged or was edited: its config is a {kind}, not a mapping")
            config = YolactConfig.from_dict(dict(data["config"]))
        data = data["model"]
    if (
        not isinstance(data, Mapping)
        or not data
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items())
    ):
        raise CheckpointError(f"{path} does not hold a YOLACT state dict (a mapping of names to tensors)")
    state_dict = {k: (v.float() if v.is_floating_point() else v) for k, v in data.items()}
    return Checkpoint(state_dict, config, path, extra)


def choose_config(checkpoint: Checkpoint, config: str | os.PathLike | YolactConfig | None) -> YolactConfig:
    """Explicit config > config stored in the checkpoint > config inferred from the file name."""
    if isinstance(config, YolactConfig):
        return config
    if config is not None:
        return get_config(config)
    if checkpoint.config is not None:
        return checkpoint.config
    name = infer_config_name(checkpoint.path)
    if name is None:
        raise ConfigError(
            f"cannot tell the config of {checkpoint.path.name}: name it with --config "
            "(an official name like yolact_base, or a .yaml/.json file)"
        )
    return get_config(name)


def clean_state_dict(state_dict: Mapping[str, torch.Tensor], config: YolactConfig) -> dict[str, torch.Tensor]:
    """Drop what the original loader drops: torchvision-style ``backbone.layerN`` keys and FPN
    downsample layers beyond the config's count (released files carry a stray ``downsample_layers.2``)."""
    cleaned = {}
    for key, value in state_dict.items():
        if key.startswith("backbone.layer") and not key.startswith("backbone.layers"):
            continue
        index = key.split(".")[2] if key.startswith("fpn.downsample_layers.") else ""
        if index.isascii() and index.isdigit() and int(index) >= config.fpn_downsample:
            continue  # any other name is left for the key check to report
        cleaned[key] = value
    return cleaned


def config_advice(checkpoint: Checkpoint, config: str | os.PathLike | YolactConfig | None) -> str:
    """What to do when the weights do not fit the config :func:`choose_config` picked, by where it came from:
    another --config can only help when the file does not carry its own."""
    if config is not None:
        return "the --config given does not describe these weights: pass the one they were trained with"
    if checkpoint.config is not None:
        return "the config stored in the file does not fit its own weights: the file is damaged or was edited"
    return "the config its file name suggests does not fit: name the right one with --config"


def _describe_mismatch(
    expected: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    config: YolactConfig,
    source: str,
    advice: str,
) -> str | None:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {list(given[k].shape)} vs model {list(expected[k].shape)}"
        for k in set(expected) & set(given)
        if given[k].shape != expected[k].shape
    )
    if not (missing or unexpected or misshaped):
        return None

    def listing(title: str, items: list[str]) -> str:
        shown = "".join(f"\n    {item}" for item in items[:12])
        more = f"\n    ... and {len(items) - 12} more" if len(items) > 12 else ""
        return f"\n  {title} ({len(items)}):{shown}{more}" if items else ""

    return (
        f"{source} does not fit config {config.name!r}: {advice}."
        + listing("missing keys", missing)
        + listing("unexpected keys", unexpected)
        + listing("misshaped keys", misshaped)
    )


def build_model(
    state_dict: Mapping[str, torch.Tensor],
    config: YolactConfig,
    source: str = "checkpoint",
    advice: str = "pass the config the weights were trained with (--config)",
) -> Yolact:
    """Build a model whose internal widths follow ``state_dict`` and load it strictly (eval mode).
    Fused checkpoints (conv biases, no BN) are recognised and loaded into a fused model."""
    state_dict = clean_state_dict(state_dict, config)
    model = Yolact(config, state_dict)
    if is_fused_state_dict(state_dict):
        model = fuse_model(model, inplace=True)
    problem = _describe_mismatch(model.state_dict(), state_dict, config, source, advice)
    if problem:
        raise CheckpointError(problem)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint named by a ``--weights`` value (path or embedded name), with the config it runs with."""

    name: str  # for reports: the file stem or the embedded name
    path: Path
    config: YolactConfig
    fused: bool  # BN already folded into the convs
    extra: dict[str, Any]  # run metadata stored beside the weights (iteration, pruning settings, ...)
    advice: str = ""  # what to do when the weights do not fit the config (see config_advice)

    @classmethod
    def load(
        cls, weights: str | os.PathLike | None, config: str | os.PathLike | YolactConfig | None = None
    ) -> ModelSource:
        checkpoint = read_checkpoint(weights)
        fused = bool(checkpoint.extra.get("fused")) or is_fused_state_dict(checkpoint.state_dict)
        chosen, advice = choose_config(checkpoint, config), config_advice(checkpoint, config)
        return cls(model_name(weights), checkpoint.path, chosen, fused, checkpoint.extra, advice)

    @property
    def file_bytes(self) -> int:
        return self.path.stat().st_size

    def model(self) -> Yolact:
        """The model in eval mode on the CPU (the file is read again: sources stay small)."""
        return build_model(read_checkpoint(self.path).state_dict, self.config, str(self.path), self.advice)


def load_model(
    weights: str | os.PathLike | None = None,
    config: str | os.PathLike | YolactConfig | None = None,
    device: str | torch.device = "cpu",
) -> Yolact:
    """Checkpoint (path or embedded name) -> YOLACT in eval mode on ``device``."""
    checkpoint = read_checkpoint(weights)
    chosen = choose_config(checkpoint, config)
    model = build_model(checkpoint.state_dict, chosen, str(checkpoint.path), config_advice(checkpoint, config))
    return model.to(device)


def checkpoint_payload(model: Yolact, half: bool = False, **extra: Any) -> dict[str, Any]:
    """What our checkpoints hold: ``{"model": state dict on the CPU, "config": config dict, **extra}``.
    ``half`` stores floating tensors as fp16 (they load as fp32)."""
    state = {
        k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
        for k, v in model.state_dict().items()
    }
    return {"model": state, "config": model.config.to_dict(), **extra}


def serialize(payload: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_checkpoint(path: str | os.PathLike, model: Yolact, half: bool = False, **extra: Any) -> Path:
    """Write :func:`checkpoint_payload` atomically."""
    return atomic_write_bytes(path, serialize(checkpoint_payload(model, half, **extra)))


# Small run metadata carried from a checkpoint into its fused form (never optimizer state).
CARRIED_EXTRAS = ("iteration", "pruning")


def fused_checkpoint_payload(
    fused: Yolact, source_extra: dict[str, Any], half: bool = False, **extra: Any
) -> dict[str, Any]:
    """What a fused checkpoint holds: the model marked ``fused``, with the run metadata of the checkpoint it
    was made from."""
    carried = {k: source_extra[k] for k in CARRIED_EXTRAS if k in source_extra}
    return checkpoint_payload(fused, half, fused=True, **carried, **extra)


def save_fused_checkpoint(
    path: str | os.PathLike, fused: Yolact, source_extra: dict[str, Any], half: bool = False, **extra: Any
) -> Path:
    """Write :func:`fused_checkpoint_payload` atomically."""
    return atomic_write_bytes(path, serialize(fused_checkpoint_payload(fused, source_extra, half, **extra)))
