"""Every deployed form of a model checked against the PyTorch FP32 reference on sample images: raw-output
error, detection agreement, latency; and the build report that collects the checks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Int8Options, PostprocessConfig, YolactConfig
from ..deploy.artifacts import Artifact, ArtifactChain, ExportOptions
from ..deploy.engine_format import read_sidecar, tensorrt_unavailable_reason
from ..deploy.onnx_int8 import INT8_FLAVOURS
from ..deploy.tensorrt_build import DEFAULT_TF32, BuildProfile
from ..deploy.triton import TritonModel, model_name, triton_model, write_repository
from ..inference.calibration_images import int8_setup
from ..inference.images import sample_images
from ..inference.postprocess import postprocess
from ..inference.predictor import Prediction, Predictor, StageTimes
from ..inference.preprocess import preprocess
from ..model.boxes import pairwise_iou
from ..model.checkpoint import ModelSource
from ..model.stats import count_conv_macs, count_params
from ..runtime.base import Runner
from ..runtime.open import open_artifact
from ..runtime.torch_runner import TorchRunner
from ..structures import OUTPUT_NAMES, UNBATCHED_OUTPUTS, Detections, RawOutputs
from ..tables import format_table
from .int8_sensitivity import SensitivityReport, analyse, sensitivity_set

RAW_FIELDS = tuple(name for name in OUTPUT_NAMES if name not in UNBATCHED_OUTPUTS)
AGREEMENT_SCORE = 0.3  # detections that matter for agreement: the ones a user would display


@dataclass
class ArtifactCheck:
    """One deployed form of the model and how it compares with the PyTorch FP32 reference."""

    name: str
    backend: str
    precision: str
    path: str | None
    size_bytes: int | None
    max_abs_error: dict[str, float] = field(default_factory=dict)
    detection_agreement: float | None = None  # share of reference detections found again (same class, IoU >= 0.9)
    same_detections: bool | None = None  # same classes in the same order, boxes within 1 px
    latency_ms: float | None = None  # inference only, batch 1, median
    note: str = ""
    # of an engine: the trtexec and polygraphy commands that build it and compare it with ONNX Runtime
    equivalent_commands: dict[str, str] = field(default_factory=dict)


@dataclass
class BuildReport:
    model: str
    source: str
    config: str
    params: int
    macs: int
    fused: bool
    artifacts: list[ArtifactCheck]
    skipped: list[str]
    seconds: float
    int8: dict[str, Any] | None = None  # calibration and exclusions of an INT8 build
    sensitivity: list[SensitivityReport] = field(default_factory=list)  # of each INT8 flavour, when asked
    triton_models: list[str] = field(default_factory=list)  # model folders written with --triton

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        rows = []
        for a in self.artifacts:
            worst = max(a.max_abs_error.values()) if a.max_abs_error else None
            rows.append(
                [
                    a.name,
                    a.backend,
                    a.precision,
                    "-" if a.size_bytes is None else f"{a.size_bytes / 2**20:.2f} MiB",
                    "-" if worst is None else f"{worst:.1e}",
                    "-" if a.detection_agreement is None else f"{100 * a.detection_agreement:.1f}%",
                    "-" if a.same_detections is None else ("yes" if a.same_detections else "no"),
                    "-" if a.latency_ms is None else f"{a.latency_ms:.1f}",
                ]
            )
        header = ["artifact", "backend", "precision", "size", "max |err|", "det. agreement", "identical", "ms/img"]
        return format_table(rows, header)


def detection_agreement(reference: Sequence[Detections], other: Sequence[Detections]) -> tuple[float, bool]:
    """(share of confident reference detections matched by the same class with box IoU >= 0.9,
    whether the detection lists are identical: same classes in order, boxes within 1 px)."""
    matched = total = 0
    identical = True
    for ref, oth in zip(reference, other):
        ref, oth = ref.to("cpu"), oth.to("cpu")
        identical &= ref.classes.tolist() == oth.classes.tolist() and (
            len(ref) == 0 or bool((ref.boxes - oth.boxes).abs().max() <= 1)
        )
        confident = ref.scores >= AGREEMENT_SCORE
        total += int(confident.sum())
        if not confident.any() or len(oth) == 0:
            continue
        iou = pairwise_iou(ref.boxes_relative[confident], oth.boxes_relative)
        same_class = ref.classes[confident][:, None] == oth.classes[None, :]
        matched += int(((iou >= 0.9) & same_class).any(dim=1).sum())
    return (matched / total if total else 1.0), identical


def max_errors(reference: RawOutputs, other: RawOutputs) -> dict[str, float]:
    """Largest absolute difference of each batched raw output."""
    return {
        k: float((getattr(reference, k) - getattr(other, k).to(getattr(reference, k).device)).abs().max())
        for k in RAW_FIELDS
    }


def median_latency_ms(predictor: Predictor, image: np.ndarray, repeats: int) -> float:
    """Median inference time of one image, after one warm-up call."""
    predictor.predict([image])
    return float(np.median([1000 * predictor.predict([image]).times.inference for _ in range(repeats)]))


def check_runner(
    name: str, runner: Runner, config: YolactConfig, images: list[np.ndarray], reference: Prediction, repeats: int
) -> ArtifactCheck:
    """Raw outputs and detections of ``runner`` on ``images`` against the reference's."""
    predictor = Predictor(runner, config)
    prediction = predictor.predict(images)
    agreement, identical = detection_agreement(reference.detections, prediction.detections)
    # An artifact with the post-processing in the graph has no raw outputs: its detections are what it checks.
    raw = None if prediction.raw is None else RawOutputs(*(t.float().cpu() for t in prediction.raw))
    return ArtifactCheck(
        name=name,
        backend=runner.backend,
        precision=runner.precision,
        path=None,
        size_bytes=None,
        max_abs_error={} if raw is None else max_errors(reference.raw, raw),
        detection_agreement=agreement,
        same_detections=identical,
        latency_ms=median_latency_ms(predictor, images[0], repeats),
        note="graph post-processing" if runner.postprocess == "graph" else "",
    )


