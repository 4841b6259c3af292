"""Channel pruning by batch-norm scale factors (network slimming), as in Ning et al. 2023.

Prunable channels are the block-internal ones, whose removal changes no tensor outside the block: in every
ResNet bottleneck the outputs of ``bn1`` (conv1 -> conv2) and ``bn2`` (conv2 -> conv3), in every DarkNet
residual block the outputs of ``conv1`` (conv1 -> conv2). Channels tied to a residual sum (``bn3``,
``downsample``, DarkNet ``conv2`` outputs, the stem) are kept.

Compensation. A channel ``c`` whose scale ``gamma_c`` is 0 outputs the constant ``a_c = act(beta_c)`` after
its BN and activation (ReLU, or LeakyReLU in DarkNet), whatever the input. Removing it takes ``a_c`` away
from the next conv, whose output then lacks ``sum_kl W[:, c, k, l] * a_c`` per output channel. The next conv
has no bias but is always followed by a BN in eval mode, so that constant is folded into the next BN's
running mean: ``mean_next -= sum_kl W[:, c, k, l] * a_c``. Exactness:

* next conv 1x1 (``conv3`` after ``bn2``): exact everywhere, for any ``beta_c``;
* next conv 3x3 with zero padding (``conv2`` after ``bn1``, DarkNet ``conv2``): exact in the interior. At the
  one-pixel border some kernel taps read padding zeros, not ``a_c``, so the fold over-compensates there by
  the weights of the taps that fall outside. This vanishes when ``a_c == 0``: ReLU with ``beta_c <= 0``,
  LeakyReLU with ``beta_c == 0``. No per-channel bias can do better: the border error is position
  dependent.

A removed channel with a small but non-zero ``gamma_c`` is approximated by the same constant (its BN output
has mean ``beta_c``); that is the loss that fine-tuning recovers. In train mode BN uses batch statistics,
which absorb a constant shift anyway, so fine-tuning a pruned model is unaffected by the fold.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import PruneError, UsageError
from ..files import atomic_write_bytes
from ..tables import format_table
from .checkpoint import build_model, choose_config, config_advice, read_checkpoint, save_checkpoint
from .fuse import fuse_model, is_fused_state_dict
from .stats import checkpoint_bytes, count_conv_macs, count_params, input_hw
from .yolact import Bottleneck, DarkNetBlock, Yolact

BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")
# State-dict names of prunable BN scales (the same set as prunable_layers, for models not yet built).
PRUNABLE_GAMMA_KEY = re.compile(r"^backbone\.layers\.(\d+)\.(\d+)\.(bn1|bn2|conv1\.1)\.weight$")


# ------------------------------------------------------------------------------------- prunable layers
@dataclass(frozen=True)
class PrunableLayer:
    """One prunable set of channels: ``conv`` -> ``bn`` -> activation -> ``next_conv`` -> ``next_bn``."""

    name: str  # module name of the BN, the layer's name in reports
    conv: str
    bn: str
    next_conv: str
    next_bn: str
    negative_slope: float  # of the activation after ``bn``: 0 for ReLU
    next_kernel: tuple[int, int]  # 1x1: compensation exact everywhere; 3x3: exact in the interior

    @property
    def stage(self) -> int:
        return int(self.name.split(".")[2])


def prunable_layers(model: nn.Module) -> list[PrunableLayer]:
    """Prunable layers of ``model`` in module order; blocks whose BN was fused away are skipped."""
    layers = []
    for prefix, module in model.named_modules():
        if isinstance(module, Bottleneck):
            for conv, bn, next_conv, next_bn in (("conv1", "bn1", "conv2", "bn2"), ("conv2", "bn2", "conv3", "bn3")):
                if isinstance(getattr(module, bn), nn.BatchNorm2d):
                    layers.append(
                        PrunableLayer(
                            f"{prefix}.{bn}",
                            f"{prefix}.{conv}",
                            f"{prefix}.{bn}",
                            f"{prefix}.{next_conv}",
                            f"{prefix}.{next_bn}",
                            0.0,
                            tuple(getattr(module, next_conv).kernel_size),
                        )
                    )
        elif isinstance(module, DarkNetBlock) and isinstance(module.conv1[1], nn.BatchNorm2d):
            layers.append(
                PrunableLayer(
                    f"{prefix}.conv1.1",
                    f"{prefix}.conv1.0",
                    f"{prefix}.conv1.1",
                    f"{prefix}.conv2.0",
                    f"{prefix}.conv2.1",
                    float(module.conv1[2].negative_slope),
                    tuple(module.conv2[0].kernel_size),
                )
            )
    return layers


def prunable_batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The BNs whose channels may be pruned (the ones the sparsity penalty applies to)."""
    modules = dict(model.named_modules())
    return [modules[layer.bn] for layer in prunable_layers(model)]


