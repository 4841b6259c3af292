"""Channel pruning: network slimming by batch-norm scales (Ning et al. 2023), and of the whole network.

What is pruned together: :mod:`trt_yolact.model.channel_groups`. Scope ``internal`` (the paper) prunes the
bottleneck / residual-block internal channels; scope ``all`` also the stem, the stages' residual streams,
the FPN, the protonet, the prototypes with their coefficients and the head.

Ranking. A group with batch norms ranks its channels by the mean |gamma| over them (network slimming,
group-wise); a BN-free group by the L2 (or L1) norm of the channel's weights (producers' rows and biases,
consumers' columns) divided by the group's mean norm. The two kinds are on different scales, so each has its
own global percentile (``ratio`` and ``ratio_neck``). Per group the kept count is raised to ``min_keep`` and
rounded up to a multiple of ``round_to``.

Compensation. Pruning assumes a removed channel outputs a constant ``a_c``: its BN's shift ``beta_c`` (as if
``gamma_c`` were 0), or its conv's bias (as if its weights were 0), after the activation. Removing it takes
``sum_kl W[:, c, k, l] * a_c`` away from every consumer conv, which is added back to the consumer's bias or
subtracted from the running mean of the BN after it. The constants are measured by one float64 forward pass
of the model with the removed channels silenced (see :func:`compensation_folds`), so residual streams,
upsampling and max-pooling need no case of their own. Exactness:

* a 1x1 consumer (``conv3`` after ``bn2``, every conv reading a ResNet stage, the FPN laterals): exact
  everywhere, for any constant;
* a 3x3 consumer with zero padding (``conv2`` after ``bn1``, the FPN, protonet and head convs): exact in the
  interior. On the border some taps read padding zeros, not ``a_c``, so the fold over-compensates there by
  the weights of those taps. This vanishes when ``a_c == 0`` (ReLU with ``beta_c <= 0``, LeakyReLU with
  ``beta_c == 0``, a zero bias); no per-channel bias can do better: the error is position dependent;
* a consumer that sees different constants on different calls (the head shared by the FPN levels, whose
  removed P3-P7 channels carry each level's own bias) and the prototypes (which meet their coefficients in a
  product) are not compensated: exact only when the constants are 0.

A removed channel with a small but non-zero ``gamma_c`` (or weights) is approximated by the same constant;
that is the loss fine-tuning recovers. In train mode BN uses batch statistics, which absorb a constant shift
anyway, so fine-tuning a pruned model is unaffected by the folds into running means.
"""

from __future__ import annotations

import copy
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import PruneError, UsageError
from ..files import atomic_write_bytes
from ..tables import format_table
from .channel_groups import SCOPES, ChannelGroup, channel_groups
from .checkpoint import build_model, choose_config, config_advice, read_checkpoint, save_checkpoint
from .fuse import fuse_model, is_fused_state_dict
from .stats import checkpoint_bytes, conv_macs_by_module, count_params, input_hw
from .yolact import PROTOTYPE_CONV, Yolact

BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")
# State-dict names of the internal scope's BN scales (the same set as channel_groups(model, "internal")).
PRUNABLE_GAMMA_KEY = re.compile(r"^backbone\.layers\.(\d+)\.(\d+)\.(bn1|bn2|conv1\.1)\.weight$")
MAGNITUDES = ("l2", "l1")
# Criteria of the BN-free groups: weight magnitudes, or first-order Taylor scores on annotated images
# (computed by trt_yolact.training.importance and passed in as ``scores``).
IMPORTANCES = (*MAGNITUDES, "taylor")
ImportanceScores = Callable[[Yolact, Sequence[ChannelGroup]], Mapping[str, torch.Tensor]]
COMPENSATION_SIZE = 64  # input side of the forward pass that measures removed channels' constants


# ------------------------------------------------------------------------------------- prunable groups
def prunable_batchnorms(model: nn.Module, scope: str = "internal") -> list[nn.BatchNorm2d]:
    """The BNs whose scales rank channels in ``scope`` (the ones the L1 sparsity penalty applies to)."""
    found: dict[str, nn.BatchNorm2d] = {}
    for group in channel_groups(model, scope):
        if group.ranked_by_bn:
            for producer in group.producers:
                if producer.bn is not None:
                    found.setdefault(producer.bn, model.get_submodule(producer.bn))
    return list(found.values())


def magnitude_groups(model: nn.Module, scope: str = "all") -> list[ChannelGroup]:
    """The groups ranked by weight magnitude (no batch norm): what group-lasso sparsity applies to."""
    return [group for group in channel_groups(model, scope) if not group.ranked_by_bn]


