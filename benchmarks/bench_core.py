"""Core benchmark: per-image forward and post-processing time of yolact_base on this machine.

    python benchmarks/bench_core.py [--batches 1,8] [--repeats 3] [--json benchmarks/results/core_cpu.json]

Random weights drawn like a trained network's scale (so that ~100 detections per image survive, the
post-processing worst case), 640x480 images. Stages are timed interleaved within one run, median of
``--repeats``; the target is post-processing <= 10 % of end-to-end time at batch 8.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from trt_yolact.config import YolactConfig, get_config
from trt_yolact.files import atomic_write_text
from trt_yolact.inference.postprocess import postprocess
from trt_yolact.inference.preprocess import preprocess
from trt_yolact.model.yolact import Yolact
from trt_yolact.tables import format_table


def randomize(model: Yolact, seed: int = 0) -> Yolact:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return model.eval()


HEADER = ["batch", "pre ms/img", "forward ms/img", "post ms/img", "total ms/img", "post share", "dets/img"]


@dataclass
class BatchTiming:
    """One batch size's median ms per image of each stage, and the detections per image it produced."""

    batch: int
    median: dict[str, float]
    detections: float

    @property
    def total(self) -> float:
        return sum(self.median.values())

    @property
    def share(self) -> float:
        return self.median["postprocess"] / self.total


def build_parser() -> argparse.ArgumentParser:
    """The command line: config, batch sizes, repeats and the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="yolact_base")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/results/core_cpu.json")
    return parser


def time_batch(model: Yolact, config: YolactConfig, images: list[np.ndarray], repeats: int) -> BatchTiming:
    """Pre-processing, forward and post-processing of one batch, timed back to back ``repeats`` times."""
    batch = len(images)
    model(preprocess(images[:1], config)[0])  # warm-up
    times = {"preprocess": [], "forward": [], "postprocess": []}
    detections = 0
    for _ in range(repeats):
        start = time.perf_counter()
        inputs, sizes = preprocess(images, config)
        after_pre = time.perf_counter()
        raw = model(inputs)
        after_forward = time.perf_counter()
        results = postprocess(raw, sizes)
        end = time.perf_counter()
        times["preprocess"].append(after_pre - start)
        times["forward"].append(after_forward - after_pre)
        times["postprocess"].append(end - after_forward)
        detections = sum(len(r) for r in results) / batch
    median = {k: statistics.median(v) / batch * 1000 for k, v in times.items()}
    return BatchTiming(batch, median, detections)


def record_of(timing: BatchTiming) -> dict:
    """The JSON record of one batch size."""
    return {
        "batch": timing.batch,
        **{f"{k}_ms_per_image": v for k, v in timing.median.items()},
        "end_to_end_ms_per_image": timing.total,
        "postprocess_share": timing.share,
        "detections_per_image": timing.detections,
    }


def table_line(timing: BatchTiming) -> list:
    """The printed table's row of one batch size."""
    median = timing.median
    return [
        timing.batch,
        f"{median['preprocess']:.1f}",
        f"{median['forward']:.1f}",
        f"{median['postprocess']:.1f}",
        f"{timing.total:.1f}",
        f"{100 * timing.share:.1f}%",
        f"{timing.detections:.0f}",
    ]


def write_outputs(timings: list[BatchTiming], config: YolactConfig, args: argparse.Namespace) -> None:
    """Prints the table and writes the records with the machine and settings as JSON."""
    print(format_table([table_line(t) for t in timings], HEADER))
    report = {
        "config": config.name,
        "input": "640x480 BGR",
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "rows": [record_of(t) for t in timings],
    }
    atomic_write_text(args.json, json.dumps(report, indent=2))
    print(f"-> {args.json}")


def main() -> None:
    args = build_parser().parse_args()
    torch.set_grad_enabled(False)
    config = get_config(args.config)
    model = randomize(Yolact(config))
    rng = np.random.default_rng(0)
    timings = []
    for batch in (int(b) for b in args.batches.split(",")):
        images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(batch)]
        timings.append(time_batch(model, config, images, args.repeats))
    write_outputs(timings, config, args)


if __name__ == "__main__":
    main()