# ------------------------------------------------------------------------------------ channel selection
def global_threshold(gammas: Mapping[str, torch.Tensor], ratio: float) -> float:
    """The |gamma| at the ``ratio`` quantile over all layers: the ``round(ratio * N)``-th smallest."""
    values = torch.cat([g.detach().abs().flatten().double().cpu() for g in gammas.values()])
    k = min(len(values), max(1, round(ratio * len(values))))
    return float(torch.kthvalue(values, k).values)


def select_channels(
    gammas: Mapping[str, torch.Tensor],
    ratio: float | None = None,
    threshold: float | None = None,
    min_keep: int = 8,
    round_to: int = 8,
) -> dict[str, torch.Tensor]:
    """Kept channel indices (sorted ``int64``) per layer.

    A channel survives the threshold when ``|gamma| > t``; ``t`` is ``threshold``, or with ``ratio`` the
    ``round(ratio * N)``-th smallest |gamma| over all layers (so at least that share is pruned, more on
    ties). Per layer the kept count is then raised to ``min_keep`` and rounded up to a multiple of
    ``round_to`` (never above the layer's width), taking the channels of largest |gamma| (ties: lower index).
    """
    _check_selection_options(ratio, threshold, min_keep, round_to)
    if not gammas:
        raise PruneError("no prunable layers: nothing to select from")
    for name, gamma in gammas.items():
        if gamma.dim() != 1 or gamma.numel() == 0:
            raise PruneError(f"layer {name}: BN scales must be a non-empty vector, got shape {list(gamma.shape)}")
        if not torch.isfinite(gamma).all():
            raise PruneError(f"layer {name}: BN scales are not all finite")
    largest = max(float(g.detach().abs().max()) for g in gammas.values())
    t = global_threshold(gammas, ratio) if ratio is not None else float(threshold)
    if largest <= t:
        if ratio is not None:
            raise PruneError(
                f"every |gamma| equals {t:g}: the BN scales do not rank the channels (untrained model?); "
                "train with --sparsity first"
            )
        raise PruneError(
            f"threshold {t:g} is at or above every |gamma| (the largest is {largest:.4g}): it would empty every "
            "layer; use a smaller --threshold or a ratio (e.g. --ratio 0.5)"
        )
    kept = {}
    for name, gamma in gammas.items():
        magnitude = gamma.detach().abs().cpu()
        width = magnitude.numel()
        count = max(int((magnitude > t).sum()), min(min_keep, width))
        count = min(width, math.ceil(count / round_to) * round_to)
        order = torch.sort(-magnitude, stable=True).indices
        kept[name] = torch.sort(order[:count]).values.long()
    return kept


def _check_selection_options(ratio: float | None, threshold: float | None, min_keep: int, round_to: int) -> None:
    if (ratio is None) == (threshold is None):
        raise PruneError("give exactly one of ratio and threshold")
    if ratio is not None and not 0 < ratio < 1:
        raise PruneError(f"ratio must be between 0 and 1 (exclusive), got {ratio:g}")
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise PruneError(f"threshold must be a finite number >= 0, got {threshold:g}")
    if min_keep < 1:
        raise PruneError(f"min-keep must be at least 1 (a layer is never emptied), got {min_keep}")
    if round_to < 1:
        raise PruneError(f"round-to must be at least 1, got {round_to}")


