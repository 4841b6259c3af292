"""GPU check: yolact_base at 550 on torch CUDA — dense vs pruned (ratio 0.6) vs pruned+fused, FP32 vs FP16,
batch 1 and 8, eager and CUDA graphs in NCHW and in channels-last (NHWC) layout, batched GPU post-processing,
peak CUDA memory once warm. FPS use the fastest of the forward variants.

    python benchmarks/gpu_check.py [--json gpu_check.json] [--iters 30]
    python benchmarks/gpu_check.py --device cpu --size 128 --iters 2 --batches 1   (smoke test without a GPU)
    python benchmarks/gpu_check.py --target [--json target.json]   (only the device pipeline's target, below)
    python benchmarks/gpu_check.py --target --device cpu --size 128 --iters 2 --target-batch 2   (its smoke test)

``--target``: yolact_base FP16 at batch 8 through the torch runner, 100 detections per image, 640x480 uint8
frames: the forward pass alone (a CUDA graph) against the whole pipeline in one CUDA graph (device
pre-processing from uint8 frames, forward, static post-processing with full-size masks) plus the upload from
pinned memory and the split per image; the static post-processing alone (its own graph, full-size masks
included) in ms per batch.
Targets: end to end >= 80 % of forward-only FPS, post-processing <= 2 ms per batch. On the CPU the same stages
run eagerly in FP32 (no graphs): that checks the script, not the targets.

Random weights (BN scales drawn so that pruning has something to choose). Prints a table, writes JSON.
Designed to finish well within 10 minutes on one modern GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from trt_yolact.config import PostprocessConfig, get_config
from trt_yolact.files import atomic_write_text
from trt_yolact.inference.device_pipeline import StageGraphs, capture_whole
from trt_yolact.inference.images import synthetic_frames
from trt_yolact.inference.postprocess import postprocess
from trt_yolact.inference.preprocess import FramePreprocessor, stack_frames
from trt_yolact.inference.static_postprocess import postprocess_static_tensors, split_detections
from trt_yolact.model.fuse import fuse_model
from trt_yolact.model.prune import prune_model
from trt_yolact.model.stats import count_conv_macs, count_params
from trt_yolact.model.yolact import Yolact
from trt_yolact.runtime.torch_runner import TorchRunner
from trt_yolact.structures import RawOutputs
from trt_yolact.tables import format_table


def random_model(config, seed: int = 0) -> Yolact:
    generator = torch.Generator().manual_seed(seed)
    model = Yolact(config)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("num_batches_tracked"):
                continue
            elif name.endswith(".weight") and tensor.dim() == 1:  # BN scales: spread for slimming
                tensor.copy_(torch.rand(tensor.shape, generator=generator))
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return model.eval()


def timed(fn, iters: int, sync) -> float:
    times = []
    for _ in range(iters):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def capture_graph(net: Yolact, static_in: torch.Tensor, device: torch.device):
    """A CUDA graph of the forward pass (static shapes, no host sync: it captures whole) and its outputs."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            net(static_in)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = net(static_in)
    return graph, static_out


