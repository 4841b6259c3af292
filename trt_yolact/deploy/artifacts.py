"""The one artifact chain: checkpoint -> fused checkpoint -> FP32 ONNX -> FP16 ONNX -> TensorRT engine.

Each artifact is made from the file before it, never from a model in memory, and only here: ``build``,
``export`` and opening a runner for a checkpoint all go through :class:`ArtifactChain`. An artifact is
reused when its file exists and records that it was made from a parent of the same content (sha256) with
the same options by the same trt_yolact version; otherwise it is made again. ONNX files record this in their
metadata, fused checkpoints beside their weights, engines in their sidecar. Every file is written whole
(atomically), so an interrupted chain leaves only complete artifacts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import PRECISIONS, PostprocessConfig, YolactConfig
from ..errors import CheckpointError, ExportError, PrecisionError, UsageError
from ..files import sha256_file, staged_folder
from ..model.checkpoint import ModelSource, build_model, read_checkpoint, save_fused_checkpoint
from ..model.fuse import fuse_model
from ..model.safe_load import load_tensors
from .onnx_export import DEFAULT_OPSET, export_onnx
from .onnx_format import read_onnx_metadata
from .onnx_fp16 import DEFAULT_KEEP_FP32_OPS, convert_fp16
from .tensorrt_build import BuildProfile, build_engine


@dataclass(frozen=True)
class ExportOptions:
    """How the chain makes its artifacts from a checkpoint."""

    fuse: bool = True  # fold BN into the convs first (the fused checkpoint artifact)
    opset: int = DEFAULT_OPSET
    simplify: bool = True
    batch: int | None = None  # a fixed batch size; None: dynamic batch

    def onnx_key(self, config: YolactConfig, postprocess: PostprocessConfig | None) -> str:
        """What shapes an ONNX export (the model config included: a --config override changes the input size
        and the priors), as the string it records to tell whether it can be reused."""
        settings = {"opset": self.opset, "simplify": self.simplify, "batch": self.batch, "config": config.to_dict()}
        return _key("onnx", **settings, postprocess=None if postprocess is None else asdict(postprocess))


def _key(step: str, **settings: Any) -> str:
    return json.dumps({"step": step, **settings}, sort_keys=True, default=str)


@dataclass(frozen=True)
class Artifact:
    """One file of the chain."""

    path: Path
    kind: str  # "checkpoint", "onnx" or "engine"
    precision: str  # "fp32" or "fp16"
    postprocess: str = "none"  # "graph": the post-processing is inside the ONNX
    reused: bool = False
    note: str = ""  # e.g. why an ONNX is not simplified, how long an engine took to build

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


class ArtifactChain:
    """Makes or reuses the artifacts of one checkpoint in ``folder`` (engines in ``engine_folder``).

    Files are named ``STEM[.postprocess][.fp16].onnx`` and ``STEM.fp16.engine``; ``STEM`` is ``stem`` when
    given, else the model's name with ``.fused`` when the exports are made from a fused checkpoint. In a
    cache (:meth:`cached`) the engine's name also carries its batch profile (``.b1-4-8``).
    """

    def __init__(
        self,
        source: ModelSource,
        folder: str | Path,
        engine_folder: str | Path | None = None,
        stem: str | None = None,
        options: ExportOptions = ExportOptions(),
    ):
        self.source, self.options = source, options
        self.folder = Path(folder)
        self.engine_folder = Path(engine_folder) if engine_folder is not None else self.folder
        self.stem = stem or f"{source.name}{'.fused' if options.fuse or source.fused else ''}"
        self.profile_in_engine_name = False  # a cache keeps one engine per batch profile side by side
        self._hashes: dict[Path, str] = {}

    @classmethod
    def cached(cls, source: ModelSource, folder: str | Path, options: ExportOptions = ExportOptions()) -> ArtifactChain:
        """A chain in a cache folder shared by many checkpoints: the stem carries the checkpoint's digest, so
        two checkpoints of the same name never replace each other's artifacts."""
        digest = sha256_file(source.path)
        fused = ".fused" if options.fuse or source.fused else ""
        chain = cls(source, folder, stem=f"{source.name}-{digest[:12]}{fused}", options=options)
        chain.profile_in_engine_name = True
        chain._hashes[source.path] = digest
        return chain

    def _sha256(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = sha256_file(path)
        return self._hashes[path]

    def checkpoint(self) -> Artifact:
        """The checkpoint the ONNX exports are made from: the source itself, or its fused form."""
        if not self.options.fuse or self.source.fused:
            return Artifact(self.source.path, "checkpoint", "fp32", reused=True)
        path = self.folder / f"{self.stem}.pth"
        key = _key("fuse")
        if path.is_file() and _recorded_in_checkpoint(path) == (self._sha256(self.source.path), key, __version__):
            return Artifact(path, "checkpoint", "fp32", reused=True)
        fused = fuse_model(self.source.model(), inplace=True)
        record = {"parent_sha256": self._sha256(self.source.path), "artifact_options": key}
        save_fused_checkpoint(path, fused, self.source.extra, trt_yolact_version=__version__, **record)
        self._hashes.pop(path, None)
        return Artifact(path, "checkpoint", "fp32")

    def onnx(self, precision: str = "fp32", postprocess: PostprocessConfig | None = None) -> Artifact:
        """The ONNX export in ``precision``; ``postprocess`` puts that post-processing inside the graph."""
        if precision not in PRECISIONS:
            raise PrecisionError(f"ONNX exports are one of {', '.join(PRECISIONS)}, not {precision!r}")
        if precision == "fp16":
            return self._fp16_onnx(postprocess)
        parent = self.checkpoint().path
        suffix = ".postprocess" if postprocess is not None else ""
        path = self.folder / f"{self.stem}{suffix}.onnx"
        key = self.options.onnx_key(self.source.config, postprocess)
        if _recorded_in_onnx(path) == (self._sha256(parent), key, __version__):
            return Artifact(path, "onnx", "fp32", "graph" if postprocess else "none", reused=True)
        opts = self.options
        result = export_onnx(
            build_model(read_checkpoint(parent).state_dict, self.source.config, str(parent), self.source.advice),
            path,
            batch_dynamic=opts.batch is None,
            opset=opts.opset,
            simplify=opts.simplify,
            batch_size=opts.batch or 1,
            postprocess=postprocess,
            extra_metadata={
                "source_sha256": self._sha256(self.source.path),
                "parent_sha256": self._sha256(parent),
                "artifact_options": key,
            },
        )
        self._hashes.pop(path, None)
        note = f"not simplified: {result.simplify_error}" if opts.simplify and result.simplify_error else ""
        return Artifact(path, "onnx", "fp32", result.postprocess, note=note)

    def _fp16_onnx(self, postprocess: PostprocessConfig | None) -> Artifact:
        parent = self.onnx("fp32", postprocess)
        path = parent.path.with_name(f"{parent.path.stem}.fp16.onnx")
        key = _key("fp16", keep_fp32_ops=DEFAULT_KEEP_FP32_OPS)
        if _recorded_in_onnx(path) == (self._sha256(parent.path), key, __version__):
            return Artifact(path, "onnx", "fp16", parent.postprocess, reused=True)
        record = {"parent_sha256": self._sha256(parent.path), "artifact_options": key}
        convert_fp16(parent.path, path, extra_metadata=record)
        self._hashes.pop(path, None)
        return Artifact(path, "onnx", "fp16", parent.postprocess)

    def engine(self, precision: str = "fp16", profile: BuildProfile | str = BuildProfile()) -> Artifact:
        """The TensorRT engine in ``precision``, built strongly typed from the ONNX of that precision."""
        parent, profile = self.onnx(precision), BuildProfile.parse(profile)
        batches = (
            f".b{profile.min_batch}-{profile.opt_batch}-{profile.max_batch}" if self.profile_in_engine_name else ""
        )
        path = self.engine_folder / f"{parent.path.stem}{batches}.engine"
        record = {"config": self.source.config.to_dict(), "source_sha256": self._sha256(self.source.path)}
        result = build_engine(parent.path, path, profile, precision=precision, extra_metadata=record)
        note = "reused" if result.reused else f"built in {result.build_seconds:.0f} s"
        return Artifact(path, "engine", precision, reused=result.reused, note=note)


def _recorded_in_onnx(path: Path) -> tuple[str, str, str] | None:
    """(parent sha256, options, version) an ONNX file records; None when it is absent or unreadable."""
    if not path.is_file():
        return None
    try:
        meta = read_onnx_metadata(path)
    except ExportError:
        return None
    return meta.get("parent_sha256"), meta.get("artifact_options"), meta.get("trt_yolact_version")


def _recorded_in_checkpoint(path: Path) -> tuple[str, str, str] | None:
    try:
        data = load_tensors(path)
    except CheckpointError:  # an unreadable file is simply made again
        return None
    if not isinstance(data, dict):
        return None
    return data.get("parent_sha256"), data.get("artifact_options"), data.get("trt_yolact_version")


def export_artifacts(
    source: ModelSource,
    out_dir: str | Path,
    name: str,
    options: ExportOptions = ExportOptions(fuse=False),
    fp16: bool = False,
    postprocess: PostprocessConfig | None = None,
) -> list[Artifact]:
    """The FP32 ONNX export of ``source`` (with ``fp16`` its FP16 version, with ``postprocess`` the exports
    with the post-processing in the graph too) as ``out_dir/NAME*.onnx``. The set appears complete or not at
    all: it is made in a private folder and moved into place at the end."""
    if not name or any(sep in name for sep in ("/", "\\")) or name.startswith("."):
        raise UsageError(f"--name must be a plain file name stem, got {name!r}")
    made: list[Artifact] = []
    with staged_folder(out_dir, ExportError) as staging:
        chain = ArtifactChain(source, staging, stem=name, options=options)
        for post in (None, postprocess) if postprocess is not None else (None,):
            made.append(chain.onnx("fp32", post))
            if fp16:
                made.append(chain.onnx("fp16", post))
    return [replace(artifact, path=Path(out_dir) / artifact.path.name) for artifact in made]