def group_magnitude(model: nn.Module, group: ChannelGroup, norm: str = "l2") -> torch.Tensor:
    """Per channel, the L2 (or L1) norm of everything the channel owns: its producers' rows (weights and
    biases) and its consumers' input columns. Float64, on the CPU."""
    if norm not in MAGNITUDES:
        raise PruneError(f"magnitude must be one of {MAGNITUDES}, got {norm!r}")
    power = 2 if norm == "l2" else 1
    total = torch.zeros(group.width, dtype=torch.float64)
    for producer in group.producers:
        conv = model.get_submodule(producer.conv)
        per_row = conv.weight.detach().double().abs().pow(power).flatten(1).sum(1).cpu()
        if conv.bias is not None:
            per_row = per_row + conv.bias.detach().double().abs().pow(power).cpu()
        total.index_add_(0, torch.arange(per_row.numel()) % group.width, per_row)
    for consumer in group.consumers:
        weight = model.get_submodule(consumer.conv).weight.detach().double()
        total += weight.abs().pow(power).sum(dim=(0, 2, 3)).cpu()
    return total.sqrt() if power == 2 else total


def group_importance(
    model: nn.Module, group: ChannelGroup, norm: str = "l2", score: torch.Tensor | None = None
) -> torch.Tensor:
    """What ranks a group's channels: the mean |gamma| over its batch norms (network slimming, group-wise),
    or for a BN-free group its magnitude (or its given ``score``) relative to the group's mean (so that layers
    of different scales share one global percentile)."""
    if group.ranked_by_bn:
        bns = [producer.bn for producer in group.producers]
        if None in bns:
            raise PruneError(f"group {group.name}: its batch norms are fused away; prune the unfused checkpoint")
        scales = [model.get_submodule(bn).weight.detach().abs().double().cpu() for bn in bns]
        return torch.stack(scales).mean(0)
    magnitude = group_magnitude(model, group, norm) if score is None else score.double().cpu()
    mean = float(magnitude.mean())
    return magnitude / mean if mean > 0 else magnitude


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
    quantity: str = "|gamma|",
) -> dict[str, torch.Tensor]:
    """Kept channel indices (sorted ``int64``) per layer (``quantity`` names the importance in messages).

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
            raise PruneError(f"layer {name}: {quantity} must be a non-empty vector, got shape {list(gamma.shape)}")
        if not torch.isfinite(gamma).all():
            raise PruneError(f"layer {name}: {quantity} values are not all finite")
    largest = max(float(g.detach().abs().max()) for g in gammas.values())
    t = global_threshold(gammas, ratio) if ratio is not None else float(threshold)
    if largest <= t:
        if ratio is not None:
            raise PruneError(
                f"every {quantity} equals {t:g}: it does not rank the channels (untrained model?); "
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
class GroupPrune:
    name: str
    kind: str  # see trt_yolact.model.channel_groups
    total: int
    kept: int
    max_pruned_importance: float  # the largest importance removed (0 when none): how lossy the removal is
    params_before: int = 0  # of the convs writing the group (their weights and biases)
    params_after: int = 0
    macs_before: int = 0  # of the convs writing the group, for one image at the report's input size
    macs_after: int = 0


@dataclass
class PruneReport:
    config: str
    scope: str
    ratio: float | None  # the BN groups' percentile (None with a threshold)
    threshold: float  # the BN groups' |gamma| threshold used (from the ratio when one was given)
    min_keep: int
    round_to: int
    input_size: tuple[int, int]  # MACs are for one image of this size
    layers: list[GroupPrune]
    params_before: int
    params_after: int
    macs_before: int  # Conv2d multiply-accumulates only
    macs_after: int
    bytes_before: int  # checkpoint file sizes
    bytes_after: int
    ratio_neck: float | None = None  # the BN-free groups' percentile (scope all)
    importance: str | None = None  # their magnitude criterion (scope all)
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
                row.kind,
                str(row.kept),
                str(row.total),
                f"{100 * row.kept / row.total:.0f}%",
                f"{row.max_pruned_importance:.3g}",
                f"{_count(row.params_before)} -> {_count(row.params_after)}",
                f"{_count(row.macs_before)} -> {_count(row.macs_after)}",
            ]
            for row in self.layers
        ]
        columns = ["group", "kind", "kept", "total", "kept%", "max pruned importance", "params", "MACs"]
        per_group = format_table(rows, columns, True)
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
            f"{self.config}: scope {self.scope}, BN groups {rule}|gamma| threshold {self.threshold:.4g}"
            + (f", BN-free groups ratio {self.ratio_neck:g} by {self.importance}" if self.scope == "all" else "")
            + f", min-keep {self.min_keep}, round-to {self.round_to}{', BN fused' if self.fused else ''}"
        )
        lines = [header, per_group, "", format_table(totals, ["", "before", "after", "after/before"], True)]
        lines.append(
            "Importance: mean |gamma| over a group's batch norms; for BN-free groups the magnitude (or Taylor "
            "score) relative to the group's mean. Per-group params and MACs are those of the convs writing the "
            "group. MACs count "
            "Conv2d layers only (BN, activations, resizing and softmax are not counted)."
        )
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
    ratio: float | None = None  # BN groups; with scope all also the BN-free groups unless ratio_neck is given
    threshold: float | None = None  # BN groups only
    min_keep: int = 8
    round_to: int = 8
    compensate: bool = True  # fold removed channels' constant outputs into their consumers (see module doc)
    input_size: int | tuple[int, int] | None = None  # for MACs; None = the config's max_size
    scope: str = "internal"
    ratio_neck: float | None = None  # BN-free groups (scope all)
    importance: str = "l2"  # BN-free groups' criterion: l2 or l1 weight magnitude, or taylor (given scores)

    def __post_init__(self) -> None:
        _check_selection_options(self.ratio, self.threshold, self.min_keep, self.round_to)
        if self.scope not in SCOPES:
            raise PruneError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.importance not in IMPORTANCES:
            raise PruneError(f"importance must be one of {IMPORTANCES}, got {self.importance!r}")
        if self.ratio_neck is not None:
            if self.scope != "all":
                raise UsageError("--ratio-neck ranks the BN-free groups, which only --scope all prunes")
            _check_selection_options(self.ratio_neck, None, self.min_keep, self.round_to)
        elif self.scope == "all" and self.ratio is None:
            raise UsageError(
                "--threshold ranks only the BN groups: with --scope all give --ratio-neck for the BN-free groups "
                "(FPN, protonet, prototypes, head)"
            )

    @property
    def neck_ratio(self) -> float | None:
        return self.ratio_neck if self.ratio_neck is not None else self.ratio


def select_group_channels(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    options: PruneOptions,
    scores: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
    """Kept channels per group, the importances they were chosen by, and the BN groups' threshold.

    BN scales and weight magnitudes are not on one scale, so each kind has its own global percentile.
    ``scores`` (Taylor importance) replace the magnitudes of the BN-free groups they name.
    """
    scores = scores or {}
    norm = options.importance if options.importance in MAGNITUDES else "l2"
    importances = {g.name: group_importance(model, g, norm, scores.get(g.name)) for g in groups}
    by_bn = {g.name: importances[g.name] for g in groups if g.ranked_by_bn}
    by_magnitude = {g.name: importances[g.name] for g in groups if not g.ranked_by_bn}
    kept: dict[str, torch.Tensor] = {}
    threshold = 0.0
    if by_bn:
        kept.update(select_channels(by_bn, options.ratio, options.threshold, options.min_keep, options.round_to))
        threshold = global_threshold(by_bn, options.ratio) if options.ratio is not None else float(options.threshold)
    if by_magnitude:
        kept.update(
            select_channels(
                by_magnitude, options.neck_ratio, None, options.min_keep, options.round_to, "relative magnitude"
            )
        )
    return kept, importances, threshold


def prune_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    groups: Sequence[ChannelGroup],
    kept: Mapping[str, torch.Tensor],
    folds: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The narrower state dict: producers' rows (and their BN entries) and consumers' columns of removed
    channels are dropped. ``folds`` (from :func:`compensation_folds`) are added to the full tensors first."""
    state = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    for key, delta in (folds or {}).items():
        state[key] = (state[key].double() + delta).to(state[key].dtype)
    for group in groups:
        index = kept[group.name]
        for producer in group.producers:
            rows = group.rows(producer, index)
            for key in (f"{producer.conv}.weight", f"{producer.conv}.bias"):
                if key in state:
                    state[key] = state[key][rows].clone()
            if producer.bn is not None:
                for suffix in BN_SUFFIXES:
                    state[f"{producer.bn}.{suffix}"] = state[f"{producer.bn}.{suffix}"][index].clone()
        for consumer in group.consumers:
            key = f"{consumer.conv}.weight"
            state[key] = state[key][:, index].clone()
    return state