def measure(model: Yolact, batch: int, precision: str, device: torch.device, iters: int, size: int):
    half = precision == "fp16"
    net = model.to(device)
    net = net.half() if half else net.float()
    dtype = torch.float16 if half else torch.float32
    static_in = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sizes = [(480, 640)] * batch
    with torch.inference_mode():
        for _ in range(3):
            out = net(static_in)
        # Peak memory of inference + post-processing once warm: cuDNN's algorithm search during the first
        # calls borrows workspaces of many GiB that a deployed pipeline never holds again.
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        eager_ms = timed(lambda: net(static_in), iters, sync)
        postprocess(RawOutputs(*(t.float() for t in net(static_in))), sizes)
        sync()
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    # The torch runner runs NHWC on both devices (faster there: benchmarks/RESULTS.md); this keeps checking CUDA.
    # Layout changes happen outside inference mode so that the parameters stay ordinary tensors.
    forward_ms = {"eager": eager_ms}
    for layout, memory_format in (("nhwc", torch.channels_last), ("nchw", torch.contiguous_format)):
        net = net.to(memory_format=memory_format)
        layout_in = static_in.contiguous(memory_format=memory_format)
        with torch.inference_mode():
            if layout == "nhwc":
                for _ in range(3):
                    net(layout_in)
                forward_ms["eager_nhwc"] = timed(lambda net=net, x=layout_in: net(x), iters, sync)
            if device.type == "cuda":
                graph, out = capture_graph(net, layout_in, device)
                forward_ms[f"graph_{layout}"] = timed(graph.replay, iters, sync)
    with torch.inference_mode():
        raw = RawOutputs(*(t.float() for t in out))
        post_ms = timed(lambda: postprocess(raw, sizes), max(3, iters // 3), sync)
        dets = postprocess(raw, sizes)
    net.float().cpu()
    best = min(forward_ms, key=forward_ms.get)
    return {
        **{f"{name}_ms": ms for name, ms in forward_ms.items()},
        "best_forward": best,
        "postprocess_ms": post_ms,
        "fps_forward": 1000 * batch / forward_ms[best],
        "fps_end_to_end": 1000 * batch / (forward_ms[best] + post_ms),
        "peak_cuda_bytes": int(peak),
        "detections_per_image": sum(len(d) for d in dets) / batch,
    }


HEADER = [
    "model",
    "prec",
    "batch",
    "eager ms",
    "eager NHWC ms",
    "graph ms",
    "graph NHWC ms",
    "post ms",
    "FPS fwd",
    "FPS e2e",
    "peak MiB",
    "params M",
    "GMACs",
]


def build_parser() -> argparse.ArgumentParser:
    """The command line: device, input size, batches, iterations and the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=550)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--json", default="gpu_check.json")
    parser.add_argument("--target", action="store_true", help="only the device pipeline's target (see above)")
    parser.add_argument("--target-batch", type=int, default=8)
    return parser


TARGET_END_TO_END_SHARE = 0.8  # end-to-end FPS at least this share of forward-only FPS
TARGET_POST_MS = 2.0  # static post-processing per batch


def _stage_calls(runner: TorchRunner, config, host: torch.Tensor) -> dict:
    """The calls to time, each taking no argument. On CUDA: each stage's own graph, and the whole pipeline in
    one graph fed straight from the pinned host frames (the graph's input copy is the upload) and split per
    image; on the CPU the same stages, eagerly."""
    cfg, sizes = PostprocessConfig(), [(int(host.shape[1]), int(host.shape[2]))] * int(host.shape[0])
    if runner.device.type == "cuda":
        stages = StageGraphs(runner, config, cfg, tuple(host.shape))
        whole = capture_whole(runner, config, cfg, tuple(host.shape))
        stages.pre(host)
        stages.forward()
        calls = {"pre": stages.pre, "forward": stages.forward, "post": stages.post}
        calls["end_to_end"] = lambda: split_detections(whole(host), sizes, cfg)
        return {**calls, "raw": RawOutputs(*stages.forward.outputs), "sizes": sizes}
    preprocessor = FramePreprocessor(config, runner.device)
    images = preprocessor(host)
    raw = runner(images)
    return {
        "pre": lambda: preprocessor(host),
        "forward": lambda: runner(images),
        "post": lambda: split_detections(postprocess_static_tensors(raw, cfg), sizes, cfg),
        "end_to_end": lambda: split_detections(postprocess_static_tensors(runner(preprocessor(host)), cfg), sizes, cfg),
        "raw": raw,
        "sizes": sizes,
    }


def _target_times(calls: dict, iters: int, sync) -> dict[str, float]:
    """Median ms per batch of each stage, the dynamic post-processing and the whole pipeline."""
    times = {f"{stage}_ms": timed(calls[stage], iters, sync) for stage in ("pre", "forward", "post")}
    times["post_dynamic_ms"] = timed(lambda: postprocess(calls["raw"], calls["sizes"]), max(3, iters // 3), sync)
    times["end_to_end_ms"] = timed(calls["end_to_end"], iters, sync)
    return times


def _same_detections(raw: RawOutputs, static, size) -> dict[str, float]:
    """How the graph's detections compare with the dynamic path's on the same raw outputs."""
    dynamic = postprocess(raw, [size] * len(static))
    same = all(
        a.classes.tolist() == b.classes.tolist() and torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
        for a, b in zip(dynamic, static)
    )
    pixels = sum(int((a.masks != b.masks).sum()) for a, b in zip(dynamic, static))
    total = max(1, sum(a.masks.numel() for a in dynamic))
    return {"same_boxes_scores_classes": same, "mask_pixels_differing": pixels / total}


def measure_target(args: argparse.Namespace, device: torch.device) -> dict:
    """The device pipeline's target measurement (see the module docstring); one record."""
    precision, batch = ("fp16" if device.type == "cuda" else "fp32"), args.target_batch
    config = get_config("yolact_base").replace(max_size=args.size)
    runner = TorchRunner(random_model(config), device, precision=precision)
    host = stack_frames(synthetic_frames(batch), pin=device.type == "cuda")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        calls = _stage_calls(runner, config, host)
        stage_ms = _target_times(calls, args.iters, sync)
        detections = calls["end_to_end"]()
        comparison = _same_detections(calls["raw"], detections, calls["sizes"][0])
    fps_forward = 1000 * batch / stage_ms["forward_ms"]
    fps_end_to_end = 1000 * batch / stage_ms["end_to_end_ms"]
    return {
        "model": "yolact_base (random weights)",
        "precision": precision,
        "batch": batch,
        "graphs": device.type == "cuda",
        **stage_ms,
        "fps_forward": fps_forward,
        "fps_end_to_end": fps_end_to_end,
        "end_to_end_share": fps_end_to_end / fps_forward,
        "detections_per_image": sum(len(d) for d in detections) / batch,
        **comparison,
        "target_end_to_end_met": fps_end_to_end >= TARGET_END_TO_END_SHARE * fps_forward,
        "target_post_met": stage_ms["post_ms"] <= TARGET_POST_MS,
    }


TARGET_HEADER = ["prec", "batch", "graphs", "pre ms", "fwd ms", "post ms", "dynamic post ms", "e2e ms", "FPS fwd"]
TARGET_HEADER += ["FPS e2e", "e2e/fwd", "dets/img", "same dets", "targets"]


def target_line(r: dict) -> list:
    """A row of the target table."""
    met = "met" if r["target_end_to_end_met"] and r["target_post_met"] else "missed"
    return [
        r["precision"],
        r["batch"],
        "yes" if r["graphs"] else "no (eager)",
        *(f"{r[key]:.2f}" for key in ("pre_ms", "forward_ms", "post_ms", "post_dynamic_ms", "end_to_end_ms")),
        f"{r['fps_forward']:.1f}",
        f"{r['fps_end_to_end']:.1f}",
        f"{100 * r['end_to_end_share']:.0f} %",
        f"{r['detections_per_image']:.0f}",
        "yes" if r["same_boxes_scores_classes"] else "NO",
        met if r["graphs"] else "-",
    ]


def variants(size: int) -> dict[str, Yolact]:
    """yolact_base at ``size`` with random weights; pruned as in the paper (bottleneck-internal channels,
    ratio 0.6) and pruned whole (every channel group, ratio 0.5: the file at 26 %, conv MACs at 28 %), both
    fused as deployed."""
    config = get_config("yolact_base").replace(max_size=size)
    dense = random_model(config)
    internal, _ = prune_model(dense, ratio=0.6)
    whole, _ = prune_model(dense, ratio=0.5, scope="all")
    return {"dense": dense, "internal-0.6+fused": fuse_model(internal), "all-0.5+fused": fuse_model(whole)}


def table_line(record: dict) -> list:
    """A row of the printed table; "-" for a forward variant not measured on this device."""
    ms = lambda key: "-" if f"{key}_ms" not in record else f"{record[f'{key}_ms']:.2f}"
    return [
        record["model"],
        record["precision"],
        record["batch"],
        ms("eager"),
        ms("eager_nhwc"),
        ms("graph_nchw"),
        ms("graph_nhwc"),
        ms("postprocess"),
        f"{record['fps_forward']:.1f}",
        f"{record['fps_end_to_end']:.1f}",
        f"{record['peak_cuda_bytes'] / 2**20:.0f}",
        f"{record['params'] / 1e6:.1f}",
        f"{record['macs'] / 1e9:.1f}",
    ]


def measure_all(models: dict[str, Yolact], device: torch.device, args: argparse.Namespace) -> list[dict]:
    """Every model at every precision (FP16 on CUDA only) and batch; prints each row as soon as it is measured."""
    precisions = ["fp32", "fp16"] if device.type == "cuda" else ["fp32"]
    records = []
    for name, model in models.items():
        params, macs = count_params(model), count_conv_macs(model)
        for precision in precisions:
            for batch in (int(b) for b in args.batches.split(",")):
                result = measure(model, batch, precision, device, args.iters, args.size)
                records.append(
                    {"model": name, "precision": precision, "batch": batch, "params": params, "macs": macs, **result}
                )
                print(table_line(records[-1]), flush=True)
    return records


def add_changes(records: list[dict]) -> None:
    """Each record's end-to-end speed and peak memory change against the dense model at its precision and batch."""
    base = {(r["precision"], r["batch"]): r for r in records if r["model"] == "dense"}
    for r in records:
        b = base[(r["precision"], r["batch"])]
        r["speed_change_pct"] = 100 * (r["fps_end_to_end"] / b["fps_end_to_end"] - 1)
        r["memory_change_pct"] = (
            100 * (r["peak_cuda_bytes"] / b["peak_cuda_bytes"] - 1) if b["peak_cuda_bytes"] else None
        )


def write_outputs(records: list[dict], device: torch.device, args: argparse.Namespace) -> None:
    """Prints the table and writes the records with the device and settings as JSON."""
    print(format_table([table_line(r) for r in records], HEADER))
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "device": _device_name(device),
        "torch": torch.__version__,
        "size": args.size,
        "iters": args.iters,
        "rows": records,
    }
    atomic_write_text(args.json, json.dumps(info, indent=2))
    print(f"-> {args.json}")


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def main() -> int:
    args = build_parser().parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch (use --device cpu for a smoke test)", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    if args.target:
        record = measure_target(args, device)
        print(format_table([target_line(record)], TARGET_HEADER))
        info = {"date": time.strftime("%Y-%m-%d"), "device": _device_name(device), "torch": torch.__version__}
        atomic_write_text(
            args.json, json.dumps({**info, "size": args.size, "iters": args.iters, "target": record}, indent=2)
        )
        print(f"-> {args.json}")
        return 0
    records = measure_all(variants(args.size), device, args)
    add_changes(records)
    write_outputs(records, device, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
