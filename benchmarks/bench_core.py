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

import numpy as np
import torch

from trt_yolact.config import get_config
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="yolact_base")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/results/core_cpu.json")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    config = get_config(args.config)
    model = randomize(Yolact(config))
    rng = np.random.default_rng(0)
    rows, records = [], []
    for batch in (int(b) for b in args.batches.split(",")):
        images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(batch)]
        model(preprocess(images[:1], config)[0])  # warm-up
        times = {"preprocess": [], "forward": [], "postprocess": []}
        detections = 0
        for _ in range(args.repeats):
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
        total = sum(median.values())
        share = median["postprocess"] / total
        records.append(
            {
                "batch": batch,
                **{f"{k}_ms_per_image": v for k, v in median.items()},
                "end_to_end_ms_per_image": total,
                "postprocess_share": share,
                "detections_per_image": detections,
            }
        )
        rows.append(
            [
                batch,
                f"{median['preprocess']:.1f}",
                f"{median['forward']:.1f}",
                f"{median['postprocess']:.1f}",
                f"{total:.1f}",
                f"{100 * share:.1f}%",
                f"{detections:.0f}",
            ]
        )
    print(
        format_table(
            rows, ["batch", "pre ms/img", "forward ms/img", "post ms/img", "total ms/img", "post share", "dets/img"]
        )
    )
    report = {
        "config": config.name,
        "input": "640x480 BGR",
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "rows": records,
    }
    atomic_write_text(args.json, json.dumps(report, indent=2))
    print(f"-> {args.json}")


if __name__ == "__main__":
    main()
