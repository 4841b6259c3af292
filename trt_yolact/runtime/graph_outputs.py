"""How a deployed artifact tells that its graph holds the post-processing, for the runners that open it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..config import PostprocessConfig
from ..structures import GRAPH_OUTPUT_NAMES


def has_graph_outputs(output_names: Iterable[str]) -> bool:
    """Whether an artifact's outputs are those of the graph post-processing (``num_dets, boxes, ...``)."""
    names = set(output_names)
    return all(name in names for name in GRAPH_OUTPUT_NAMES)


def recorded_postprocess_config(record: Mapping[str, Any] | None) -> PostprocessConfig | None:
    """The post-processing settings an engine's sidecar records for its graph; None when it records none
    (or something unreadable: the settings are then unknown, not an error)."""
    settings = (record or {}).get("postprocess_config")
    if not isinstance(settings, dict):
        return None
    try:
        return PostprocessConfig(**settings)
    except TypeError:
        return None
