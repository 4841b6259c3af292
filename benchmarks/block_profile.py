"""Where a model's forward time and conv MACs go, block by block: stem, each backbone stage, FPN, protonet,
prediction head and the rest. Pruning (bottleneck-internal channels) shrinks only the backbone stages, so this
shows how far it can speed a model up.

    python benchmarks/block_profile.py --models yolact_shapes,yolact_shapes_pruned [--batch 8] [--iters 10] \\
        [--settle 1] [--no-fuse] [--json benchmarks/results/block_profile.json] \\
        [--md benchmarks/results/block_profile.md] [--plot benchmarks/results/block_profile.png]
    python benchmarks/block_profile.py --config CONFIG.yaml --ratio 0.8 [--size 320] ...

The second form judges an architecture before anyone trains it: random weights in CONFIG (BN scales spread
so that the global percentile has something to choose), against the same model pruned at --ratio.

Times: eager torch on the CPU in the torch runner's own layout (channels-last), batch norms folded first
(as every deployed form has them) unless ``--no-fuse``, forward hooks around each block, median over
iterations after a warm-up; "other" is the rest of the runner call (softmax, concatenations, priors, the
input's conversion to the runner's layout). MACs: Conv2d multiply-accumulates per image at the model's input
size. Models are measured round-robin, each measured call after ``--settle`` unmeasured ones of its model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from trt_yolact.files import atomic_write_bytes, atomic_write_text
from trt_yolact.model.checkpoint import ModelSource
from trt_yolact.model.fuse import fuse_model, is_fused_state_dict
from trt_yolact.model.stats import conv_macs_by_module
from trt_yolact.model.yolact import Yolact
from trt_yolact.runtime.torch_runner import TorchRunner
from trt_yolact.tables import format_markdown_table, format_table

OTHER = "other"


def block_of(name: str) -> str:
    """The block a module's qualified name belongs to."""
    parts = name.split(".")
    if parts[0] == "backbone":
        return f"stage {int(parts[2]) + 1}" if len(parts) > 2 and parts[1] == "layers" else "stem"
    return {"fpn": "fpn", "proto_net": "protonet", "prediction_layers": "head"}.get(parts[0], OTHER)


def timed_modules(model: Yolact) -> dict[str, nn.Module]:
    """The modules whose calls make up each block (hooked one level below the container that calls them)."""
    modules = {}
    for name, child in model.backbone.named_children():
        if isinstance(child, nn.ModuleList):
            modules.update({f"backbone.{name}.{i}": stage for i, stage in enumerate(child)})
        else:
            modules[f"backbone.{name}"] = child
    modules["fpn"], modules["proto_net"] = model.fpn, model.proto_net
    modules.update({f"prediction_layers.{i}": head for i, head in enumerate(model.prediction_layers)})
    return modules


class BlockTimer:
    """Accumulates wall time per block over one forward pass through pre/post forward hooks."""

    def __init__(self, model: Yolact):
        self.times: dict[str, float] = defaultdict(float)
        self._starts: dict[str, float] = {}
        for name, module in timed_modules(model).items():
            module.register_forward_pre_hook(lambda _m, _i, name=name: self._start(name))
            module.register_forward_hook(lambda _m, _i, _o, name=name: self._stop(name))

    def _start(self, name: str) -> None:
        self._starts[name] = time.perf_counter()

    def _stop(self, name: str) -> None:
        self.times[block_of(name)] += time.perf_counter() - self._starts[name]


@dataclass
class Profiled:
    """One model being profiled: its runner, block timer, per-block MACs and the samples collected."""

    name: str
    runner: TorchRunner
    timer: BlockTimer
    macs: dict[str, int]
    images: torch.Tensor
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


@dataclass
class Summary:
    """What a profile reports: one JSON record per model, the table's rows, and the blocks in timing order."""

    records: list[dict]
    rows: list[list[str]]
    blocks: list[str]


def build_parser() -> argparse.ArgumentParser:
    """The command line: the models (or a config to judge untrained), the measuring settings and the outputs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        default="yolact_shapes,yolact_shapes_pruned",
        help="comma-separated checkpoints or embedded names; the first is the reference",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--no-fuse", action="store_true", help="time the models with their batch norms")
    parser.add_argument(
        "--settle",
        type=int,
        default=1,
        help="unmeasured calls of a model before each measured one (as bench's --settle)",
    )
    parser.add_argument("--config", help="instead of --models: a config (preset or YAML) with random weights")
    parser.add_argument("--ratio", type=float, default=0.8, help="with --config: the pruning ratio to compare")
    parser.add_argument("--size", type=int, default=None, help="with --config: input size (default: its own)")
    parser.add_argument("--json", default="benchmarks/results/block_profile.json")
    parser.add_argument("--md", default="benchmarks/results/block_profile.md")
    parser.add_argument("--plot", default="benchmarks/results/block_profile.png")
    return parser


def prepare_runs(args: argparse.Namespace) -> list[Profiled]:
    """Each model fused (unless ``--no-fuse``) in a torch runner with its block timer, per-block MACs and input."""
    runs = []
    for name, model in candidate_models(args) if args.config else loaded_models(args.models):
        if not args.no_fuse and not is_fused_state_dict(model.state_dict()):
            model = fuse_model(model)
        macs = defaultdict(int)
        for layer, count in conv_macs_by_module(model).items():
            macs[block_of(layer)] += count
        runner = TorchRunner(model, "cpu")
        images = torch.randn(args.batch, 3, model.config.max_size, model.config.max_size)
        runs.append(Profiled(name, runner, BlockTimer(runner.model), macs, images))
    return runs


def measure_once(run: Profiled) -> None:
    """One timed runner call: each block's seconds, the rest of the call as "other", and the total."""
    run.timer.times.clear()
    start = time.perf_counter()
    run.runner(run.images)
    total = time.perf_counter() - start
    for block, seconds in run.timer.times.items():
        run.samples[block].append(seconds)
    run.samples[OTHER].append(total - sum(run.timer.times.values()))
    run.samples["total"].append(total)


