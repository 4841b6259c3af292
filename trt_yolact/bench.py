"""Speed, size and memory of every model x backend x precision x batch, with the paper-style comparison.

    python -m trt_yolact.bench --weights yolact_shapes,yolact_shapes_pruned --backends torch,onnxruntime \\
        [--precision fp32,fp16] [--batch 1,8] [--iters 20] [--json bench.json] [--plot bench.png] [--md bench.md]

Latency percentiles after warm-up, throughput, the split into pre-processing / inference / post-processing,
forward-only and end-to-end FPS (ultralytics reports the first, the original YOLACT the second), file
size, params, MACs and peak memory (the model's weights plus the rise of CPU RSS or of CUDA allocated memory
during its warm-up). Every row is compared with the first model on the same backend, precision and batch:
size -%, speed +%, memory -%. Configurations are measured round-robin (interleaved) so that a noisy machine
affects them alike.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backends import BACKENDS, BackendUnavailable, ModelSource, make_runner
from .eval import format_markdown_table, format_table
from .errors import first_line
from .files import atomic_write_bytes, atomic_write_text
from .allocator import release_freed_memory
from .postprocess import postprocess
from .preprocess import preprocess
from .runners import Runner


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


def reset_peak_rss() -> None:
    """Linux: hand freed heap pages back to the OS, then make VmHWM restart from the current RSS.

    Without the trim, memory freed by an earlier configuration stays resident and a later one reuses it
    without the resident set rising, which would flatter whichever model is measured later."""
    release_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


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


def synthetic_images(batch: int, size: tuple[int, int] = (480, 640), seed: int = 0) -> list[np.ndarray]:
    """Deterministic stand-in frames (no dataset needed); the sample image when it is packaged."""
    from .build import sample_images

    samples = sample_images()
    rng = np.random.default_rng(seed)
    images = []
    for i in range(batch):
        if samples:
            import cv2

            images.append(cv2.resize(samples[i % len(samples)], (size[1], size[0])))
        else:
            images.append(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return images


class Measurement:
    """Times one configuration, one iteration at a time, so that configurations can be interleaved."""

    def __init__(self, runner: Runner, config, images: list[np.ndarray]):
        self.runner, self.config, self.images = runner, config, images
        self.total: list[float] = []
        self.stages: list[tuple[float, float, float]] = []

    def once(self, record: bool = True) -> None:
        runner = self.runner
        start = time.perf_counter()
        inputs, sizes = preprocess(self.images, self.config, runner.device)
        runner.synchronize()
        t1 = time.perf_counter()
        raw = runner(inputs)
        runner.synchronize()
        t2 = time.perf_counter()
        postprocess(raw, sizes)
        runner.synchronize()
        t3 = time.perf_counter()
        if record:
            self.total.append(t3 - start)
            self.stages.append((t1 - start, t2 - t1, t3 - t2))

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


def run_benchmark(
    sources: list[ModelSource],
    backends: Sequence[str],
    precisions: Sequence[str],
    batches: Sequence[int],
    iters: int,
    warmup: int = 3,
    device: str | None = None,
    cache_dir: str = "export/cache",
    settle: int = 1,
) -> tuple[list[BenchRow], list[str]]:
    """Measure every model x backend x precision x batch, interleaved: each round gives every configuration
    ``settle`` unmeasured iterations, then one measured one. The settling iterations make each measurement
    follow its own configuration, as in a deployed pipeline that runs one model: on a small machine, the first
    iteration after another configuration pays several ms for thread pools and working sets to switch (seen
    in pre-processing at batch 1: ~1 ms alone, 6-7 ms right after another configuration)."""
    from .prune import count_conv_macs, count_params

    rows: list[BenchRow] = []
    skipped: list[str] = []
    measurements: list[tuple[BenchRow, Measurement]] = []
    for source in sources:
        model = source.model()
        params, macs = count_params(model), count_conv_macs(model)
        for backend in backends:
            for precision in precisions:
                try:
                    runner = make_runner(source, backend, precision, device, cache_dir, max(batches))
                except BackendUnavailable as exc:
                    skipped.append(f"{source.name} {backend} {precision}: {exc}")
                    continue
                for batch in batches:
                    row = BenchRow(source.name, backend, precision, batch, file_bytes=source.file_bytes,
                                   params=params, macs=macs)  # fmt: skip
                    m = Measurement(runner, source.config, synthetic_images(batch))
                    # Warm-up doubles as the peak-memory measurement of this configuration alone.
                    if runner.device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(runner.device)
                        before = int(torch.cuda.memory_allocated(runner.device))
                    else:
                        reset_peak_rss()
                        before = current_rss_bytes()
                    for _ in range(warmup):
                        m.once(record=False)
                    weight_bytes = params * (2 if precision == "fp16" else 4)
                    row.peak_memory_bytes, row.memory_kind = m.memory(before, weight_bytes)
                    measurements.append((row, m))
    # Interleave: every configuration once per round (after settling), so machine drift affects all alike.
    from tqdm import tqdm

    for _ in tqdm(range(iters), desc="bench", unit="round"):
        for _, m in measurements:
            for _ in range(settle):
                m.once(record=False)
            m.once()
    for row, m in measurements:
        totals = np.array(m.total) * 1000
        stages = np.median(np.array(m.stages), axis=0) * 1000
        row.p50_ms, row.p90_ms, row.p99_ms = (float(np.percentile(totals, q)) for q in (50, 90, 99))
        row.preprocess_ms, row.inference_ms, row.postprocess_ms = (float(s) for s in stages)
        row.fps = 1000 * row.batch / row.p50_ms
        row.forward_fps = 1000 * row.batch / row.inference_ms
        row.samples = [float(t) for t in totals]
        rows.append(row)
    compare_with_first_model(rows, sources[0].name if sources else "")
    return rows, skipped


def compare_with_first_model(rows: list[BenchRow], baseline: str) -> None:
    """Paper-style changes against the first (dense) model on the same backend, precision and batch."""
    base = {(r.backend, r.precision, r.batch): r for r in rows if r.model == baseline}
    for row in rows:
        ref = base.get((row.backend, row.precision, row.batch))
        if ref is None:
            continue
        row.size_change_pct = 100 * (row.file_bytes / ref.file_bytes - 1)
        row.speed_change_pct = 100 * (row.fps / ref.fps - 1)
        row.memory_change_pct = 100 * (row.peak_memory_bytes / ref.peak_memory_bytes - 1) if ref.peak_memory_bytes else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}%"


def table_rows(rows: list[BenchRow]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "backend", "prec", "batch", "FPS e2e", "FPS fwd", "p50 ms", "p90 ms", "p99 ms",
              "pre/inf/post ms", "size MiB", "params M", "GMACs", "peak MiB", "size", "speed", "memory"]  # fmt: skip
    body = [
        [r.model, r.backend, r.precision, str(r.batch), f"{r.fps:.2f}", f"{r.forward_fps:.2f}", f"{r.p50_ms:.1f}",
         f"{r.p90_ms:.1f}", f"{r.p99_ms:.1f}", f"{r.preprocess_ms:.1f}/{r.inference_ms:.1f}/{r.postprocess_ms:.1f}",
         f"{r.file_bytes / 2**20:.2f}", f"{r.params / 1e6:.2f}", f"{r.macs / 1e9:.2f}",
         f"{r.peak_memory_bytes / 2**20:.0f}", _pct(r.size_change_pct), _pct(r.speed_change_pct), _pct(r.memory_change_pct)]
        for r in rows
    ]  # fmt: skip
    return header, body


def markdown_table(rows: list[BenchRow]) -> str:
    header, body = table_rows(rows)
    return format_markdown_table(body, header)


def plot_rows(rows: list[BenchRow], out_png: str | Path) -> None:
    import io

    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), layout="constrained")
    ax_fps, ax_split = figure.subplots(1, 2)
    labels = [f"{r.model}\n{r.backend} {r.precision} b{r.batch}" for r in rows]
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
    atomic_write_bytes(out_png, buffer.getvalue())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trt_yolact.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="yolact_shapes,yolact_shapes_pruned", help="comma-separated; the first is the baseline")
    parser.add_argument("--config", default=None)
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--settle", type=int, default=1,
                        help="unmeasured iterations of a configuration before each measured one (0: none)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--md", default=None, help="markdown table")
    parser.add_argument("--plot", default=None)
    parser.add_argument("--cache", default="export/cache", help="folder for the ONNX/engines the backends need")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        backends = [b for b in args.backends.split(",") if b]
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown backends {unknown}: use {', '.join(BACKENDS)}")
        batches = [int(b) for b in args.batch.split(",")]
        if args.iters < 1 or min(batches) < 1:
            raise ValueError("--iters and every --batch must be at least 1")
        if args.settle < 0:
            raise ValueError("--settle must be 0 or more")
        sources = [ModelSource.load(w, args.config) for w in args.weights.split(",") if w]
        with torch.inference_mode():
            rows, skipped = run_benchmark(sources, backends, args.precision.split(","), batches, args.iters,
                                          args.warmup, args.device, args.cache, args.settle)  # fmt: skip
    except (CheckpointError, ConfigError, ValueError, OSError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    header, body = table_rows(rows)
    print(format_table(body, header))
    for line in skipped:
        print(f"skipped: {line}")
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "iters": args.iters, "rows": [{k: v for k, v in asdict(r).items() if k != "samples"} for r in rows],
        "skipped": skipped,
    }  # fmt: skip
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2))
    if args.md:
        atomic_write_text(args.md, markdown_table(rows) + "\n")
    if args.plot and rows:
        plot_rows(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
