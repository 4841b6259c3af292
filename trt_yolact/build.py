"""The whole deployment pipeline in one command.

    python -m trt_yolact.build [--weights CKPT|yolact_shapes] [--fuse/--no-fuse] [--precision fp16|fp32]
                               [--batch 1,4,8] [--postprocess host|graph] [--out export/] [--engines engines/]

checkpoint -> fuse -> ONNX (simplified) -> FP16 ONNX -> TensorRT engine (where TensorRT and a GPU exist;
otherwise one line says why it is skipped) -> every artifact verified against the PyTorch reference on
sample images (raw-output error, detection agreement) -> a build report (table + JSON).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .boxes import pairwise_iou
from .checkpoint import EMBEDDED_MODELS, CheckpointError, build_model, choose_config, embedded_model_path, read_checkpoint
from .config import ConfigError
from .errors import first_line
from .eval import format_table
from .files import atomic_write_text
from .postprocess import Detections, PostprocessConfig, postprocess, select_detections
from .preprocess import preprocess
from .runners import Runner, RunnerError, TorchRunner
from .structures import RawOutputs

RAW_FIELDS = ("loc", "conf", "coeffs", "proto")
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        rows = []
        for a in self.artifacts:
            worst = max(a.max_abs_error.values()) if a.max_abs_error else None
            rows.append([
                a.name, a.backend, a.precision,
                "-" if a.size_bytes is None else f"{a.size_bytes / 2**20:.2f} MiB",
                "-" if worst is None else f"{worst:.1e}",
                "-" if a.detection_agreement is None else f"{100 * a.detection_agreement:.1f}%",
                "-" if a.same_detections is None else ("yes" if a.same_detections else "no"),
                "-" if a.latency_ms is None else f"{a.latency_ms:.1f}",
            ])  # fmt: skip
        header = ["artifact", "backend", "precision", "size", "max |err|", "det. agreement", "identical", "ms/img"]
        return format_table(rows, header)


# -------------------------------------------------------------------------------------------- checks
def sample_images() -> list[np.ndarray]:
    """The packaged sample images plus mirrored and rescaled variants: different sizes in one batch."""
    folder = resources.files("trt_yolact") / "samples"
    base = [cv2.imread(str(folder / name)) for name in sorted(p.name for p in folder.iterdir() if p.name.endswith(".png"))]
    base = [image for image in base if image is not None]
    variants = [cv2.flip(image, 1) for image in base] + [cv2.resize(image, None, fx=1.5, fy=1.25) for image in base]
    return base + variants


def detection_agreement(reference: list[Detections], other: list[Detections]) -> tuple[float, bool]:
    """(share of confident reference detections matched by the same class with box IoU >= 0.9,
    whether the detection lists are identical: same classes in order, boxes within 1 px)."""
    matched = total = 0
    identical = True
    for ref, oth in zip(reference, other):
        identical &= ref.classes.tolist() == oth.classes.tolist() and (
            len(ref) == 0 or bool((ref.boxes.cpu() - oth.boxes.cpu()).abs().max() <= 1)
        )
        confident = ref.scores.cpu() >= AGREEMENT_SCORE
        total += int(confident.sum())
        if not confident.any() or len(oth) == 0:
            continue
        iou = pairwise_iou(ref.boxes_relative.cpu()[confident], oth.boxes_relative.cpu())
        same_class = ref.classes.cpu()[confident][:, None] == oth.classes.cpu()[None, :]
        matched += int(((iou >= 0.9) & same_class).any(dim=1).sum())
    return (matched / total if total else 1.0), identical


def max_errors(reference: RawOutputs, other: RawOutputs) -> dict[str, float]:
    return {k: float((getattr(reference, k) - getattr(other, k).to(getattr(reference, k).device)).abs().max()) for k in RAW_FIELDS}


def median_ms(run: Callable[[], Any], synchronize: Callable[[], None], repeats: int = 5) -> float:
    run()  # warm-up
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


def check_runner(
    name: str, runner: Runner, path: Path | None, inputs: torch.Tensor, sizes, reference_raw, reference_dets, repeats: int
) -> ArtifactCheck:
    raw = runner(inputs)
    raw_cpu = RawOutputs(*(t.float().cpu() for t in raw))
    agreement, identical = detection_agreement(reference_dets, postprocess(raw_cpu, sizes))
    return ArtifactCheck(
        name=name, backend=runner.backend, precision=runner.precision, path=None if path is None else str(path),
        size_bytes=None if path is None else path.stat().st_size, max_abs_error=max_errors(reference_raw, raw_cpu),
        detection_agreement=agreement, same_detections=identical,
        latency_ms=median_ms(lambda: runner(inputs[:1]), runner.synchronize, repeats),
    )  # fmt: skip


def check_graph_export(path: Path, inputs: torch.Tensor, reference_raw: RawOutputs, repeats: int) -> ArtifactCheck:
    """The in-graph post-processing against the torch post-processing of the same raw outputs."""
    from .onnxruntime_runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path)
    outputs = runner.run(inputs)
    expected = select_detections(reference_raw, PostprocessConfig())
    counts = [int(n) for n in outputs["num_dets"].tolist()]
    identical = counts == expected.num_detections.tolist()
    matched = total = 0
    for b, n in enumerate(counts):
        want = expected.classes[b, : int(expected.num_detections[b])].tolist()
        got = [int(c) for c in outputs["classes"][b, :n].tolist()]
        identical &= want == got
        total += len(want)
        matched += sum(1 for w, g in zip(want, got) if w == g)
    return ArtifactCheck(
        name=path.name, backend="onnxruntime", precision=runner.precision, path=str(path),
        size_bytes=path.stat().st_size, detection_agreement=matched / total if total else 1.0,
        same_detections=identical, latency_ms=median_ms(lambda: runner.run(inputs[:1]), lambda: None, repeats),
        note="graph post-processing",
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------- build
def build_one(weights: str, args: argparse.Namespace) -> BuildReport:
    from .export import convert_fp16, export_onnx
    from .fuse import fuse_model, is_fused_state_dict
    from .onnxruntime_runner import OnnxRuntimeRunner
    from .prune import count_conv_macs, count_params

    start = time.perf_counter()
    checkpoint = read_checkpoint(weights)
    config = choose_config(checkpoint, args.config)
    reference_model = build_model(checkpoint.state_dict, config, source=str(checkpoint.path))
    name = Path(weights).stem if Path(weights).suffix else str(weights)
    out_dir, engine_dir = Path(args.out), Path(args.engines)
    out_dir.mkdir(parents=True, exist_ok=True)

    images = sample_images()
    inputs, sizes = preprocess(images, config)
    with torch.no_grad():
        reference_raw = reference_model(inputs)
    reference_dets = postprocess(reference_raw, sizes)
    already_fused = is_fused_state_dict(checkpoint.state_dict)
    deployed = fuse_model(reference_model) if args.fuse and not already_fused else reference_model
    artifacts: list[ArtifactCheck] = []
    skipped: list[str] = []
    repeats = args.repeats

    artifacts.append(check_runner(f"{name} (torch)", TorchRunner(reference_model), checkpoint.path, inputs, sizes,
                                  reference_raw, reference_dets, repeats))  # fmt: skip
    if deployed is not reference_model:
        artifacts.append(check_runner(f"{name} fused (torch)", TorchRunner(deployed), None, inputs, sizes,
                                      reference_raw, reference_dets, repeats))  # fmt: skip

    stem = f"{name}.fused" if (args.fuse or already_fused) else name
    onnx_fp32 = export_onnx(deployed, out_dir / f"{stem}.onnx", source_checkpoint=checkpoint.path).path
    artifacts.append(check_runner(onnx_fp32.name, OnnxRuntimeRunner(onnx_fp32), onnx_fp32, inputs, sizes,
                                  reference_raw, reference_dets, repeats))  # fmt: skip
    engine_source = onnx_fp32
    if args.precision == "fp16":
        onnx_fp16 = convert_fp16(onnx_fp32, out_dir / f"{stem}.fp16.onnx")
        artifacts.append(check_runner(onnx_fp16.name, OnnxRuntimeRunner(onnx_fp16), onnx_fp16, inputs, sizes,
                                      reference_raw, reference_dets, repeats))  # fmt: skip
        engine_source = onnx_fp16
    if args.postprocess == "graph":
        graph = export_onnx(deployed, out_dir / f"{stem}.postprocess.onnx", source_checkpoint=checkpoint.path,
                            postprocess=PostprocessConfig()).path  # fmt: skip
        artifacts.append(check_graph_export(graph, inputs, reference_raw, repeats))

    engine_check = build_and_check_engine(engine_source, engine_dir, args, inputs, sizes, reference_raw, reference_dets)
    if isinstance(engine_check, str):
        skipped.append(engine_check)
    else:
        artifacts.append(engine_check)

    report = BuildReport(
        model=name, source=str(checkpoint.path), config=config.name, params=count_params(deployed),
        macs=count_conv_macs(deployed), fused=bool(args.fuse or already_fused), artifacts=artifacts,
        skipped=skipped, seconds=time.perf_counter() - start,
    )  # fmt: skip
    atomic_write_text(out_dir / f"{name}.build.json", json.dumps(report.to_dict(), indent=2))
    return report


def build_and_check_engine(onnx_path: Path, engine_dir: Path, args, inputs, sizes, reference_raw, reference_dets):
    """The TensorRT engine and its check, or one line saying why it was skipped."""
    from .engine import BuildProfile, TensorRTUnavailable, build_engine

    try:
        from .engine import import_tensorrt

        import_tensorrt()
    except TensorRTUnavailable as exc:
        return f"TensorRT engine skipped: {exc}"
    if not torch.cuda.is_available():
        return "TensorRT engine skipped: no CUDA GPU is visible to torch"
    from .tensorrt_runner import TensorRTRunner

    engine_path = engine_dir / f"{onnx_path.stem}.engine"
    result = build_engine(onnx_path, engine_path, BuildProfile.parse(args.batch), precision=args.precision)
    runner = TensorRTRunner(result.engine_path)
    check = check_runner(engine_path.name, runner, result.engine_path, inputs.cuda(), sizes, reference_raw,
                         reference_dets, args.repeats)  # fmt: skip
    check.note = "reused" if result.reused else f"built in {result.build_seconds:.0f} s"
    return check


def default_weights() -> list[str]:
    shipped = [name for name in EMBEDDED_MODELS if embedded_model_path(name).is_file()]
    if not shipped:
        raise CheckpointError("no embedded demo model is shipped in this installation: pass --weights")
    return shipped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trt_yolact.build", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="checkpoint or embedded model; default: every embedded demo model")
    parser.add_argument("--config", default=None)
    parser.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=True, help="fold BN into convs (default: on)")
    parser.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    parser.add_argument("--batch", default="1,4,8", help="TensorRT profile min,opt,max batch (default 1,4,8)")
    parser.add_argument("--postprocess", choices=("host", "graph"), default="host",
                        help="graph: also export the ONNX with in-graph NMS and mask assembly")  # fmt: skip
    parser.add_argument("--out", default="export", help="ONNX and report folder (default: export/)")
    parser.add_argument("--engines", default="engines", help="TensorRT engine folder (default: engines/)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per artifact")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .engine import BuildProfile, EngineBuildError, PrecisionError
    from .export import ExportError

    args = build_parser().parse_args(argv)
    try:
        BuildProfile.parse(args.batch)
        weights_list = [args.weights] if args.weights else default_weights()
        reports = []
        with torch.no_grad():
            for weights in weights_list:
                reports.append(build_one(weights, args))
    except KeyboardInterrupt:
        print("error: build interrupted; finished artifacts are complete, none is half-written", file=sys.stderr)
        return 130
    except (CheckpointError, ConfigError, ExportError, RunnerError, EngineBuildError, PrecisionError, OSError, ValueError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    for report in reports:
        print(f"\n{report.model}  ({report.config}, {report.params / 1e6:.2f} M params, "
              f"{report.macs / 1e9:.2f} GMACs, {'fused' if report.fused else 'not fused'}, {report.seconds:.0f} s)")  # fmt: skip
        print(report.table())
        for line in report.skipped:
            print(line)
        print(f"report: {Path(args.out) / (report.model + '.build.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