def measure(runs: list[Profiled], iters: int, settle: int) -> None:
    """Round-robin over the models after one warm-up call each, so that they share the machine's state."""
    with torch.inference_mode():
        for run in runs:
            run.runner(run.images)  # warm-up
        for _ in range(iters):
            for run in runs:
                # Right after another model, the first call pays for thread pools and working sets to switch.
                for _ in range(settle):
                    run.runner(run.images)
                measure_once(run)


def summarize(runs: list[Profiled], args: argparse.Namespace) -> Summary:
    """Median ms per image, share, MMACs and speed-up against the first model, for each block of each model."""
    first = runs[0]
    blocks = [b for b in first.samples if b != "total"]
    records, rows = [], []
    reference = {b: statistics.median(values) for b, values in first.samples.items()}
    for run in runs:
        ms = {b: 1000 * statistics.median(values) / args.batch for b, values in run.samples.items()}
        record = {
            "model": run.name,
            "batch": args.batch,
            "input_size": run.runner.config.max_size,
            "fused": not args.no_fuse,
            "ms_per_image": ms,
            "conv_macs": dict(run.macs),
        }
        records.append(record)
        for block in blocks + ["total"]:
            block_macs = sum(run.macs.values()) if block == "total" else run.macs.get(block, 0)
            speedup = reference[block] / statistics.median(run.samples[block]) if run.samples[block] else float("nan")
            rows.append(
                [
                    run.name,
                    block,
                    f"{ms[block]:.2f}",
                    f"{100 * ms[block] / ms['total']:.1f}%",
                    f"{block_macs / 1e6:.1f}",
                    f"{speedup:.2f}x",
                ]
            )
    return Summary(records, rows, blocks)


def write_outputs(summary: Summary, reference: str, args: argparse.Namespace) -> None:
    """Prints the table and writes it as markdown, the records with the run's context as JSON, and the plot."""
    header = ["model", "block", "ms/img", "share", "MMACs", f"vs {reference}"]
    print(format_table(summary.rows, header))
    atomic_write_text(args.md, format_markdown_table(summary.rows, header) + "\n")
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "layout": "channels_last",
        "iters": args.iters,
        "rows": summary.records,
    }
    atomic_write_text(args.json, json.dumps(info, indent=2))
    if args.plot:
        atomic_write_bytes(args.plot, stacked_bars(summary.records, summary.blocks))
    print(f"-> {args.json}, {args.md}" + (f", {args.plot}" if args.plot else ""))


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    if args.batch < 1 or args.iters < 1:
        parser.error("--batch and --iters must be at least 1")
    runs = prepare_runs(args)
    measure(runs, args.iters, args.settle)
    write_outputs(summarize(runs, args), runs[0].name, args)
    return 0


def loaded_models(weights: str):
    """(name, model) of each comma-separated checkpoint or embedded name."""
    for source in (ModelSource.load(w) for w in weights.split(",")):
        yield source.name, source.model()


def candidate_models(args: argparse.Namespace):
    """(name, model) of a config with random weights, and of the same model pruned at ``args.ratio``."""
    from gpu_check import random_model

    from trt_yolact.config import get_config
    from trt_yolact.model.prune import prune_model

    config = get_config(args.config)
    if args.size:
        config = config.replace(max_size=args.size)
    dense = random_model(config)
    pruned = prune_model(dense, ratio=args.ratio)[0]  # before any runner changes the dense model's layout
    return [(config.name, dense), (f"{config.name} pruned {args.ratio:g}", pruned)]


def stacked_bars(records: list[dict], blocks: list[str]) -> bytes:
    """One horizontal bar per model, split into its blocks' ms per image."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.6 * len(records)))
    for row, record in enumerate(records):
        left = 0.0
        for index, block in enumerate(blocks):
            width = record["ms_per_image"].get(block, 0.0)
            ax.barh(row, width, left=left, color=plt.cm.tab10(index % 10), label=block if row == 0 else None)
            left += width
    ax.set_yticks(range(len(records)), [r["model"] for r in records])
    ax.invert_yaxis()
    ax.set_xlabel(f"forward ms per image (batch {records[0]['batch']}, torch CPU)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))  # outside: never over a bar
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


if __name__ == "__main__":
    sys.exit(main())
