"""Static-shape vs dynamic post-processing (and device vs reference pre-processing) on this machine's CPU.

    python benchmarks/static_vs_dynamic.py [--rounds 30] [--json benchmarks/results/static_vs_dynamic_cpu.json]

The shipped demo model (``yolact_shapes``) on 40 generated shapes images (seed 12345) scaled to 640x480, in
batches of 8; the raw outputs are computed once. Each round times every batch through both variants of each
stage, alternating which goes first, so that the machine's drift affects them alike; medians over rounds
and batches, ms per batch of 8. Both post-processing paths give the same detections (checked here too).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time

import cv2
import torch

from trt_yolact.config import PostprocessConfig
from trt_yolact.data.synthetic import generate_dataset
from trt_yolact.files import atomic_write_text
from trt_yolact.inference.postprocess import postprocess
from trt_yolact.inference.preprocess import FramePreprocessor, preprocess, upload_frames
from trt_yolact.inference.static_postprocess import postprocess_static
from trt_yolact.model.checkpoint import load_model
from trt_yolact.tables import format_markdown_table, format_table


def frames_in_batches(batch: int = 8) -> list[list]:
    """The 40 shapes images at 640x480, in batches."""
    with tempfile.TemporaryDirectory() as folder:
        paths = generate_dataset(folder, 0, 40, 256, seed=12345)
        images = [cv2.resize(cv2.imread(str(p)), (640, 480)) for p in sorted(paths["val_images"].glob("*.png"))]
    return [images[i : i + batch] for i in range(0, len(images), batch)]


def timed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def measure(model, batches: list[list], rounds: int) -> dict[str, list[float]]:
    """Per variant, the ms of every batch in every round, the two variants of a stage alternating first."""
    config, cfg = model.config, PostprocessConfig()
    preprocessor = FramePreprocessor(config)
    raws = [(model(preprocess(images, config)[0]), [(480, 640)] * len(images)) for images in batches]
    variants = {
        "pre reference": [lambda images=images: preprocess(images, config) for images in batches],
        "pre device": [lambda images=images: preprocessor(upload_frames(images, "cpu")) for images in batches],
        "post dynamic": [lambda r=r, s=s: postprocess(r, s, cfg) for r, s in raws],
        "post static": [lambda r=r, s=s: postprocess_static(r, s, cfg) for r, s in raws],
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    pairs = (("pre reference", "pre device"), ("post dynamic", "post static"))
    for round_index in range(rounds):
        for index in range(len(batches)):
            for pair in pairs:
                for name in pair if round_index % 2 == 0 else pair[::-1]:
                    samples[name].append(timed_ms(variants[name][index]))
    return samples


def same_detections(model, batches: list[list]) -> tuple[bool, float]:
    """Whether both post-processing paths give equal detections on every batch, and detections per image."""
    same, count = True, 0
    for images in batches:
        raw = model(preprocess(images, model.config)[0])
        dynamic, static = postprocess(raw, [(480, 640)] * 8), postprocess_static(raw, [(480, 640)] * 8)
        for a, b in zip(dynamic, static):
            same &= all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("boxes", "scores", "classes", "masks"))
            count += len(a)
    return same, count / (8 * len(batches))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", default="benchmarks/results/static_vs_dynamic_cpu.json")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, batches = load_model("yolact_shapes").eval(), frames_in_batches()
    model(preprocess(batches[0], model.config)[0])  # warm-up
    samples = measure(model, batches, args.rounds)
    same, per_image = same_detections(model, batches)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    rows = [[name, f"{ms:.2f}", len(samples[name])] for name, ms in medians.items()]
    print(format_table(rows, ["variant", "median ms / batch of 8", "samples"]))
    print(f"same detections: {same}; {per_image:.1f} detections per image")
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "median_ms_per_batch": medians,
        "same_detections": same,
        "detections_per_image": per_image,
        "markdown": format_markdown_table(rows, ["variant", "median ms / batch of 8", "samples"]),
    }
    atomic_write_text(args.json, json.dumps(report, indent=2))
    print(f"-> {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
