"""The outputs of an export with the post-processing in the graph -> the same :class:`Detections` as the host
post-processing (:mod:`trt_yolact.inference.postprocess`) gives for the raw outputs.

The graph already decoded, selected and suppressed, and assembled and cropped the masks at prototype
resolution (:class:`~trt_yolact.deploy.onnx_postprocess.GraphPostprocess`): what is left is per image work,
done here on the runner's device: keep the real slots, turn relative boxes into pixel corners and upsample
the masks to the image's own size with the host path's own function
(:func:`~trt_yolact.inference.postprocess.upsample_masks`: bilinear, ``align_corners=False``, then ``> 0.5``;
one torch resize per image on a GPU, the windowed resize of the same arithmetic on the CPU).

A graph bakes its post-processing settings in at export time. What the host applies after selection
(``max_detections``, ``score_threshold``, ``full_resolution_masks``) can be applied here too, within what the
graph kept; a setting that changes which detections are selected cannot, and asking for it is a
:class:`UsageError` (:func:`check_graph_settings`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..config import PostprocessConfig
from ..errors import RunnerError, UsageError
from ..model.boxes import sanitize_coordinates
from ..structures import GRAPH_OUTPUT_NAMES, Detections, GraphDetections
from .mask_memory import MaskMemory
from .postprocess import upsample_masks

# Settings that decide which detections the graph selects: they must be the ones it was exported with.
SELECTION_SETTINGS = ("conf_threshold", "nms_threshold", "top_k", "cross_class_nms", "crop_masks")


def check_graph_settings(exported: PostprocessConfig | None, wanted: PostprocessConfig, name: str) -> None:
    """A :class:`UsageError` when ``wanted`` cannot be had from a graph exported with ``exported`` (None: the
    graph does not say; only its slot count is checked, when running)."""
    if exported is None:
        return
    differing = [
        f"{s} {getattr(wanted, s)} (graph: {getattr(exported, s)})"
        for s in SELECTION_SETTINGS
        if getattr(wanted, s) != getattr(exported, s)
    ]
    if wanted.max_detections > exported.max_detections:
        differing.append(f"max_detections {wanted.max_detections} (graph: {exported.max_detections} slots)")
    if wanted.score_threshold < exported.score_threshold:
        differing.append(f"score_threshold {wanted.score_threshold} (graph: {exported.score_threshold})")
    if differing:
        raise UsageError(
            f"{name} has its post-processing in the graph, exported with other settings: {', '.join(differing)}; "
            "export it again with these settings, or run the raw export with host post-processing"
        )


def graph_outputs(outputs: Mapping[str, torch.Tensor]) -> GraphDetections:
    """A runner's named outputs as :class:`GraphDetections`; a :class:`RunnerError` when some are missing."""
    missing = [name for name in GRAPH_OUTPUT_NAMES if name not in outputs]
    if missing:
        raise RunnerError(f"outputs {missing} of the graph post-processing are missing (has {sorted(outputs)})")
    return GraphDetections(*(outputs[name] for name in GRAPH_OUTPUT_NAMES))


def _real_counts(graph: GraphDetections, cfg: PostprocessConfig) -> list[int]:
    """Per image, how many of its slots survive ``cfg``: the graph's own count, cut to ``max_detections``,
    then to the scores above ``score_threshold`` (slots are best first, as the host path ranks them)."""
    counts = graph.num_dets.long().clamp(max=min(cfg.max_detections, int(graph.scores.shape[1])))
    if cfg.score_threshold > 0:
        slots = torch.arange(graph.scores.shape[1], device=graph.scores.device)
        above = (graph.scores > cfg.score_threshold) & (slots[None] < counts[:, None])
        counts = above.sum(dim=1)
    return counts.tolist()


def graph_to_detections(
    graph: GraphDetections,
    image_sizes: list[tuple[int, int]],
    cfg: PostprocessConfig = PostprocessConfig(),
    memory: MaskMemory | None = None,
) -> list[Detections]:
    """One :class:`Detections` per image, on the device of ``graph``, as
    :func:`~trt_yolact.inference.postprocess.postprocess` makes them from the raw outputs (``memory``: where
    full-resolution masks on the CPU are allocated)."""
    if len(image_sizes) != graph.scores.shape[0]:
        raise UsageError(f"{len(image_sizes)} image sizes for a batch of {graph.scores.shape[0]}")
    counts = _real_counts(graph, cfg)
    masks = graph.masks.float()
    full = upsample_masks(masks, counts, image_sizes, memory) if cfg.full_resolution_masks else {}
    results = []
    for b, (height, width) in enumerate(image_sizes):
        n = counts[b]
        rel = graph.boxes[b, :n].float()
        x1, x2 = sanitize_coordinates(rel[:, 0], rel[:, 2], width)
        y1, y2 = sanitize_coordinates(rel[:, 1], rel[:, 3], height)
        results.append(
            Detections(
                boxes=torch.stack((x1, y1, x2, y2), dim=1).long(),
                scores=graph.scores[b, :n].float(),
                classes=graph.classes[b, :n].long(),
                masks=full[b] if cfg.full_resolution_masks else masks[b, :n],
                image_size=(int(height), int(width)),
                boxes_relative=rel,
            )
        )
    return results