# ---------------------------------------------------------------------------------------------- report
@dataclass
class LayerPrune:
    name: str
    total: int
    kept: int
    max_pruned_gamma: float  # largest |gamma| removed (0 when none): how lossy the removal is


@dataclass
class PruneReport:
    config: str
    ratio: float | None
    threshold: float  # the |gamma| threshold used (from the ratio when one was given)
    min_keep: int
    round_to: int
    input_size: tuple[int, int]  # MACs are for one image of this size
    layers: list[LayerPrune]
    params_before: int
    params_after: int
    macs_before: int  # Conv2d multiply-accumulates only
    macs_after: int
    bytes_before: int  # checkpoint file sizes
    bytes_after: int
    fused: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def channels_before(self) -> int:
        return sum(layer.total for layer in self.layers)

    @property
    def channels_after(self) -> int:
        return sum(layer.kept for layer in self.layers)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["channels_before"] = self.channels_before
        data["channels_after"] = self.channels_after
        return data

    def table(self) -> str:
        rows = [
            [
                row.name,
                str(row.kept),
                str(row.total),
                f"{100 * row.kept / row.total:.0f}%",
                f"{row.max_pruned_gamma:.3g}",
            ]
            for row in self.layers
        ]
        per_layer = format_table(rows, ["layer", "kept", "total", "kept%", "max pruned |gamma|"], True)
        h, w = self.input_size
        totals = [
            [title, show(before), show(after), _ratio(after, before)]
            for title, show, before, after in (
                ("prunable channels", str, self.channels_before, self.channels_after),
                ("parameters", _count, self.params_before, self.params_after),
                (f"conv MACs @ {h}x{w}", _count, self.macs_before, self.macs_after),
                ("checkpoint file", _mib, self.bytes_before, self.bytes_after),
            )
        ]
        rule = f"ratio {self.ratio:g} -> " if self.ratio is not None else ""
        header = (
            f"{self.config}: {rule}|gamma| threshold {self.threshold:.4g}, min-keep {self.min_keep}, "
            f"round-to {self.round_to}{', BN fused' if self.fused else ''}"
        )
        lines = [header, per_layer, "", format_table(totals, ["", "before", "after", "after/before"], True)]
        lines.append("MACs count Conv2d layers only (BN, activations, resizing and softmax are not counted).")
        lines.extend(self.notes)
        return "\n".join(lines)


def _count(value: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return str(value)


def _mib(size: int) -> str:
    return f"{size / 2**20:.2f} MiB"


def _ratio(after: int, before: int) -> str:
    return f"{100 * after / before:.1f}%" if before else "-"


# ------------------------------------------------------------------------------------------- pruning
@dataclass(frozen=True)
class PruneOptions:
    ratio: float | None = None
    threshold: float | None = None
    min_keep: int = 8
    round_to: int = 8
    compensate: bool = True  # fold removed channels' constant outputs into the next BN (see module doc)
    input_size: int | tuple[int, int] | None = None  # for MACs; None = the config's max_size

    def __post_init__(self) -> None:
        _check_selection_options(self.ratio, self.threshold, self.min_keep, self.round_to)


def prune_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    layers: Sequence[PrunableLayer],
    kept: Mapping[str, torch.Tensor],
    compensate: bool = True,
) -> dict[str, torch.Tensor]:
    """The narrower state dict: ``conv`` rows, ``bn`` entries and ``next_conv`` columns of removed channels
    are dropped; with ``compensate`` their constant outputs are folded into ``next_bn.running_mean``."""
    state = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    # Fold first, on the full tensors: a next conv's rows may be pruned too (bn1 -> conv2 -> bn2).
    if compensate:
        for layer in layers:
            removed = _complement(kept[layer.name], state[f"{layer.bn}.weight"].numel())
            if removed.numel() == 0:
                continue
            beta = state[f"{layer.bn}.bias"][removed].double()
            constant = torch.where(beta >= 0, beta, beta * layer.negative_slope)  # act(beta)
            weight = state[f"{layer.next_conv}.weight"][:, removed].double()
            shift = (weight.sum(dim=(2, 3)) * constant).sum(dim=1)
            mean = state[f"{layer.next_bn}.running_mean"]
            state[f"{layer.next_bn}.running_mean"] = (mean.double() - shift).to(mean.dtype)
    for layer in layers:
        index = kept[layer.name]
        state[f"{layer.conv}.weight"] = state[f"{layer.conv}.weight"][index].clone()
        if f"{layer.conv}.bias" in state:
            state[f"{layer.conv}.bias"] = state[f"{layer.conv}.bias"][index].clone()
        for suffix in BN_SUFFIXES:
            state[f"{layer.bn}.{suffix}"] = state[f"{layer.bn}.{suffix}"][index].clone()
        state[f"{layer.next_conv}.weight"] = state[f"{layer.next_conv}.weight"][:, index].clone()
    return state


