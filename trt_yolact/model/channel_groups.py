"""Channel groups: the sets of convolution channels that must be pruned together so every add still lines up.

A group is one channel space: the convolutions that write it (``producers``: their output rows) and the
convolutions that read it (``consumers``: their input columns). Removing channel ``c`` of a group removes
row ``c`` of every producer (and of its batch norm) and column ``c`` of every consumer; a producer that writes
``repeat`` copies of the space (the head's coefficient conv, one copy per anchor) loses rows
``c, c + width, ..., c + (repeat - 1) * width``.

The groups are written out for YOLACT's fixed topology rather than traced: the coupling of prototype ``k``
with coefficient ``k`` of every anchor happens in the post-processing (a matrix product outside the network
graph), where no tracer looks.

Scopes: ``internal`` is network slimming as in the paper (bottleneck / residual-block internal channels);
``all`` adds the stem, the residual stream of every stage, the FPN's two widths, the protonet's widths, the
prototypes (with their coefficients) and the head's width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .yolact import PROTONET_CONVS, PROTOTYPE_CONV, DarkNetBackbone, DarkNetBlock, ResNetBackbone, Yolact

SCOPES = ("internal", "all")
# Group kinds ranked by batch-norm scales; the others ("fpn", "protonet", "prototypes", "head") have no batch
# norm and are ranked by magnitude or Taylor scores.
BN_KINDS = ("internal", "stem", "stage")


@dataclass(frozen=True)
class Producer:
    """A conv writing the group's channels, with the batch norm after it (None: a conv with a bias)."""

    conv: str
    bn: str | None
    repeat: int = 1


@dataclass(frozen=True)
class Consumer:
    """A conv reading the group's channels, with the batch norm right after it (None: a conv with a bias)."""

    conv: str
    bn: str | None


@dataclass(frozen=True)
class ChannelGroup:
    name: str
    kind: str
    width: int
    producers: tuple[Producer, ...]
    consumers: tuple[Consumer, ...]

    @property
    def ranked_by_bn(self) -> bool:
        return self.kind in BN_KINDS

    @property
    def compensable(self) -> bool:
        """Whether a removed channel's constant output can be folded into its consumers: not for the
        prototypes, which meet their coefficients in a product."""
        return self.kind != "prototypes"

    def rows(self, producer: Producer, channels: torch.Tensor) -> torch.Tensor:
        """Row indices of ``producer`` for the group's ``channels`` (a 1-D int64 tensor)."""
        offsets = torch.arange(producer.repeat, dtype=torch.long) * self.width
        return (offsets[:, None] + channels[None, :].long()).flatten()


def _bn_or_none(model: nn.Module, name: str | None) -> str | None:
    """``name`` when that module is still a batch norm (fusing replaces them by Identity)."""
    if name is None:
        return None
    return name if isinstance(model.get_submodule(name), nn.BatchNorm2d) else None


class _Space:
    """A channel space being collected while walking the network."""

    def __init__(self, name: str, kind: str):
        self.name, self.kind = name, kind
        self.producers: list[Producer] = []
        self.consumers: list[Consumer] = []


def _resnet_spaces(backbone: ResNetBackbone, prefix: str) -> tuple[list[_Space], list[_Space], list[_Space]]:
    """Stem and residual-stream spaces, the internal ones, and each stage's output space (in stage order)."""
    current = _Space(f"{prefix}.stem", "stem")
    current.producers.append(Producer(f"{prefix}.conv1", f"{prefix}.bn1"))
    spaces, internal, stage_outputs = [current], [], []
    for stage, layer in enumerate(backbone.layers):
        for index, block in enumerate(layer):
            name = f"{prefix}.layers.{stage}.{index}"
            current.consumers.append(Consumer(f"{name}.conv1", f"{name}.bn1"))
            for conv, bn, next_conv, next_bn in (("conv1", "bn1", "conv2", "bn2"), ("conv2", "bn2", "conv3", "bn3")):
                space = _Space(f"{name}.{bn}", "internal")
                space.producers.append(Producer(f"{name}.{conv}", f"{name}.{bn}"))
                space.consumers.append(Consumer(f"{name}.{next_conv}", f"{name}.{next_bn}"))
                internal.append(space)
            if block.downsample is not None:
                current.consumers.append(Consumer(f"{name}.downsample.0", f"{name}.downsample.1"))
                current = _Space(f"{prefix}.layers.{stage}", "stage")
                current.producers.append(Producer(f"{name}.downsample.0", f"{name}.downsample.1"))
                spaces.append(current)
            current.producers.append(Producer(f"{name}.conv3", f"{name}.bn3"))  # added to the identity
        stage_outputs.append(current)
    return spaces, internal, stage_outputs


