"""Shared fixtures: the reference data of the original YOLACT and small models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
FIXTURE_CONFIG = Path(__file__).parent / "data" / "fixture_config.json"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def reference_available() -> bool:
    return (REFERENCE / "yolact_fixture.pth").is_file()


requires_reference = pytest.mark.skipif(
    not reference_available(), reason="the original YOLACT's reference data (../shared/reference) is absent"
)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not reference_available():
        pytest.skip("the original YOLACT's reference data (../shared/reference) is absent")
    return REFERENCE


@pytest.fixture(scope="session")
def fixture_model(reference_dir):
    from trt_yolact.checkpoint import load_model

    return load_model(reference_dir / "yolact_fixture.pth", FIXTURE_CONFIG)


def load_expected(reference_dir: Path, name: str) -> dict[str, np.ndarray]:
    data = np.load(reference_dir / f"{name}_expected.npz")
    expected = {k: data[k] for k in data.files}
    _, height, width = expected["mask_shape"]
    expected["masks_full"] = np.unpackbits(expected["masks"], axis=-1, count=int(width)).astype(bool)
    return expected
