"""First-order Taylor importance of the BN-free channel groups, on annotated images.

Zeroing channel ``c`` changes the training loss by about ``-sum(a_c * dL/da_c)`` over every place the channel
is read (each consumer conv's input, each FPN level, each image's positions). The importance of ``c`` is the
absolute value of that sum per image, summed over images: channels whose removal the loss would notice rank
high, whatever their weights' scale. The prototypes have no consumer conv; they are scored on the prototype
tensor the loss reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch.utils.data import DataLoader, Subset

from ..data.augment import ValTransform
from ..data.coco import Batch, CocoDetection, collate_samples
from ..errors import PruneError
from ..model.channel_groups import ChannelGroup
from ..model.yolact import Yolact
from .loss import YolactLoss
from .trainer import parse_data_argument

TAYLOR_BATCH = 8


def annotated_batches(data: str, model: Yolact, images: int) -> Iterable[Batch]:
    """The first ``images`` annotated images of ``ANN.json:IMAGES`` at the model's input size, in batches."""
    ann, folder = parse_data_argument(data)
    dataset = CocoDetection(ann, folder, ValTransform(model.config.max_size, model.config.normalization))
    if len(dataset) == 0:
        raise PruneError(f"{ann} has no image with an annotation: Taylor importance needs annotated images")
    subset = Subset(dataset, range(min(images, len(dataset))))
    return DataLoader(subset, batch_size=TAYLOR_BATCH, collate_fn=collate_samples)


def taylor_importance(
    model: Yolact, groups: Sequence[ChannelGroup], batches: Iterable[Batch], loss: YolactLoss | None = None
) -> dict[str, torch.Tensor]:
    """Per BN-free group in ``groups``, the Taylor importance of each channel (float64, CPU). ``model`` is
    used in eval mode (batch norms on their running statistics, as deployed) and left unchanged."""
    loss = loss or YolactLoss()
    scored = [group for group in groups if not group.ranked_by_bn]
    totals = {group.name: torch.zeros(group.width, dtype=torch.float64) for group in scored}
    per_image: dict[str, torch.Tensor] = {}
    seen: set[int] = set()  # a tensor read by several consumers is scored once: its gradient sums their uses
    hooks = [
        _hook_consumer(model, group, consumer.conv, per_image, seen) for group in scored for consumer in group.consumers
    ]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            per_image.clear()
            seen.clear()
            outputs = model.forward_train(batch.images)
            prototypes = next((g for g in scored if g.kind == "prototypes"), None)
            if prototypes is not None:
                _track(outputs.proto, prototypes.name, per_image, channel_dim=-1)
            targets = {"boxes": batch.boxes, "labels": batch.labels, "masks": batch.masks}
            targets["num_crowds"] = batch.num_crowds
            model.zero_grad(set_to_none=True)
            loss(outputs, targets)["total"].backward()
            for name, values in per_image.items():
                totals[name] += values.abs().sum(0)
    finally:
        for hook in hooks:
            hook.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return totals


def _track(tensor: torch.Tensor, name: str, per_image: dict[str, torch.Tensor], channel_dim: int = 1) -> None:
    """Add ``sum over positions of a * dL/da`` per image and channel of ``tensor`` to ``per_image[name]``."""
    values = tensor.detach()

    def on_gradient(gradient: torch.Tensor) -> None:
        product = (values * gradient).double().movedim(channel_dim, 1).flatten(2).sum(2).cpu()
        per_image[name] = per_image[name] + product if name in per_image else product

    tensor.register_hook(on_gradient)


def _hook_consumer(model: Yolact, group: ChannelGroup, conv: str, per_image: dict[str, torch.Tensor], seen: set[int]):
    def before(_module, inputs):
        if inputs[0].requires_grad and id(inputs[0]) not in seen:
            seen.add(id(inputs[0]))
            _track(inputs[0], group.name, per_image)

    return model.get_submodule(conv).register_forward_pre_hook(before)