def _darknet_spaces(backbone: DarkNetBackbone, prefix: str) -> tuple[list[_Space], list[_Space], list[_Space]]:
    current = _Space(f"{prefix}.stem", "stem")
    current.producers.append(Producer(f"{prefix}._preconv.0", f"{prefix}._preconv.1"))
    spaces, internal, stage_outputs = [current], [], []
    for stage, layer in enumerate(backbone.layers):
        name = f"{prefix}.layers.{stage}"
        current.consumers.append(Consumer(f"{name}.0.0", f"{name}.0.1"))
        current = _Space(name, "stage")
        current.producers.append(Producer(f"{name}.0.0", f"{name}.0.1"))
        spaces.append(current)
        for index, block in enumerate(layer):
            if not isinstance(block, DarkNetBlock):
                continue
            block_name = f"{name}.{index}"
            current.consumers.append(Consumer(f"{block_name}.conv1.0", f"{block_name}.conv1.1"))
            space = _Space(f"{block_name}.conv1.1", "internal")
            space.producers.append(Producer(f"{block_name}.conv1.0", f"{block_name}.conv1.1"))
            space.consumers.append(Consumer(f"{block_name}.conv2.0", f"{block_name}.conv2.1"))
            internal.append(space)
            current.producers.append(Producer(f"{block_name}.conv2.0", f"{block_name}.conv2.1"))
        stage_outputs.append(current)
    return spaces, internal, stage_outputs


def _neck_spaces(model: Yolact) -> list[_Space]:
    """The FPN's merged and output widths, the protonet's widths, the prototypes and the head's width."""
    fpn = model.fpn
    merged, out = _Space("fpn.merged", "fpn"), _Space("fpn.out", "fpn")
    for j in range(len(fpn.lat_layers)):
        merged.producers.append(Producer(f"fpn.lat_layers.{j}", None))
    for j in range(len(fpn.pred_layers)):
        merged.consumers.append(Consumer(f"fpn.pred_layers.{j}", None))
        out.producers.append(Producer(f"fpn.pred_layers.{j}", None))
    for j in range(len(fpn.downsample_layers)):
        out.consumers.append(Consumer(f"fpn.downsample_layers.{j}", None))
        out.producers.append(Producer(f"fpn.downsample_layers.{j}", None))
    head = "prediction_layers.0"
    out.consumers += [Consumer(f"{head}.upfeature.0", None), Consumer("proto_net.0", None)]
    out.consumers.append(Consumer("semantic_seg_conv", None))
    spaces = [merged, out]
    convs = (*PROTONET_CONVS, PROTOTYPE_CONV)
    for conv, next_conv in zip(convs, convs[1:]):
        space = _Space(f"proto_net.{conv}", "protonet")
        space.producers.append(Producer(f"proto_net.{conv}", None))
        space.consumers.append(Consumer(f"proto_net.{next_conv}", None))
        spaces.append(space)
    prototypes = _Space("prototypes", "prototypes")
    prototypes.producers.append(Producer(f"proto_net.{PROTOTYPE_CONV}", None))
    anchors = model.config.priors_per_location
    prototypes.producers.append(Producer(f"{head}.mask_layer", None, repeat=anchors))
    head_space = _Space(f"{head}.upfeature", "head")
    head_space.producers.append(Producer(f"{head}.upfeature.0", None))
    head_space.consumers += [Consumer(f"{head}.{layer}", None) for layer in ("bbox_layer", "conf_layer", "mask_layer")]
    return [*spaces, prototypes, head_space]


def channel_groups(model: Yolact, scope: str = "internal") -> list[ChannelGroup]:
    """The channel groups of ``model`` for ``scope`` (see the module doc), in network order.

    Batch norms already fused away are left out of the groups (their producers then read as BN-free); the
    ``internal`` scope lists only groups that still have their batch norm, like network slimming needs.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    backbone = model.backbone
    walk = _resnet_spaces if isinstance(backbone, ResNetBackbone) else _darknet_spaces
    streams, internal, stage_outputs = walk(backbone, "backbone")
    for j, stage in enumerate(reversed(model.config.backbone.selected_layers)):
        stage_outputs[stage].consumers.append(Consumer(f"fpn.lat_layers.{j}", None))
    spaces = internal if scope == "internal" else [*streams, *internal, *_neck_spaces(model)]
    groups = [_finish(model, space) for space in spaces]
    if scope == "internal":
        groups = [g for g in groups if all(p.bn is not None for p in g.producers)]
    return groups


def _finish(model: Yolact, space: _Space) -> ChannelGroup:
    producers = tuple(Producer(p.conv, _bn_or_none(model, p.bn), p.repeat) for p in space.producers)
    consumers = tuple(Consumer(c.conv, _bn_or_none(model, c.bn)) for c in space.consumers)
    first = producers[0]
    width = model.get_submodule(first.conv).out_channels // first.repeat
    return ChannelGroup(space.name, space.kind, width, producers, consumers)
