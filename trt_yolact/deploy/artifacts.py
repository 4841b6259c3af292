"""The one artifact chain: checkpoint -> fused checkpoint -> FP32 ONNX -> FP16 ONNX -> TensorRT engine, and
FP32 ONNX -> INT8 ONNX (ONNX Runtime flavour), FP16 ONNX -> INT8 ONNX (TensorRT flavour) -> INT8 engine.

Each artifact is made from the file before it, never from a model in memory, and only here: ``build``,
``export`` and opening a runner for a checkpoint all go through :class:`ArtifactChain`. An artifact is
reused when its file exists and records that it was made from a parent of the same content (sha256) with
the same options by the same trt_yolact version; otherwise it is made again. ONNX files record this in their
metadata, fused checkpoints beside their weights, engines in their sidecar. Every file is written whole
(atomically), so an interrupted chain leaves only complete artifacts. The INT8 exports share one calibration
cache (``STEM.calib.json``, :mod:`~trt_yolact.deploy.calibration`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import PRECISIONS, PostprocessConfig, YolactConfig
from ..errors import CalibrationError, CheckpointError, ExportError, PrecisionError, UsageError
from ..files import sha256_file, staged_folder
from ..model.checkpoint import ModelSource, build_model, read_checkpoint, save_fused_checkpoint
from ..model.fuse import fuse_model
from ..model.safe_load import load_tensors
from .calibration import CalibrationData, CalibrationSettings, Range, cache_settings, load_or_calibrate
from .onnx_export import DEFAULT_OPSET, export_onnx
from .onnx_format import load_onnx, read_onnx_metadata
from .onnx_fp16 import DEFAULT_KEEP_FP32_OPS, convert_fp16
from .onnx_int8 import INT8_FLAVOURS, calibration_tensors, write_int8
from .tensorrt_build import DEFAULT_TF32, BuildProfile, build_engine

# The INT8 exports' name suffixes: the CPU flavour is the plain one, TensorRT's is marked.
INT8_SUFFIXES = {"onnxruntime": ".int8", "tensorrt": ".int8-trt"}


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


@dataclass(frozen=True)
class Int8Setup:
    """What the chain's INT8 exports are calibrated on and which layers they keep in higher precision."""

    data: CalibrationData
    settings: CalibrationSettings = CalibrationSettings()
    exclude: tuple[str, ...] = ()  # module path globs or block names (onnx_int8.excluded_nodes)
    # blocks a sensitivity search left unquantized, per flavour, besides ``exclude``
    searched: tuple[tuple[str, tuple[str, ...]], ...] = ()
    description: str = ""  # where the images come from, for reports

    def exclusions(self, flavour: str) -> tuple[str, ...]:
        return self.exclude + dict(self.searched).get(flavour, ())


def _key(step: str, **settings: Any) -> str:
    return json.dumps({"step": step, **settings}, sort_keys=True, default=str)


@dataclass(frozen=True)
class Artifact:
    """One file of the chain."""

    path: Path
    kind: str  # "checkpoint", "onnx", "engine" or "calibration" (the INT8 calibration cache)
    precision: str  # "fp32", "fp16" or "int8"
    postprocess: str = "none"  # "graph": the post-processing is inside the ONNX
    reused: bool = False
    note: str = ""  # e.g. why an ONNX is not simplified, how long an engine took to build

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


