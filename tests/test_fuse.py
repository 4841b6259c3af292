"""BN folding: exactness, fused checkpoints, and parity with the original YOLACT after fusion."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
from conftest import FIXTURE_CONFIG, load_expected
from test_prune import TINY_DARKNET, TINY_RESNET, images, max_difference, tiny_model
from torch import nn

from trt_yolact.config import get_config
from trt_yolact.fuse import main
from trt_yolact.inference.postprocess import postprocess
from trt_yolact.inference.preprocess import preprocess
from trt_yolact.model.checkpoint import build_model, read_checkpoint, save_checkpoint
from trt_yolact.model.fuse import conv_bn_pairs, fuse_model, is_fused_state_dict


def assert_fully_fused(model: nn.Module) -> None:
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    backbone_convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert backbone_convs and all(conv.bias is not None for conv in backbone_convs)


def test_fusion_is_exact_on_the_fixture_model(reference_dir, fixture_model):
    x = torch.from_numpy(load_expected(reference_dir, "chelsea")["input"])
    # The algebra, free of float32 rounding: in float64 fused and unfused agree to rounding level.
    double = copy.deepcopy(fixture_model).double()
    fused_double = fuse_model(double)
    assert_fully_fused(fused_double)
    assert max_difference(double, fused_double, x.double()) < 1e-9
    # In float32, with outputs up to ~20, the unfused model itself is ~4e-5 away from the float64 result:
    # an absolute 1e-5 is below float32 noise here. Fusion must add no error beyond that noise.
    fused = fuse_model(fixture_model)
    assert any(isinstance(m, nn.BatchNorm2d) for m in fixture_model.modules())  # the original is untouched
    with torch.no_grad():
        truth, unfused, folded = double(x.double()), fixture_model(x), fused(x)
    for name, t, a, b in zip(truth._fields, truth, unfused, folded):
        noise = float((a.double() - t).abs().max())
        assert float((b.double() - t).abs().max()) <= 2 * noise + 1e-6, name
        assert float((a - b).abs().max()) < 1e-4, name


def test_fusion_is_exact_on_a_darknet_model():
    model = tiny_model(TINY_DARKNET)
    fused = fuse_model(model)
    assert_fully_fused(fused)
    assert max_difference(model, fused, images()) < 1e-5
    # Every darknet conv and the stem had a BN: all of them are folded.
    assert len(conv_bn_pairs(model)) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_fused_checkpoint_is_detected_loads_and_predicts(tmp_path):
    model = tiny_model(TINY_RESNET)
    fused = fuse_model(model)
    path = save_checkpoint(tmp_path / "fused.pth", fused, fused=True)
    checkpoint = read_checkpoint(path)
    assert checkpoint.extra["fused"] is True
    assert is_fused_state_dict(checkpoint.state_dict) and not is_fused_state_dict(model.state_dict())
    assert not any(k.endswith(".running_var") for k in checkpoint.state_dict)
    assert "backbone.layers.0.0.conv1.bias" in checkpoint.state_dict
    loaded = build_model(checkpoint.state_dict, checkpoint.config)
    assert_fully_fused(loaded)
    assert max_difference(fused, loaded, images()) == 0.0
    assert max_difference(model, loaded, images()) < 1e-5
    with pytest.raises(ValueError, match="does not fit config"):
        build_model(checkpoint.state_dict, TINY_DARKNET)
    # The ordinary loader recognises a fused checkpoint by itself.
    from trt_yolact.model.checkpoint import load_model

    through_loader = load_model(path)
    assert_fully_fused(through_loader)
    assert max_difference(fused, through_loader, images()) == 0.0


@pytest.mark.parametrize("name", ["chelsea", "shapes"])
def test_fused_fixture_still_matches_the_original(reference_dir, fixture_model, name):
    fused = fuse_model(fixture_model)
    expected = load_expected(reference_dir, name)
    with torch.no_grad():
        raw = fused(torch.from_numpy(expected["input"]))
    # 1e-4 plus float32 rounding relative to the value: fusion reorders the arithmetic, and on shapes.png a
    # proto value of 9.29 lands 1.08e-4 away (the unfused model: 3.8e-5; both ~4e-5 from float64).
    for field in ("loc", "conf", "coeffs", "proto", "priors"):
        np.testing.assert_allclose(getattr(raw, field).numpy(), expected[field], atol=1e-4, rtol=1e-5, err_msg=field)
    image = cv2.imread(str(reference_dir / f"{name}.png"))
    with torch.no_grad():
        batch, sizes = preprocess([image], fused.config)
        detections = postprocess(fused(batch), sizes)[0]
    assert detections.classes.tolist() == expected["classes"].tolist()
    np.testing.assert_allclose(detections.scores.numpy(), expected["scores"], atol=1e-4, rtol=0)
    assert np.abs(detections.boxes.numpy() - expected["boxes"]).max() <= 1


def test_fuse_cli_writes_a_loadable_checkpoint_and_refuses_bad_input(reference_dir, tmp_path, capsys):
    out = tmp_path / "fused.pth"
    args = ["--weights", str(reference_dir / "yolact_fixture.pth"), "--config", str(FIXTURE_CONFIG), "--out", str(out)]
    assert main([*args, "--check-size", "64"]) == 0
    assert "raw outputs differ by at most" in capsys.readouterr().out
    checkpoint = read_checkpoint(out)
    assert checkpoint.extra["fused"] is True
    model = build_model(checkpoint.state_dict, get_config(FIXTURE_CONFIG))
    assert_fully_fused(model)
    half = tmp_path / "half.pth"
    assert (
        main(
            [
                "--weights",
                str(reference_dir / "yolact_fixture.pth"),
                "--config",
                str(FIXTURE_CONFIG),
                "--out",
                str(half),
                "--check-size",
                "0",
                "--half",
            ]
        )
        == 0
    )
    stored = torch.load(half, map_location="cpu", weights_only=True)["model"]
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    assert half.stat().st_size < 0.6 * out.stat().st_size
    capsys.readouterr()

    again = tmp_path / "again.pth"
    assert main(["--weights", str(out), "--out", str(again)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already fused" in err and not again.exists()
    assert main(["--weights", str(tmp_path / "missing.pth"), "--out", str(again)]) == 2
    assert "does not exist" in capsys.readouterr().err and not again.exists()
