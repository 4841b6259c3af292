"""The embedded demo models: small enough to ship, they load everywhere by name, and they really detect.

The accuracy checks run on shapes images generated here with seeds no training run used, over both the
standard and the unseen background families, so a broken model, loader or post-processing fails them.
The full 500-image numbers are in docs/MODEL_CARD.md; these small sets only guard against regressions.
"""

from __future__ import annotations

import pytest
import torch

from trt_yolact.data.synthetic import SHAPE_CLASSES, generate_dataset
from trt_yolact.inference.predictor import Predictor
from trt_yolact.metrics.coco_eval import evaluate
from trt_yolact.model.channel_groups import channel_groups
from trt_yolact.model.checkpoint import EMBEDDED_MODELS, embedded_model_path, load_model
from trt_yolact.model.stats import count_params
from trt_yolact.runtime.torch_runner import TorchRunner

MAX_SHIPPED_BYTES = 8 * 2**20
# (box, mask) AP lower bounds on these 40-image sets, about 5-6 points under what the shipped models score
# on them (dense 68.5/63.2 standard, 59.6/56.0 unseen; pruned 66.7/63.3 and 58.5/57.0; slim 68.1/62.0 and
# 59.2/54.3).
MIN_AP = {
    ("yolact_shapes", "standard"): (0.63, 0.58),
    ("yolact_shapes", "unseen"): (0.54, 0.50),
    ("yolact_shapes_pruned", "standard"): (0.61, 0.58),
    ("yolact_shapes_pruned", "unseen"): (0.53, 0.51),
    ("yolact_shapes_slim", "standard"): (0.62, 0.57),
    ("yolact_shapes_slim", "unseen"): (0.53, 0.49),
}

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module", params=["standard", "unseen"])
def held_out(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"held_out_{request.param}")
    paths = generate_dataset(root, 0, 40, 256, seed=2027, backgrounds=request.param)
    return request.param, paths


@pytest.mark.parametrize("name", EMBEDDED_MODELS)
def test_shipped_model_is_small_and_loads_by_name(name):
    path = embedded_model_path(name)
    assert path.is_file(), f"{name} is not shipped"
    assert path.stat().st_size <= MAX_SHIPPED_BYTES
    model = load_model(name)
    assert model.config.class_names == SHAPE_CLASSES and model.config.max_size <= 320
    assert all(p.dtype == torch.float32 for p in model.parameters()), "fp16 storage loads as fp32"


def test_pruned_model_is_the_dense_one_slimmed():
    dense, pruned = load_model("yolact_shapes"), load_model("yolact_shapes_pruned")
    assert dense.state_dict().keys() == pruned.state_dict().keys(), "same architecture, narrower layers"
    assert count_params(pruned) < 0.5 * count_params(dense)
    assert (
        embedded_model_path("yolact_shapes_pruned").stat().st_size
        <= 0.4 * embedded_model_path("yolact_shapes").stat().st_size
    )


def test_slim_model_is_the_dense_one_pruned_whole():
    dense, slim = load_model("yolact_shapes"), load_model("yolact_shapes_slim")
    assert dense.state_dict().keys() == slim.state_dict().keys(), "same architecture, every group narrower"
    widths = {g.name: g.width for g in channel_groups(slim, "all")}
    narrower = {g.kind for g in channel_groups(dense, "all") if widths[g.name] < g.width}
    assert narrower == {"internal", "stem", "stage", "fpn", "protonet", "prototypes", "head"}
    assert (
        embedded_model_path("yolact_shapes_slim").stat().st_size
        <= 0.2 * embedded_model_path("yolact_shapes").stat().st_size
    )


@pytest.mark.parametrize("name", EMBEDDED_MODELS)
def test_shipped_model_detects_held_out_shapes(name, held_out):
    backgrounds, paths = held_out
    model = load_model(name)
    predictor = Predictor(TorchRunner(model, "cpu"), model.config)
    result, _ = evaluate(predictor, paths["val_annotations"], paths["val_images"], batch_size=8, progress=False)
    min_box, min_mask = MIN_AP[(name, backgrounds)]
    assert result.bbox["AP"] >= min_box, (name, backgrounds, result.bbox)
    assert result.segm["AP"] >= min_mask, (name, backgrounds, result.segm)