# ----------------------------------------------------------------------------------------- the build
@dataclass(frozen=True)
class BuildOptions:
    out_dir: Path = Path("export")  # ONNX files, the fused checkpoint and the report
    engine_dir: Path = Path("engines")
    config: str | None = None
    fuse: bool = True
    precision: str = "fp16"  # of the engine (and of the extra ONNX it is built from)
    profile: BuildProfile = BuildProfile()
    graph_postprocess: bool = False  # also export the ONNX with the post-processing in the graph
    tf32: bool = DEFAULT_TF32  # let the engine's FP32 layers use TF32
    triton_dir: Path | None = None  # also lay the artifacts out as a Triton model repository there
    repeats: int = 5  # timed runs per artifact
    int8: Int8Options = Int8Options()  # with precision int8
    int8_sensitivity: bool = False  # report each block's AP change (implied by int8.max_ap_drop)


# The ONNX exports a build checks besides the engine's: the FP16 one is the TensorRT INT8 flavour's parent.
CHECKED_ONNX = {"fp32": ("fp32",), "fp16": ("fp32", "fp16"), "int8": ("fp32", "fp16")}


@dataclass(frozen=True)
class _Checker:
    """Checks runners against the reference outputs on the sample images."""

    config: YolactConfig
    images: list[np.ndarray]
    reference: Prediction
    repeats: int

    def __call__(self, name: str, runner: Runner, artifact: Artifact | None) -> ArtifactCheck:
        with runner:
            result = check_runner(name, runner, self.config, self.images, self.reference, self.repeats)
        if artifact is not None:
            result.path, result.size_bytes = str(artifact.path), artifact.size_bytes
            result.note = ", ".join(note for note in (result.note, artifact.note) if note)
        if artifact is not None and artifact.kind == "engine":
            result.equivalent_commands = dict((read_sidecar(artifact.path) or {}).get("equivalent_commands", {}))
        return result

    def artifact(self, artifact: Artifact) -> ArtifactCheck:
        return self(artifact.path.name, open_artifact(artifact.path), artifact)


def build_and_verify(weights: str | None, options: BuildOptions = BuildOptions()) -> BuildReport:
    """Every artifact of a checkpoint made (or reused) by the artifact chain and checked against torch FP32
    on the sample images; the engine is skipped, with the reason, where TensorRT cannot run."""
    start = time.perf_counter()
    source = ModelSource.load(weights, options.config)
    chain = ArtifactChain(source, options.out_dir, options.engine_dir, options=ExportOptions(fuse=options.fuse))
    if options.precision == "int8":  # a bad calibration set fails before anything is made
        chain.int8 = int8_setup(options.int8, source)
    reference_model = source.model()
    images = sample_images()
    check = _Checker(source.config, images, _eager_reference(reference_model, source.config, images), options.repeats)
    checks = [
        check(f"{source.name} (torch)", TorchRunner(reference_model), Artifact(source.path, "checkpoint", "fp32"))
    ]
    fused = chain.checkpoint()
    deployed = ModelSource.load(fused.path, source.config).model()
    if fused.path != source.path:
        checks.append(check(f"{source.name} fused (torch)", TorchRunner(deployed), fused))
    checks += [check.artifact(chain.onnx(precision)) for precision in CHECKED_ONNX[options.precision]]
    sensitivity = _search_exclusions(chain, options) if options.precision == "int8" else []
    if options.precision == "int8":
        checks += [check.artifact(chain.int8_onnx(flavour)) for flavour in INT8_FLAVOURS]
    if options.graph_postprocess:
        checks += [check.artifact(artifact) for artifact in graph_exports(chain, options)]
    skipped: list[str] = []
    engine, graph_engine = _engines(chain, options, skipped)
    checks += [check.artifact(built) for built in (engine, graph_engine) if built is not None]
    triton = _write_triton(chain, options, engine, skipped, graph_engine) if options.triton_dir is not None else []
    return BuildReport(
        model=source.name,
        source=str(source.path),
        config=source.config.name,
        params=count_params(deployed),
        macs=count_conv_macs(deployed),
        fused=options.fuse or source.fused,
        artifacts=checks,
        skipped=skipped,
        seconds=time.perf_counter() - start,
        int8=_int8_summary(chain),
        sensitivity=sensitivity,
        triton_models=triton,
    )