def _complement(kept: torch.Tensor, width: int) -> torch.Tensor:
    mask = torch.ones(width, dtype=torch.bool)
    mask[kept] = False
    return mask.nonzero().flatten()


@torch.no_grad()
def silenced_copy(model: Yolact, groups: Sequence[ChannelGroup], removed: Mapping[str, torch.Tensor]) -> Yolact:
    """A float64 copy of ``model`` in which every ``removed`` channel outputs what pruning assumes it does: a
    constant (its BN's shift, or its conv's bias, after the activation), whatever the input."""
    silent = copy.deepcopy(model).double().eval()
    for group in groups:
        for producer in group.producers:
            if producer.bn is not None:
                silent.get_submodule(producer.bn).weight[removed[group.name]] = 0.0
            else:
                silent.get_submodule(producer.conv).weight[group.rows(producer, removed[group.name])] = 0.0
    return silent


@torch.no_grad()
def compensation_folds(
    model: Yolact, groups: Sequence[ChannelGroup], kept: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """What to add to consumers' biases (or subtract from the running means of the BNs after them) so that
    the pruned network computes what the silenced one does (see the module doc), and notes on consumers left
    uncompensated.

    The constants are measured, not derived: one forward pass of :func:`silenced_copy` records each
    consumer's input at the removed channels. A consumer run several times (the shared head, once per level)
    is folded only when every call saw the same constants.
    """
    removed_of = {group.name: _complement(kept[group.name], group.width) for group in groups}
    silent = silenced_copy(model, groups, removed_of)
    seen: dict[tuple[str, str], list[torch.Tensor]] = {}
    hooks = []
    for group in groups:
        removed = removed_of[group.name]
        if not group.compensable or removed.numel() == 0:
            continue
        for consumer in group.consumers:
            conv = silent.get_submodule(consumer.conv)

            def record(_module, inputs, removed=removed, key=(group.name, consumer.conv)):
                values = inputs[0][:, removed].flatten(2)
                seen.setdefault(key, []).append(torch.stack([values.amin(dim=(0, 2)), values.amax(dim=(0, 2))]))

            hooks.append(conv.register_forward_pre_hook(record))
    try:
        silent.forward_train(torch.zeros(1, 3, COMPENSATION_SIZE, COMPENSATION_SIZE, dtype=torch.float64))
    finally:
        for hook in hooks:
            hook.remove()
    folds: dict[str, torch.Tensor] = {}
    notes = []
    consumers = {(g.name, c.conv): (g, c) for g in groups for c in g.consumers}
    for key, calls in seen.items():
        group, consumer = consumers[key]
        bounds = torch.stack(calls)  # calls x (min, max) x removed
        constant = bounds[0, 0]
        if float((bounds - constant).abs().max()) > 1e-9 * (1.0 + float(constant.abs().max())):
            notes.append(f"{consumer.conv}: removed {group.name} channels are not one constant here; not compensated")
            continue
        weight = model.get_submodule(consumer.conv).weight.detach().double().cpu()[:, removed_of[group.name]]
        delta = (weight.sum(dim=(2, 3)) * constant.cpu()).sum(dim=1)
        target, sign = (f"{consumer.bn}.running_mean", -1.0) if consumer.bn else (f"{consumer.conv}.bias", 1.0)
        folds[target] = folds.get(target, 0.0) + sign * delta
    return folds, notes


def prune_to(
    model: Yolact, groups: Sequence[ChannelGroup], kept: Mapping[str, torch.Tensor], compensate: bool = True
) -> tuple[Yolact, list[str]]:
    """``model`` with only the ``kept`` channels of each group (and notes on what was left uncompensated),
    built from the narrower state dict like any checkpoint, in eval mode on the model's device."""
    folds, notes = compensation_folds(model, groups, kept) if compensate else ({}, [])
    state = prune_state_dict(model.state_dict(), groups, kept, folds)
    # The number of prototypes is the one width outside the network's own tensors that follows the pruning.
    config = model.config.replace(mask_dim=int(state[f"proto_net.{PROTOTYPE_CONV}.weight"].shape[0]))
    device = next(model.parameters()).device
    return build_model(state, config, source="pruned state dict").to(device), notes


def _conv_params(model: nn.Module, names: Sequence[str]) -> int:
    return sum(p.numel() for name in names for p in model.get_submodule(name).parameters(recurse=False))


def _group_rows(
    model: Yolact,
    pruned: Yolact,
    groups: Sequence[ChannelGroup],
    kept: Mapping[str, torch.Tensor],
    importances: Mapping[str, torch.Tensor],
    macs_before: Mapping[str, int],
    macs_after: Mapping[str, int],
) -> list[GroupPrune]:
    rows = []
    for group in groups:
        removed = _complement(kept[group.name], group.width)
        worst = float(importances[group.name][removed].max()) if removed.numel() else 0.0
        convs = [producer.conv for producer in group.producers]
        rows.append(
            GroupPrune(
                group.name,
                group.kind,
                group.width,
                int(kept[group.name].numel()),
                worst,
                _conv_params(model, convs),
                _conv_params(pruned, convs),
                sum(macs_before.get(name, 0) for name in convs),
                sum(macs_after.get(name, 0) for name in convs),
            )
        )
    return rows


def prune_model(
    model: Yolact,
    ratio: float | None = None,
    threshold: float | None = None,
    min_keep: int = 8,
    round_to: int = 8,
    *,
    compensate: bool = True,
    input_size: int | tuple[int, int] | None = None,
    scope: str = "internal",
    ratio_neck: float | None = None,
    importance: str = "l2",
) -> tuple[Yolact, PruneReport]:
    """Prune ``model`` (left untouched) by BN scales (and, with scope ``all``, by magnitude); the result is
    built from the narrower state dict through the same architecture-from-shapes path as any checkpoint,
    in eval mode on the model's device."""
    options = PruneOptions(ratio, threshold, min_keep, round_to, compensate, input_size, scope, ratio_neck, importance)
    return prune_with_options(model, options)


def prune_with_options(
    model: Yolact, options: PruneOptions, scores: ImportanceScores | None = None
) -> tuple[Yolact, PruneReport]:
    """:func:`prune_model` with its settings in one :class:`PruneOptions`; ``scores`` computes the BN-free
    groups' importance when ``options.importance`` is ``taylor``."""
    groups = channel_groups(model, options.scope)
    if not groups:
        raise PruneError("the model has no prunable batch norms (already fused, or no residual blocks)")
    given = None
    if options.importance == "taylor" and options.scope == "all":
        if scores is None:
            raise UsageError(
                "--importance taylor (the default) scores channels on annotated images: give --taylor-data "
                "ANN.json:IMAGES, or rank by weight magnitude with --importance l2"
            )
        given = scores(model, groups)
    kept, importances, used = select_group_channels(model, groups, options, given)
    pruned, notes = prune_to(model, groups, kept, options.compensate)
    macs_before = conv_macs_by_module(model, options.input_size)
    macs_after = conv_macs_by_module(pruned, options.input_size)
    report = PruneReport(
        config=model.config.name,
        scope=options.scope,
        ratio=options.ratio,
        threshold=used,
        min_keep=options.min_keep,
        round_to=options.round_to,
        input_size=input_hw(model, options.input_size),
        layers=_group_rows(model, pruned, groups, kept, importances, macs_before, macs_after),
        params_before=count_params(model),
        params_after=count_params(pruned),
        macs_before=sum(macs_before.values()),
        macs_after=sum(macs_after.values()),
        bytes_before=checkpoint_bytes(model),
        bytes_after=checkpoint_bytes(pruned),
        ratio_neck=options.neck_ratio if options.scope == "all" else None,
        importance=options.importance if options.scope == "all" else None,
        notes=notes,
    )
    return pruned, report


# ------------------------------------------------------------------------------------------ histograms
def gammas_by_stage(source: nn.Module | Mapping[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """|gamma| of the prunable BNs of a model or a state dict, concatenated per backbone stage."""
    stages: dict[int, list[torch.Tensor]] = {}
    if isinstance(source, nn.Module):
        for group in channel_groups(source, "internal"):
            bn = group.producers[0].bn
            stage = int(bn.split(".")[2])
            stages.setdefault(stage, []).append(source.get_submodule(bn).weight.detach().abs().float().cpu())
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
    scores: ImportanceScores | None = None,
) -> PruneReport:
    """Prune a checkpoint file and write the result to ``out`` (None: report only, a dry run).

    ``fuse`` also folds the BNs of the written checkpoint. The checkpoint records the pruning settings.
    ``scores``: see :func:`prune_with_options`.
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
    pruned, report = prune_with_options(model, options, scores)
    if fuse:
        pruned = fuse_model(pruned, inplace=True)
        report.fused = True
    if out is None:
        report.bytes_after = checkpoint_bytes(pruned)
        report.notes.append("dry run: no checkpoint written")
        return report
    settings = {"scope": options.scope, "ratio": options.ratio, "threshold": report.threshold}
    settings.update(min_keep=options.min_keep, round_to=options.round_to)
    if options.scope == "all":
        settings.update(ratio_neck=options.neck_ratio, importance=options.importance)
    written = save_checkpoint(out, pruned, fused=fuse, pruning=settings)
    report.bytes_after = written.stat().st_size
    report.notes.append(f"wrote {written}")
    return report
