"""Official layouts, strict loading, architecture from checkpoint shapes, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import official_layout, random_state_dict

from trt_yolact.config import OFFICIAL_CONFIGS, get_config, infer_config_name
from trt_yolact.errors import CheckpointError, ConfigError
from trt_yolact.model.checkpoint import load_model, read_checkpoint, save_checkpoint
from trt_yolact.model.yolact import Yolact

OFFICIAL = sorted(OFFICIAL_CONFIGS)


@pytest.mark.parametrize("name", OFFICIAL)
def test_state_dict_equals_official_layout(reference_dir, name):
    model = Yolact(get_config(name))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_layout(reference_dir, name)


@pytest.mark.parametrize("name", ["yolact_resnet50", "yolact_darknet53"])
def test_released_file_loads_strictly_and_runs(reference_dir, tmp_path, name):
    layout = official_layout(reference_dir, name)
    state = random_state_dict(layout)
    # Released files carry a stray third FPN downsample layer that the original loader drops.
    state["fpn.downsample_layers.2.weight"] = torch.zeros(256, 256, 3, 3)
    state["fpn.downsample_layers.2.bias"] = torch.zeros(256)
    path = tmp_path / f"{name}_54_800000.pth"
    torch.save(state, path)
    model = load_model(path)  # config inferred from the file name
    assert model.config.name == name
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 128, 128))
    assert out.conf.shape[-1] == 81 and out.coeffs.shape[-1] == 32
    assert torch.allclose(out.conf.sum(-1), torch.ones(1))


def test_internal_widths_follow_the_checkpoint(reference_dir):
    """Pruned-style irregular bottleneck widths (the fixture) build without a width table."""
    state = torch.load(reference_dir / "yolact_fixture.pth", weights_only=True)
    model = load_model(reference_dir / "yolact_fixture.pth", "tests/data/fixture_config.json")
    assert model.backbone.layers[1][0].conv2.weight.shape == state["backbone.layers.1.0.conv2.weight"].shape


def test_darknet_internal_widths_follow_the_checkpoint(reference_dir):
    layout = official_layout(reference_dir, "yolact_darknet53")
    state = random_state_dict(layout)
    key = "backbone.layers.2.3.conv1"
    state[f"{key}.0.weight"] = state[f"{key}.0.weight"][:40]
    for suffix in ("weight", "bias", "running_mean", "running_var"):
        state[f"{key}.1.{suffix}"] = state[f"{key}.1.{suffix}"][:40]
    conv2 = "backbone.layers.2.3.conv2.0.weight"
    state[conv2] = state[conv2][:, :40]
    from trt_yolact.model.checkpoint import build_model

    model = build_model(state, get_config("yolact_darknet53"))
    assert model.backbone.layers[2][3].conv1[0].out_channels == 40


def test_mismatch_lists_missing_unexpected_and_misshaped(reference_dir, tmp_path):
    state = random_state_dict(official_layout(reference_dir, "yolact_resnet50"))
    del state["fpn.lat_layers.0.bias"]
    state["something.extra"] = torch.zeros(3)
    state["prediction_layers.0.conf_layer.weight"] = torch.zeros(3 * 21, 256, 3, 3)
    path = tmp_path / "model.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path, "yolact_resnet50")
    message = str(info.value)
    assert "missing keys (1)" in message and "fpn.lat_layers.0.bias" in message
    assert "unexpected keys (1)" in message and "something.extra" in message
    assert "misshaped keys" in message and "conf_layer.weight" in message


def test_wrong_config_is_reported(reference_dir, tmp_path):
    path = tmp_path / "yolact_resnet50_1_2.pth"
    torch.save(random_state_dict(official_layout(reference_dir, "yolact_resnet50")), path)
    with pytest.raises(CheckpointError, match="does not fit config 'yolact_base'"):
        load_model(path, "yolact_base")


def test_not_a_checkpoint_gives_one_line_error(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert "not a usable PyTorch checkpoint" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pth")


def test_pickled_objects_are_refused(tmp_path):
    """weights_only=True: a checkpoint that needs arbitrary code to unpickle is rejected."""
    path = tmp_path / "evil.pth"
    torch.save({"model": object()}, path)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_own_checkpoint_round_trip_carries_config(fixture_model, tmp_path):
    path = save_checkpoint(tmp_path / "mine.pth", fixture_model, iteration=3)
    loaded = load_model(path)
    assert loaded.config == fixture_model.config
    for (k, a), (_, b) in zip(fixture_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    half = save_checkpoint(tmp_path / "half.pth", fixture_model, half=True)
    assert half.stat().st_size < path.stat().st_size * 0.6
    assert load_model(half).state_dict()["fpn.lat_layers.0.weight"].dtype == torch.float32


@pytest.mark.parametrize(
    "file_name, expected",
    [
        ("yolact_base_54_800000.pth", "yolact_base"),
        ("yolact_im700_54_800000.pth", "yolact_im700"),
        ("yolact_darknet53_54_800000.pth", "yolact_darknet53"),
        ("yolact_resnet50_54_800000.pth", "yolact_resnet50"),
        ("yolact_base_10_32100_interrupt.pth", "yolact_base"),
        ("mystery.pth", None),
    ],
)
def test_config_inferred_from_file_name(file_name, expected):
    assert infer_config_name(file_name) == expected


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "benchmarks" / "configs").glob("*.yaml")), ids=lambda p: p.stem
)
def test_benchmark_configs_build_and_run(path):
    """The candidate architectures in benchmarks/configs load, are named after their file, and run."""
    config = get_config(path)
    assert config.name == path.stem and config.class_names
    with torch.no_grad():
        out = Yolact(config).eval()(torch.zeros(1, 3, 64, 64))
    assert out.conf.shape[-1] == config.num_classes


def test_config_files(tmp_path):
    yaml_file = tmp_path / "custom.yaml"
    yaml_file.write_text(
        "name: custom\nmax_size: 384\nclass_names: [a, b]\ncategory_ids: [1, 2]\n"
        "backbone: {kind: resnet, layers: [1, 1, 1, 1], widths: [8, 16, 32, 64], stem_channels: 16}\n"
        "fpn_channels: 32\nproto_channels: 32\nhead_channels: 32\n"
    )
    config = get_config(yaml_file)
    assert config.num_classes == 3 and config.backbone.layers == (1, 1, 1, 1)
    with torch.no_grad():
        out = Yolact(config).eval()(torch.zeros(2, 3, 384, 384))
    assert out.conf.shape[0] == 2 and out.conf.shape[-1] == 3
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "fpn_chanels": 3}')
    with pytest.raises(ConfigError, match="unknown config fields"):
        get_config(bad)
    with pytest.raises(ConfigError, match="unknown config"):
        get_config("yolact_huge")


@pytest.mark.parametrize(
    "text, message",
    [
        ('name: x\nmax_size: "abc"\n', "config field 'max_size' must be an integer, got 'abc'"),
        ("name: x\nbackbone: {layers: [1, 1, a]}\n", "config field 'backbone.layers' must be a list of integers"),
        ("name: x\npred_scales: [[12], [b]]\n", "'pred_scales' must be a list of lists of integers"),
        ("name: x\nuse_pixel_scales: 1\n", "'use_pixel_scales' must be a boolean"),
        ("name: x\nbackbone: [1]\n", "'backbone' must be a mapping"),
        (": : :\n- [\n", "cannot parse config file"),
    ],
)
def test_a_config_file_typo_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "custom.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        get_config(path)
    assert message in str(info.value) and "\n" not in str(info.value)