def graph_exports(chain: ArtifactChain, options: BuildOptions) -> list[Artifact]:
    """The exports with the post-processing in the graph that a build checks: one for each raw export it checks
    (FP32, FP16) and for INT8 the TensorRT flavour's, the one its INT8 engine is built from."""
    graph = PostprocessConfig()
    exports = [chain.onnx(precision, graph) for precision in CHECKED_ONNX[options.precision]]
    if options.precision == "int8":
        exports.append(chain.int8_onnx("tensorrt", postprocess=graph))
    return exports


def _engines(
    chain: ArtifactChain, options: BuildOptions, skipped: list[str]
) -> tuple[Artifact | None, Artifact | None]:
    """The build's engine and, with ``--postprocess graph``, the engine of the export with the post-processing
    inside; None where not built (where TensorRT cannot run, with a line in ``skipped`` for each)."""
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        skipped.append(f"TensorRT engine skipped: {reason}")
        if options.graph_postprocess:
            skipped.append(f"TensorRT engine with the graph post-processing skipped: {reason}")
        return None, None
    engine = chain.engine(options.precision, options.profile, options.tf32)
    if not options.graph_postprocess:
        return engine, None
    return engine, chain.engine(options.precision, options.profile, options.tf32, postprocess=PostprocessConfig())


def triton_models(
    chain: ArtifactChain, options: BuildOptions, engine: Artifact | None, graph_engine: Artifact | None = None
) -> list[TritonModel]:
    """The Triton models of a build: the engine (``<model>``, its interface that of the ONNX it was built
    from), the FP32 ONNX (``<model>_onnx``) and, when built, the graph post-processing ONNX and its engine
    (``<model>_postprocess_onnx``, ``<model>_postprocess``)."""
    name, profile = model_name(chain.source.name), options.profile
    fp32 = chain.onnx("fp32").path
    models = [triton_model(f"{name}_onnx", fp32, fp32, profile)]
    if engine is not None:
        models.append(triton_model(name, engine.path, chain.onnx(options.precision, flavour="tensorrt").path, profile))
    if options.graph_postprocess:
        graph = chain.onnx("fp32", PostprocessConfig()).path
        models.append(triton_model(f"{name}_postprocess_onnx", graph, graph, profile))
    if graph_engine is not None:
        parent = chain.onnx(options.precision, PostprocessConfig(), flavour="tensorrt").path
        models.append(triton_model(f"{name}_postprocess", graph_engine.path, parent, profile))
    return models


def _write_triton(
    chain: ArtifactChain,
    options: BuildOptions,
    engine: Artifact | None,
    skipped: list[str],
    graph_engine: Artifact | None = None,
) -> list[str]:
    """Write the build's Triton repository; without an engine one line in ``skipped`` says the plan model was
    not written. Returns the model folders."""
    if engine is None:
        skipped.append(f"Triton plan model {model_name(chain.source.name)} skipped: no TensorRT engine was built")
    folders = write_repository(options.triton_dir, triton_models(chain, options, engine, graph_engine))
    return [str(folder) for folder in folders]


def _search_exclusions(chain: ArtifactChain, options: BuildOptions) -> list[SensitivityReport]:
    """The sensitivity of both INT8 flavours when asked for; with ``--int8-max-ap-drop`` the chain's INT8
    exports then leave the blocks each search chose unquantized."""
    if not options.int8_sensitivity and options.int8.max_ap_drop is None:
        return []
    eval_set = sensitivity_set(options.int8, chain, options.out_dir)
    reports = [analyse(chain, flavour, eval_set, options.int8) for flavour in INT8_FLAVOURS]
    searched = tuple((r.flavour, tuple(r.left_unquantized)) for r in reports)
    chain.int8 = replace(chain.int8, searched=searched)
    return reports


def _int8_summary(chain: ArtifactChain) -> dict[str, Any] | None:
    if chain.int8 is None:
        return None
    return {
        "calibration": chain.int8.description,
        "settings": asdict(chain.int8.settings),
        "cache": str(chain.calibration_cache),
        "exclude": list(chain.int8.exclude),
        "left_unquantized": dict(chain.int8.searched),
    }


def _eager_reference(model: torch.nn.Module, config: YolactConfig, images: list[np.ndarray]) -> Prediction:
    """The checkpoint's own outputs: a plain forward (NCHW, no runner) and the post-processing, on the CPU."""
    inputs, sizes = preprocess(images, config)
    with torch.no_grad():
        raw = model(inputs)
    return Prediction(postprocess(raw, sizes), raw, StageTimes())