class ArtifactChain:
    """Makes or reuses the artifacts of one checkpoint in ``folder`` (engines in ``engine_folder``).

    Files are named ``STEM[.postprocess][.fp16].onnx``, ``STEM.int8.onnx`` (ONNX Runtime flavour),
    ``STEM.int8-trt.onnx`` (TensorRT flavour) and ``STEM.fp16.engine`` / ``STEM.int8-trt.engine``; ``STEM`` is
    ``stem`` when given, else the model's name with ``.fused`` when the exports are made from a fused
    checkpoint. In a cache (:meth:`cached`) the engine's name also carries its batch profile (``.b1-4-8``).
    INT8 needs ``int8``: the calibration images and settings.
    """

    def __init__(
        self,
        source: ModelSource,
        folder: str | Path,
        engine_folder: str | Path | None = None,
        stem: str | None = None,
        options: ExportOptions = ExportOptions(),
        int8: Int8Setup | None = None,
    ):
        self.source, self.options, self.int8 = source, options, int8
        self.folder = Path(folder)
        self.engine_folder = Path(engine_folder) if engine_folder is not None else self.folder
        self.stem = stem or f"{source.name}{'.fused' if options.fuse or source.fused else ''}"
        self.profile_in_engine_name = False  # a cache keeps one engine per batch profile side by side
        self._hashes: dict[Path, str] = {}
        self._ranges: dict[str, Range] | None = None

    @classmethod
    def cached(
        cls,
        source: ModelSource,
        folder: str | Path,
        options: ExportOptions = ExportOptions(),
        int8: Int8Setup | None = None,
    ) -> ArtifactChain:
        """A chain in a cache folder shared by many checkpoints: the stem carries the checkpoint's digest, so
        two checkpoints of the same name never replace each other's artifacts."""
        digest = sha256_file(source.path)
        fused = ".fused" if options.fuse or source.fused else ""
        chain = cls(source, folder, stem=f"{source.name}-{digest[:12]}{fused}", options=options, int8=int8)
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

    def onnx(
        self, precision: str = "fp32", postprocess: PostprocessConfig | None = None, flavour: str = "onnxruntime"
    ) -> Artifact:
        """The ONNX export in ``precision``; ``postprocess`` puts that post-processing inside the graph;
        ``flavour``: which INT8 graph (``onnxruntime`` or ``tensorrt``)."""
        if precision not in PRECISIONS:
            raise PrecisionError(f"ONNX exports are one of {', '.join(PRECISIONS)}, not {precision!r}")
        if precision == "fp16":
            return self._fp16_onnx(postprocess)
        if precision == "int8":
            return self.int8_onnx(flavour, postprocess=postprocess)
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
        # resize_constants: FP16 exports made before the Resize geometry stayed FP32 constants are made again
        key = _key("fp16", keep_fp32_ops=DEFAULT_KEEP_FP32_OPS, resize_constants="fp32")
        if _recorded_in_onnx(path) == (self._sha256(parent.path), key, __version__):
            return Artifact(path, "onnx", "fp16", parent.postprocess, reused=True)
        record = {"parent_sha256": self._sha256(parent.path), "artifact_options": key}
        convert_fp16(parent.path, path, extra_metadata=record)
        self._hashes.pop(path, None)
        return Artifact(path, "onnx", "fp16", parent.postprocess)

    @property
    def calibration_cache(self) -> Path:
        return self.folder / f"{self.stem}.calib.json"

    def calibration_ranges(self) -> dict[str, Range]:
        """The activation ranges of the FP32 export on the INT8 calibration images (from the cache when it
        was made from the same export, settings and images)."""
        setup = self._int8_setup()
        if self._ranges is None:
            parent = self.onnx("fp32").path
            tensors = calibration_tensors(load_onnx(parent))
            self._ranges, _ = load_or_calibrate(
                self.calibration_cache, parent, self._sha256(parent), tensors, setup.data, setup.settings
            )
        return self._ranges

    def _int8_setup(self) -> Int8Setup:
        if self.int8 is None:
            raise CalibrationError("INT8 needs calibration images (--calib DIR or ANN.json:IMAGES)")
        return self.int8

    def _int8_parent(self, flavour: str, postprocess: PostprocessConfig | None = None) -> Artifact:
        """The export a flavour quantizes: FP16 for TensorRT's (whose compute stays FP16), FP32 for ONNX Runtime's;
        ``postprocess``: the FP16 export with that post-processing in the graph (TensorRT's flavour only)."""
        if postprocess is not None and flavour != "tensorrt":
            raise PrecisionError(
                "the ONNX Runtime INT8 flavour holds the network only: the post-processing goes into the graph of "
                "the TensorRT flavour (an INT8 engine), or run the FP32/FP16 export with the post-processing inside"
            )
        return self._fp16_onnx(postprocess) if flavour == "tensorrt" else self.onnx("fp32")

    def int8_onnx(
        self,
        flavour: str = "onnxruntime",
        exclude: tuple[str, ...] | None = None,
        postprocess: PostprocessConfig | None = None,
    ) -> Artifact:
        """The INT8 export of ``flavour``, with the layers matching ``exclude`` (default: the setup's) kept in
        the precision of its parent (FP32 for ONNX Runtime's, FP16 for TensorRT's); ``postprocess``: TensorRT's
        flavour of the export with that post-processing in the graph (``STEM.postprocess.int8-trt.onnx``: the
        network quantized as in the raw one, with the same calibration, the post-processing kept in FP32)."""
        if flavour not in INT8_FLAVOURS:
            raise PrecisionError(f"INT8 flavours are {', '.join(INT8_FLAVOURS)}, not {flavour!r}")
        setup = self._int8_setup()
        exclude = setup.exclusions(flavour) if exclude is None else tuple(exclude)
        parent = self._int8_parent(flavour, postprocess)
        suffix = ".postprocess" if postprocess is not None else ""
        path = self.folder / f"{self.stem}{suffix}{INT8_SUFFIXES[flavour]}.onnx"
        calibration = cache_settings(setup.settings, setup.data)
        key = _key("int8", flavour=flavour, calibration=calibration, exclude=sorted(exclude))
        if _recorded_in_onnx(path) == (self._sha256(parent.path), key, __version__):
            return Artifact(path, "onnx", "int8", parent.postprocess, reused=True, note=f"{flavour} flavour")
        record = {"parent_sha256": self._sha256(parent.path), "artifact_options": key}
        summary = self.write_int8_variant(flavour, exclude, path, record, postprocess)
        self._hashes.pop(path, None)
        return Artifact(path, "onnx", "int8", parent.postprocess, note=f"{flavour} flavour, {summary}")

    def write_int8_variant(
        self,
        flavour: str,
        exclude: tuple[str, ...],
        path: Path,
        record: dict[str, str] | None = None,
        postprocess: PostprocessConfig | None = None,
    ) -> str:
        """Quantize the chain's export for ``flavour`` (with ``postprocess`` in its graph) with ``exclude`` into
        ``path`` (also the sensitivity search's trial models, outside the chain's folder); returns a summary.
        The ranges and weights come from the raw FP32 export: the graph export's network has the same nodes."""
        setup = self._int8_setup()
        calibration = cache_settings(setup.settings, setup.data)
        parent, fp32 = self._int8_parent(flavour, postprocess).path, self.onnx("fp32").path
        return write_int8(flavour, parent, fp32, path, self.calibration_ranges(), exclude, calibration, record)

    def engine(
        self,
        precision: str = "fp16",
        profile: BuildProfile | str = BuildProfile(),
        tf32: bool = DEFAULT_TF32,
        postprocess: PostprocessConfig | None = None,
    ) -> Artifact:
        """The TensorRT engine in ``precision``, built strongly typed from the ONNX of that precision (for
        INT8, the TensorRT flavour's Q/DQ ONNX); ``tf32``: let its FP32 layers use TF32; ``postprocess``: from
        the export with that post-processing in the graph (``STEM.postprocess.fp16.engine``,
        ``STEM.postprocess.int8-trt.engine``), which its sidecar records."""
        parent, profile = self.onnx(precision, postprocess, flavour="tensorrt"), BuildProfile.parse(profile)
        batches = (
            f".b{profile.min_batch}-{profile.opt_batch}-{profile.max_batch}" if self.profile_in_engine_name else ""
        )
        path = self.engine_folder / f"{parent.path.stem}{batches}.engine"
        record = {"config": self.source.config.to_dict(), "source_sha256": self._sha256(self.source.path)}
        if postprocess is not None:
            record.update(postprocess="graph", postprocess_config=asdict(postprocess))
        result = build_engine(parent.path, path, profile, precision=precision, extra_metadata=record, tf32=tf32)
        note = "reused" if result.reused else f"built in {result.build_seconds:.0f} s"
        if result.timing_cache_note:
            note += f"; {result.timing_cache_note}"
        return Artifact(path, "engine", precision, parent.postprocess, reused=result.reused, note=note)


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
    int8: Int8Setup | None = None,
) -> list[Artifact]:
    """The FP32 ONNX export of ``source`` (with ``fp16`` its FP16 version, with ``postprocess`` the exports
    with the post-processing in the graph too, with ``int8`` both INT8 flavours and their calibration cache)
    as ``out_dir/NAME*``. The set appears complete or not at all: it is made in a private folder and moved
    into place at the end."""
    if not name or any(sep in name for sep in ("/", "\\")) or name.startswith("."):
        raise UsageError(f"--name must be a plain file name stem, got {name!r}")
    made: list[Artifact] = []
    with staged_folder(out_dir, ExportError) as staging:
        chain = ArtifactChain(source, staging, stem=name, options=options, int8=int8)
        for post in (None, postprocess) if postprocess is not None else (None,):
            made.append(chain.onnx("fp32", post))
            if fp16:
                made.append(chain.onnx("fp16", post))
        if int8 is not None:
            made += [chain.int8_onnx(flavour) for flavour in INT8_FLAVOURS]
            made.append(Artifact(chain.calibration_cache, "calibration", "int8"))
        wanted = {artifact.path for artifact in made}
        for path in Path(staging).iterdir():  # the FP16 export the TensorRT flavour is made from, unasked
            if path not in wanted:
                path.unlink()
    return [replace(artifact, path=Path(out_dir) / artifact.path.name) for artifact in made]
