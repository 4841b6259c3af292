"""The YOLACT network: backbone, FPN, protonet and the shared prediction head.

Module and parameter names match the released checkpoints exactly, so their state dicts load strictly.
No width is fixed: pass ``state_dict`` and every convolution takes its output width from the checkpoint's
tensor shapes (block-internal widths, stem and stage widths, FPN, protonet and head widths, the number of
prototypes), as after channel pruning; the config's widths are only the defaults of a fresh model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..config import YolactConfig, make_priors
from ..structures import RawOutputs, TrainOutputs


class Shapes:
    """What a checkpoint's tensor shapes say about the architecture; without a checkpoint, the defaults."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor] | None):
        self.state_dict = state_dict

    def width(self, key: str, default: int) -> int:
        """Output channels of the conv whose weight is ``key``, from the checkpoint when it has that key."""
        tensor = None if self.state_dict is None else self.state_dict.get(key)
        return int(tensor.shape[0]) if tensor is not None and tensor.dim() >= 1 else default

    def has(self, key: str, default: bool) -> bool:
        """Whether the checkpoint holds ``key`` (a module that exists in some blocks only)."""
        return default if self.state_dict is None else key in self.state_dict


# --------------------------------------------------------------------------------------------- backbones
class Bottleneck(nn.Module):
    """ResNet bottleneck (stride on the 3x3 conv) with free internal widths ``mid1`` and ``mid2``."""

    def __init__(self, in_ch: int, mid1: int, mid2: int, out_ch: int, stride: int, downsample: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, mid1, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid1)
        self.conv2 = nn.Conv2d(mid1, mid2, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid2)
        self.conv3 = nn.Conv2d(mid2, out_ch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
            if downsample
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetBackbone(nn.Module):
    def __init__(self, config: YolactConfig, shapes: Shapes):
        super().__init__()
        bb = config.backbone
        stem = shapes.width("backbone.conv1.weight", bb.stem_channels)
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layers = nn.ModuleList()
        in_ch = stem
        channels = []
        for stage, (num_blocks, planes) in enumerate(zip(bb.layers, bb.widths)):
            blocks = []
            for index in range(num_blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                prefix = f"backbone.layers.{stage}.{index}"
                out_ch = shapes.width(f"{prefix}.conv3.weight", planes * bb.expansion)
                # Whether a block has a downsample is the checkpoint's to say: a pruned stage may come out as
                # wide as its input although the dense one was not.
                default = index == 0 and (stride != 1 or in_ch != out_ch)
                blocks.append(
                    Bottleneck(
                        in_ch,
                        shapes.width(f"{prefix}.conv1.weight", planes),
                        shapes.width(f"{prefix}.conv2.weight", planes),
                        out_ch,
                        stride,
                        downsample=shapes.has(f"{prefix}.downsample.0.weight", default),
                    )
                )
                in_ch = out_ch
            self.layers.append(nn.Sequential(*blocks))
            channels.append(in_ch)
        self.channels = tuple(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs


def _darknet_conv(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(0.1, inplace=True),
    )


class DarkNetBlock(nn.Module):
    """DarkNet residual block: 1x1 down to a free internal width ``mid``, 3x3 back to ``channels``."""

    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.conv1 = _darknet_conv(channels, mid, 1)
        self.conv2 = _darknet_conv(mid, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + x


class DarkNetBackbone(nn.Module):
    def __init__(self, config: YolactConfig, shapes: Shapes):
        super().__init__()
        bb = config.backbone
        in_ch = shapes.width("backbone._preconv.0.weight", bb.stem_channels)
        self._preconv = _darknet_conv(3, in_ch, 3)
        self.layers = nn.ModuleList()
        channels = []
        for stage, (num_blocks, planes) in enumerate(zip(bb.layers, bb.widths)):
            out_ch = shapes.width(f"backbone.layers.{stage}.0.0.weight", planes * bb.expansion)
            modules: list[nn.Module] = [_darknet_conv(in_ch, out_ch, 3, stride=2)]
            for index in range(1, num_blocks + 1):
                mid = shapes.width(f"backbone.layers.{stage}.{index}.conv1.0.weight", planes)
                modules.append(DarkNetBlock(out_ch, mid))
            self.layers.append(nn.Sequential(*modules))
            in_ch = out_ch
            channels.append(out_ch)
        self.channels = tuple(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self._preconv(x)
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs


# ------------------------------------------------------------------------------------------------- FPN
class FPN(nn.Module):
    """Top-down FPN on C3..C5 with ReLU'd 3x3 smoothing, then stride-2 convs (no ReLU) for P6, P7.

    Two widths: ``merged_channels`` of the laterals (summed top-down, so one width) and ``channels`` of
    P3..P7 (one width: the prediction head is shared across levels). The released models have both at 256.
    """

    def __init__(self, in_channels: list[int], merged_channels: int, channels: int, num_downsample: int):
        super().__init__()
        # Lateral and smoothing layers are stored from the deepest level to the shallowest.
        self.lat_layers = nn.ModuleList(nn.Conv2d(c, merged_channels, kernel_size=1) for c in reversed(in_channels))
        self.pred_layers = nn.ModuleList(
            nn.Conv2d(merged_channels, channels, kernel_size=3, padding=1) for _ in in_channels
        )
        self.downsample_layers = nn.ModuleList(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, stride=2) for _ in range(num_downsample)
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        num = len(features)
        merged: list[torch.Tensor] = [features[0]] * num
        top: torch.Tensor | None = None
        for offset, lateral in enumerate(self.lat_layers):
            level = num - 1 - offset
            lat = lateral(features[level])
            if top is not None:
                top = F.interpolate(top, size=lat.shape[-2:], mode="bilinear", align_corners=False)
                lat = top + lat
            top = lat
            merged[level] = lat
        outs = list(merged)
        for offset, smooth in enumerate(self.pred_layers):
            level = num - 1 - offset
            outs[level] = F.relu(smooth(merged[level]))
        for down in self.downsample_layers:
            outs.append(down(outs[-1]))
        return outs


class Upsample2x(nn.Module):
    """Parameter-free bilinear x2 upsampling (a module so that protonet indices match the checkpoints)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


# Protonet indices of the 3x3 convs (each with its own width) and of the 1x1 conv writing the prototypes.
PROTONET_CONVS = (0, 2, 4, 8)
PROTOTYPE_CONV = 10


def make_protonet(in_ch: int, widths: tuple[int, int, int, int], mask_dim: int) -> nn.Sequential:
    """3 x (conv3x3 + ReLU), x2 upsample + ReLU, conv3x3 + ReLU, conv1x1 -> prototypes (ReLU applied later)."""
    w0, w1, w2, w3 = widths
    return nn.Sequential(
        nn.Conv2d(in_ch, w0, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(w0, w1, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(w1, w2, 3, padding=1),
        nn.ReLU(inplace=True),
        Upsample2x(),
        nn.ReLU(inplace=True),
        nn.Conv2d(w2, w3, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(w3, mask_dim, 1),
    )


class PredictionHead(nn.Module):
    """The head shared by every FPN level: an extra conv3x3 + ReLU, then box, class and coefficient convs."""

    def __init__(self, in_ch: int, channels: int, num_priors: int, num_classes: int, mask_dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.mask_dim = mask_dim
        self.upfeature = nn.Sequential(nn.Conv2d(in_ch, channels, 3, padding=1), nn.ReLU(inplace=True))
        self.bbox_layer = nn.Conv2d(channels, num_priors * 4, 3, padding=1)
        self.conf_layer = nn.Conv2d(channels, num_priors * num_classes, 3, padding=1)
        self.mask_layer = nn.Conv2d(channels, num_priors * mask_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.upfeature(x)
        batch = x.shape[0]
        # NCHW -> NHWC -> [B, H*W*A, D]: priors ordered by row, column, then anchor.
        loc = self.bbox_layer(x).permute(0, 2, 3, 1).reshape(batch, -1, 4)
        conf = self.conf_layer(x).permute(0, 2, 3, 1).reshape(batch, -1, self.num_classes)
        coeffs = torch.tanh(self.mask_layer(x).permute(0, 2, 3, 1).reshape(batch, -1, self.mask_dim))
        return loc, conf, coeffs


# ---------------------------------------------------------------------------------------------- priors
# ---------------------------------------------------------------------------------------------- YOLACT
class Yolact(nn.Module):
    """YOLACT. ``forward`` returns :class:`RawOutputs` for inference and export; training uses
    :meth:`forward_train`."""

    def __init__(self, config: YolactConfig, state_dict: Mapping[str, torch.Tensor] | None = None):
        super().__init__()
        self.config = config
        shapes = Shapes(state_dict)
        backbone_cls = ResNetBackbone if config.backbone.kind == "resnet" else DarkNetBackbone
        self.backbone = backbone_cls(config, shapes)
        selected = [self.backbone.channels[i] for i in config.backbone.selected_layers]
        merged = shapes.width("fpn.lat_layers.0.weight", config.fpn_channels)
        fpn_out = shapes.width("fpn.pred_layers.0.weight", config.fpn_channels)
        self.fpn = FPN(selected, merged, fpn_out, config.fpn_downsample)
        proto_widths = tuple(shapes.width(f"proto_net.{i}.weight", config.proto_channels) for i in PROTONET_CONVS)
        self.mask_dim = shapes.width(f"proto_net.{PROTOTYPE_CONV}.weight", config.mask_dim)
        self.proto_net = make_protonet(fpn_out, proto_widths, self.mask_dim)
        head_width = shapes.width("prediction_layers.0.upfeature.0.weight", config.head_channels)
        # Only the first head holds weights; the original shares it across levels.
        self.prediction_layers = nn.ModuleList(
            [PredictionHead(fpn_out, head_width, config.priors_per_location, config.num_classes, self.mask_dim)]
        )
        self.semantic_seg_conv = nn.Conv2d(fpn_out, config.num_classes - 1, kernel_size=1)
        self._prior_cache: dict[tuple, torch.Tensor] = {}

    @torch.no_grad()
    def feature_sizes(self, input_size: int | None = None) -> list[tuple[int, int]]:
        """(h, w) of each FPN level for a square input of ``input_size`` (default: the config's): the grid the
        priors are laid on (:func:`~trt_yolact.config.make_priors`)."""
        size = input_size or self.config.max_size
        images = torch.zeros((1, 3, size, size), device=next(self.parameters()).device)
        was_training = self.training
        self.eval()  # a forward in training mode would move the batch norm statistics
        try:
            features = self.backbone(images)
            pyramid = self.fpn([features[i] for i in self.config.backbone.selected_layers])
        finally:
            self.train(was_training)
        return [(int(level.shape[-2]), int(level.shape[-1])) for level in pyramid]

    def priors(self, feature_sizes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
        key = (tuple(feature_sizes), str(device))
        if key not in self._prior_cache:
            self._prior_cache[key] = torch.from_numpy(make_priors(self.config, feature_sizes)).to(device)
        return self._prior_cache[key]

    def _heads(self, images: torch.Tensor):
        features = self.backbone(images)
        pyramid = self.fpn([features[i] for i in self.config.backbone.selected_layers])
        proto = F.relu(self.proto_net(pyramid[0])).permute(0, 2, 3, 1).contiguous()
        head = self.prediction_layers[0]
        outs = [head(level) for level in pyramid]
        loc = torch.cat([o[0] for o in outs], dim=1)
        conf = torch.cat([o[1] for o in outs], dim=1)
        coeffs = torch.cat([o[2] for o in outs], dim=1)
        sizes = [(int(level.shape[-2]), int(level.shape[-1])) for level in pyramid]
        return pyramid, loc, conf, coeffs, proto, self.priors(sizes, images.device)

    def forward(self, images: torch.Tensor) -> RawOutputs:
        _, loc, conf, coeffs, proto, priors = self._heads(images)
        return RawOutputs(loc, F.softmax(conf, dim=-1), coeffs, proto, priors)

    def forward_train(self, images: torch.Tensor) -> TrainOutputs:
        pyramid, loc, conf, coeffs, proto, priors = self._heads(images)
        return TrainOutputs(loc, conf, coeffs, proto, priors, self.semantic_seg_conv(pyramid[0]))