def _complement(kept: torch.Tensor, width: int) -> torch.Tensor:
    mask = torch.ones(width, dtype=torch.bool)
    mask[kept] = False
    return mask.nonzero().flatten()


def prune_model(
    model: Yolact,
    ratio: float | None = None,
    threshold: float | None = None,
    min_keep: int = 8,
    round_to: int = 8,
    *,
    compensate: bool = True,
    input_size: int | tuple[int, int] | None = None,
) -> tuple[Yolact, PruneReport]:
    """Prune ``model`` (left untouched) by BN scales; the result is built from the narrower state dict
    through the same architecture-from-shapes path as any checkpoint, in eval mode on the model's device."""
    options = PruneOptions(ratio, threshold, min_keep, round_to, compensate, input_size)
    layers = prunable_layers(model)
    if not layers:
        raise PruneError("the model has no prunable batch norms (already fused, or no residual blocks)")
    modules = dict(model.named_modules())
    gammas = {layer.name: modules[layer.bn].weight.detach().cpu() for layer in layers}
    kept = select_channels(gammas, options.ratio, options.threshold, options.min_keep, options.round_to)
    state = prune_state_dict(model.state_dict(), layers, kept, options.compensate)
    device = next(model.parameters()).device
    pruned = build_model(state, model.config, source="pruned state dict").to(device)

    used = global_threshold(gammas, options.ratio) if options.ratio is not None else float(options.threshold)
    rows = []
    for layer in layers:
        magnitude = gammas[layer.name].abs()
        removed = _complement(kept[layer.name], magnitude.numel())
        worst = float(magnitude[removed].max()) if removed.numel() else 0.0
        rows.append(LayerPrune(layer.name, magnitude.numel(), int(kept[layer.name].numel()), worst))
    report = PruneReport(
        config=model.config.name,
        ratio=options.ratio,
        threshold=used,
        min_keep=options.min_keep,
        round_to=options.round_to,
        input_size=input_hw(model, options.input_size),
        layers=rows,
        params_before=count_params(model),
        params_after=count_params(pruned),
        macs_before=count_conv_macs(model, options.input_size),
        macs_after=count_conv_macs(pruned, options.input_size),
        bytes_before=checkpoint_bytes(model),
        bytes_after=checkpoint_bytes(pruned),
    )
    return pruned, report


