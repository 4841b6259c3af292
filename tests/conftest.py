"""Shared fixtures: the reference data of the original YOLACT and small models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trt_yolact.config import BackboneConfig, YolactConfig
from trt_yolact.model.checkpoint import save_checkpoint
from trt_yolact.model.yolact import Yolact

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
FIXTURE_CONFIG = Path(__file__).parent / "data" / "fixture_config.json"
# A model of a few thousand parameters for the tests that run commands on bad input: fast to build and save.
TINY = YolactConfig(
    name="tiny",
    backbone=BackboneConfig(layers=(1, 1, 1, 1), widths=(4, 4, 8, 8), stem_channels=8),
    max_size=64,
    class_names=("circle", "rectangle", "triangle", "star", "ring"),
    category_ids=(1, 2, 3, 4, 5),
    fpn_channels=8,
    proto_channels=8,
    head_channels=8,
    mask_dim=4,
    pred_scales=((8,), (16,), (32,), (48,), (64,)),
)

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def reference_available() -> bool:
    return (REFERENCE / "yolact_fixture.pth").is_file()


requires_reference = pytest.mark.skipif(
    not reference_available(), reason="the original YOLACT's reference data (../shared/reference) is absent"
)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A checkpoint of the :data:`TINY` model (random weights, seed 0)."""
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pth", Yolact(TINY).eval())


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not reference_available():
        pytest.skip("the original YOLACT's reference data (../shared/reference) is absent")
    return REFERENCE


@pytest.fixture(scope="session")
def fixture_model(reference_dir):
    from trt_yolact.model.checkpoint import load_model

    return load_model(reference_dir / "yolact_fixture.pth", FIXTURE_CONFIG)


def official_layout(reference_dir: Path, name: str) -> dict[str, list[int]]:
    import json

    return json.loads((reference_dir / "official" / f"{name}.json").read_text())["tensors"]


def random_state_dict(layout: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in a released checkpoint's exact layout (BN variances kept positive)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    return state


def load_expected(reference_dir: Path, name: str) -> dict[str, np.ndarray]:
    data = np.load(reference_dir / f"{name}_expected.npz")
    expected = {k: data[k] for k in data.files}
    _, height, width = expected["mask_shape"]
    expected["masks_full"] = np.unpackbits(expected["masks"], axis=-1, count=int(width)).astype(bool)
    return expected
