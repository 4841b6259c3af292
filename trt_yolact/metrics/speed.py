"""Speed, size and memory of every model x backend x precision x batch, with the paper-style comparison.

Latency percentiles after warm-up, throughput, the split into pre-processing / inference / post-processing,
forward-only and end-to-end FPS (ultralytics reports the first, the original YOLACT the second), file size,
params, MACs and peak memory (the model's weights plus the rise of CPU RSS or of CUDA allocated memory during
its warm-up). Every row is compared with the first model on the same backend, precision and batch: size -%,
speed +%, memory -%. Configurations are measured round-robin (interleaved) so that a noisy machine affects
them alike.

Each configuration runs through one of the predictor's pipelines (:data:`~trt_yolact.inference.predictor.PIPELINES`):
the host pre-processing and dynamic post-processing, the device pre-processing from uint8 frames with the
static post-processing, or those stages replayed from CUDA graphs (torch on a GPU; each stage its own graph,
so that the three stay timed apart).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import RuntimeOptions, YolactConfig
from ..deploy.onnx_format import deployed_parameter_count
from ..errors import BackendUnavailable
from ..inference.images import synthetic_frames
from ..inference.predictor import Predictor
from ..inference.sources import comparison_configurations, open_runner, runner_for, with_backend
from ..model.checkpoint import ModelSource, model_name
from ..model.stats import count_conv_macs, count_params
from ..runtime.allocator import release_freed_memory
from ..runtime.base import Runner
from ..tables import format_markdown_table

WEIGHT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}


@dataclass
class BenchRow:
    model: str
    backend: str
    precision: str
    batch: int
    fps: float = 0.0  # end to end: preprocess + inference + post-processing, images per second
    forward_fps: float = 0.0  # inference only
    p50_ms: float = 0.0  # end-to-end latency of one batch
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    preprocess_ms: float = 0.0  # per batch, medians
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    file_bytes: int = 0
    params: int = 0
    macs: int = 0
    peak_memory_bytes: int = 0
    memory_kind: str = ""
    size_change_pct: float | None = None  # against the first model, same backend/precision/batch
    speed_change_pct: float | None = None
    memory_change_pct: float | None = None
    samples: list[float] = field(default_factory=list, repr=False)
    postprocess: str = "host"  # where detections were selected: "host" (torch) or "graph" (inside the export)
    pipeline: str = "dynamic"  # one of PIPELINES


def reset_peak_rss() -> None:
    """Linux: hand freed heap pages back to the OS, then make VmHWM restart from the current RSS.

    Without the trim, memory freed by an earlier configuration stays resident and a later one reuses it
    without the resident set rising, which would flatter whichever model is measured later."""
    release_freed_memory()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _proc_status_bytes(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    current = _proc_status_bytes("VmRSS")
    return peak_rss_bytes() if current is None else current


class Measurement:
    """Times one configuration, one iteration at a time, so that configurations can be interleaved."""

    def __init__(self, predictor: Predictor, images: list[np.ndarray]):
        self.predictor, self.images = predictor, images
        self.total: list[float] = []
        self.stages: list[tuple[float, float, float]] = []

    @property
    def runner(self) -> Runner:
        return self.predictor.runner

    def once(self, record: bool = True) -> None:
        times = self.predictor.predict(self.images).times
        if record:
            self.total.append(times.total)
            self.stages.append((times.preprocess, times.inference, times.postprocess))

    def memory(self, before: int, weight_bytes: int) -> tuple[int, str]:
        """Peak memory of this configuration alone. Every configuration shares one process, and on CUDA one
        allocator that holds every model loaded so far, so a process-wide peak would mostly measure the
        others: count this model's weights plus how far memory rose above ``before``, its level just before
        the warm-up (activations, workspaces, allocator growth)."""
        device = self.runner.device
        if device.type == "cuda":
            rise = max(0, int(torch.cuda.max_memory_allocated(device)) - before)
            engine_bytes = getattr(self.runner, "device_memory_bytes", None)  # TensorRT: outside torch's allocator
            if engine_bytes is not None:  # the engine holds the weights
                return rise + int(engine_bytes), "TensorRT engine and activations + cuda allocated rise"
            return weight_bytes + rise, "cuda weights + peak allocated rise"
        return weight_bytes + max(0, peak_rss_bytes() - before), "cpu weights + peak rss rise"

    def warm_up(self, iterations: int, weight_bytes: int) -> tuple[int, str]:
        """Run unmeasured ``iterations``; they double as the peak-memory measurement of this configuration."""
        device = self.runner.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = int(torch.cuda.memory_allocated(device))
        else:
            reset_peak_rss()
            before = current_rss_bytes()
        for _ in range(iterations):
            self.once(record=False)
        return self.memory(before, weight_bytes)

    def summarize(self, row: BenchRow) -> BenchRow:
        """``row`` with the latency percentiles, stage medians and FPS of the recorded iterations."""
        totals = np.array(self.total) * 1000
        stages = np.median(np.array(self.stages), axis=0) * 1000
        row.p50_ms, row.p90_ms, row.p99_ms = (float(np.percentile(totals, q)) for q in (50, 90, 99))
        row.preprocess_ms, row.inference_ms, row.postprocess_ms = (float(s) for s in stages)
        row.fps = 1000 * row.batch / row.p50_ms
        row.forward_fps = 1000 * row.batch / row.inference_ms
        row.samples = [float(t) for t in totals]
        return row


@dataclass(frozen=True)
class BenchOptions:
    backends: tuple[str, ...] = ("torch", "onnxruntime")
    precisions: tuple[str, ...] = ("fp32",)
    batches: tuple[int, ...] = (1, 8)
    iters: int = 20
    warmup: int = 3
    settle: int = 1  # unmeasured iterations of a configuration before each measured one
    runtime: RuntimeOptions = RuntimeOptions()
    postprocess_places: tuple[str, ...] = ("host",)  # "graph": also each export with the post-processing inside
    pipelines: tuple[str, ...] = ("dynamic",)  # of PIPELINES; "graph" runs for torch on CUDA only


@dataclass
class _Model:
    """One model to measure: a checkpoint on each backend x precision, or a deployed file as it is."""

    name: str
    file_bytes: int
    params: int
    macs: int  # 0: unknown (a deployed file)
    source: ModelSource | None = None
    path: str | None = None

    @classmethod
    def of(cls, model: ModelSource | str) -> _Model:
        if isinstance(model, ModelSource):
            network = model.model()
            return cls(model.name, model.file_bytes, count_params(network), count_conv_macs(network), source=model)
        return cls(model_name(model), Path(model).stat().st_size, deployed_parameter_count(model), 0, path=model)

    def runners(self, options: BenchOptions, skipped: list[str]) -> Iterator[tuple[Runner, YolactConfig]]:
        """Its runners that can run here; the others are listed in ``skipped`` with the reason."""
        if self.source is None:
            yield open_runner(self.path, replace(options.runtime, max_batch=max(options.batches)))
            return
        runtime = replace(options.runtime, max_batch=max(options.batches))
        triples, left_out = comparison_configurations(options.backends, options.precisions, options.postprocess_places)
        skipped.extend(f"{self.name} {line}" for line in left_out)
        for backend, precision, place in triples:
            try:
                yield runner_for(self.source, with_backend(runtime, backend, precision, place)), self.source.config
            except BackendUnavailable as exc:
                skipped.append(f"{self.name} {backend} {precision} {place}: {exc}")


def _configurations(
    models: list[_Model], options: BenchOptions, skipped: list[str], runners: ExitStack
) -> list[tuple[BenchRow, Measurement]]:
    """Every model x backend x precision x batch that can run here, warmed up, with its row; each runner is
    released when ``runners`` closes."""
    measurements = []
    for model in models:
        for runner, config in model.runners(options, skipped):
            runners.enter_context(runner)
            for batch, pipeline in ((b, p) for b in options.batches for p in options.pipelines):
                if pipeline == "graph" and not (runner.backend == "torch" and runner.device.type == "cuda"):
                    skipped.append(f"{model.name} {runner.backend} {runner.precision} b{batch} graph: {_NO_GRAPH}")
                    continue
                row = BenchRow(
                    model.name,
                    runner.backend,
                    runner.precision,
                    batch,
                    file_bytes=model.file_bytes,
                    params=model.params,
                    macs=model.macs,
                    postprocess="graph" if runner.postprocess == "graph" else "host",
                    pipeline=pipeline,
                )
                m = Measurement(Predictor(runner, config, pipeline=pipeline), synthetic_frames(batch))
                weight_bytes = model.params * WEIGHT_BYTES[runner.precision]
                row.peak_memory_bytes, row.memory_kind = m.warm_up(options.warmup, weight_bytes)
                measurements.append((row, m))
    return measurements


_NO_GRAPH = "CUDA graphs are captured for the torch runner on a CUDA GPU only"


def run_benchmark(
    models: Sequence[ModelSource | str], options: BenchOptions = BenchOptions()
) -> tuple[list[BenchRow], list[str]]:
    """Measure every model (a checkpoint, or the path of a deployed file) x backend x precision x batch,
    interleaved: each round gives every configuration ``settle`` unmeasured iterations, then one measured one.
    The settling iterations make each measurement follow its own configuration, as in a deployed pipeline that
    runs one model: on a small machine, the first iteration after another configuration pays for thread pools
    and working sets to switch. Returns the rows and the configurations that cannot run here, with why."""
    skipped: list[str] = []
    described = [_Model.of(model) for model in models]
    with ExitStack() as runners:
        measurements = _configurations(described, options, skipped, runners)
        # Interleave: every configuration once per round (after settling), so machine drift affects all alike.
        for _ in tqdm(range(options.iters), desc="bench", unit="round", disable=not measurements):
            for _, m in measurements:
                for _ in range(options.settle):
                    m.once(record=False)
                m.once()
    rows = [m.summarize(row) for row, m in measurements]
    compare_with_first_model(rows, described[0].name if described else "")
    return rows, skipped


def compare_with_first_model(rows: list[BenchRow], baseline: str) -> None:
    """Paper-style changes against the first (dense) model on the same backend, precision, post-processing
    place, batch and pipeline."""
    base = {(r.backend, r.precision, r.postprocess, r.batch, r.pipeline): r for r in rows if r.model == baseline}
    for row in rows:
        ref = base.get((row.backend, row.precision, row.postprocess, row.batch, row.pipeline))
        if ref is None:
            continue
        row.size_change_pct = 100 * (row.file_bytes / ref.file_bytes - 1)
        row.speed_change_pct = 100 * (row.fps / ref.fps - 1)
        row.memory_change_pct = (
            100 * (row.peak_memory_bytes / ref.peak_memory_bytes - 1) if ref.peak_memory_bytes else None
        )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}%"


def table_rows(rows: list[BenchRow]) -> tuple[list[str], list[list[str]]]:
    header = [
        "model",
        "backend",
        "prec",
        "post",
        "batch",
        "pipeline",
        "FPS e2e",
        "FPS fwd",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "pre/inf/post ms",
        "size MiB",
        "params M",
        "GMACs",
        "peak MiB",
        "size",
        "speed",
        "memory",
    ]
    body = [
        [
            r.model,
            r.backend,
            r.precision,
            r.postprocess,
            str(r.batch),
            r.pipeline,
            f"{r.fps:.2f}",
            f"{r.forward_fps:.2f}",
            f"{r.p50_ms:.1f}",
            f"{r.p90_ms:.1f}",
            f"{r.p99_ms:.1f}",
            f"{r.preprocess_ms:.1f}/{r.inference_ms:.1f}/{r.postprocess_ms:.1f}",
            f"{r.file_bytes / 2**20:.2f}",
            f"{r.params / 1e6:.2f}",
            f"{r.macs / 1e9:.2f}" if r.macs else "-",
            f"{r.peak_memory_bytes / 2**20:.0f}",
            _pct(r.size_change_pct),
            _pct(r.speed_change_pct),
            _pct(r.memory_change_pct),
        ]
        for r in rows
    ]
    return header, body


def markdown_table(rows: list[BenchRow]) -> str:
    header, body = table_rows(rows)
    return format_markdown_table(body, header)


def plot_rows(rows: list[BenchRow]) -> bytes:
    """End-to-end and forward FPS per configuration, and the per-image stage split, side by side: the PNG's
    bytes (written with the command's other outputs)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    figure = Figure(figsize=(11, 4), layout="constrained")
    ax_fps, ax_split = figure.subplots(1, 2)
    labels = [f"{r.model}\n{r.backend} {r.precision} {r.postprocess} b{r.batch} {r.pipeline}" for r in rows]
    x = np.arange(len(rows))
    ax_fps.bar(x - 0.2, [r.fps for r in rows], 0.4, label="end to end")
    ax_fps.bar(x + 0.2, [r.forward_fps for r in rows], 0.4, label="forward only")
    ax_fps.set_xticks(x, labels, fontsize=6, rotation=45, ha="right")
    ax_fps.set_ylabel("images / s")
    ax_fps.legend()
    per_image = lambda v, r: v / r.batch  # noqa: E731
    bottom = np.zeros(len(rows))
    for name, attr in (("pre", "preprocess_ms"), ("inference", "inference_ms"), ("post", "postprocess_ms")):
        values = np.array([per_image(getattr(r, attr), r) for r in rows])
        ax_split.bar(x, values, 0.6, bottom=bottom, label=name)
        bottom += values
    ax_split.set_xticks(x, labels, fontsize=6, rotation=45, ha="right")
    ax_split.set_ylabel("ms per image (median)")
    ax_split.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