# ------------------------------------------------------------------------------------------ histograms
def gammas_by_stage(source: nn.Module | Mapping[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """|gamma| of the prunable BNs of a model or a state dict, concatenated per backbone stage."""
    stages: dict[int, list[torch.Tensor]] = {}
    if isinstance(source, nn.Module):
        modules = dict(source.named_modules())
        for layer in prunable_layers(source):
            stages.setdefault(layer.stage, []).append(modules[layer.bn].weight.detach().abs().float().cpu())
    else:
        for key, value in source.items():
            match = PRUNABLE_GAMMA_KEY.match(key)
            # DarkNet's conv1.1 pattern never matches a stage's first (stride-2) conv: its keys are `S.0.1`.
            if match:
                stages.setdefault(int(match.group(1)), []).append(value.detach().abs().float().cpu())
    if not stages:
        raise PruneError("no prunable batch-norm scales found (a fused model, or not a YOLACT backbone?)")
    return {stage: torch.cat(values) for stage, values in sorted(stages.items())}


GAMMA_PLOT_FLOOR = 1e-6


def plot_gamma_histograms(
    model_or_state_dicts: Sequence[nn.Module | Mapping[str, torch.Tensor]],
    labels: Sequence[str],
    out_png: str | Path,
    bins: int = 50,
) -> Path:
    """One panel per backbone stage, one histogram of |gamma| per source (e.g. before and after sparsity
    training), on shared log-spaced bins (sparsity training spreads |gamma| over decades: on a linear axis
    the pruned and the kept channels would share one bar) and a log count axis. Written atomically."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    if len(model_or_state_dicts) != len(labels) or not labels:
        raise UsageError(f"need one label per model: {len(model_or_state_dicts)} models, {len(labels)} labels")
    per_source = [gammas_by_stage(source) for source in model_or_state_dicts]
    stages = sorted({stage for data in per_source for stage in data})
    top = max(float(values.max()) for data in per_source for values in data.values())
    floor = GAMMA_PLOT_FLOOR
    edges = np.geomspace(floor, max(top, 10 * floor), bins + 1)
    figure = Figure(figsize=(3.6 * len(stages), 3.2), layout="constrained")
    axes = figure.subplots(1, len(stages), squeeze=False)[0]
    for ax, stage in zip(axes, stages):
        for label, data in zip(labels, per_source):
            if stage in data:
                values = np.clip(data[stage].numpy(), floor, edges[-1])
                ax.hist(values, bins=edges, histtype="step", linewidth=1.4, label=f"{label} ({values.size})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"stage {stage}")
        ax.set_xlabel(f"|gamma| (below {floor:g} drawn at {floor:g})")
    axes[0].set_ylabel("channels")
    axes[0].legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return atomic_write_bytes(out_png, buffer.getvalue())


def prune_checkpoint(
    weights: str,
    options: PruneOptions,
    config: str | None = None,
    out: str | Path | None = None,
    fuse: bool = False,
) -> PruneReport:
    """Prune a checkpoint file and write the result to ``out`` (None: report only, a dry run).

    ``fuse`` also folds the BNs of the written checkpoint. The checkpoint records the pruning settings.
    """
    checkpoint = read_checkpoint(weights)
    if out is not None and Path(out).resolve() == checkpoint.path.resolve():
        raise PruneError("--out is the input checkpoint; write the pruned model to another file")
    if checkpoint.extra.get("fused") or is_fused_state_dict(checkpoint.state_dict):
        raise PruneError(
            f"{checkpoint.path} is fused (BN folded into the convs): no BN scales are left to rank channels; "
            "prune the unfused checkpoint, then fuse (--fuse)"
        )
    if not any(key.endswith(".running_var") for key in checkpoint.state_dict):
        raise PruneError(f"{checkpoint.path} has no batch-norm layers: there are no BN scales to prune by")
    chosen, advice = choose_config(checkpoint, config), config_advice(checkpoint, config)
    model = build_model(checkpoint.state_dict, chosen, str(checkpoint.path), advice)
    pruned, report = prune_model(
        model, options.ratio, options.threshold, options.min_keep, options.round_to, input_size=options.input_size
    )
    if fuse:
        pruned = fuse_model(pruned, inplace=True)
        report.fused = True
    if out is None:
        report.bytes_after = checkpoint_bytes(pruned)
        report.notes.append("dry run: no checkpoint written")
        return report
    settings = {"ratio": options.ratio, "threshold": report.threshold}
    settings.update(min_keep=options.min_keep, round_to=options.round_to)
    written = save_checkpoint(out, pruned, fused=fuse, pruning=settings)
    report.bytes_after = written.stat().st_size
    report.notes.append(f"wrote {written}")
    return report
