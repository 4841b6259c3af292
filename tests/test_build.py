"""The build command: every artifact written whole, verified against torch, and reported."""

from __future__ import annotations

import json

import pytest

from trt_yolact.build import main as build_main
from trt_yolact.config import BackboneConfig, YolactConfig
from trt_yolact.model.checkpoint import save_checkpoint
from trt_yolact.model.yolact import Yolact

TINY = YolactConfig(
    name="tiny",
    backbone=BackboneConfig(layers=(1, 1, 1, 1), widths=(8, 16, 16, 32), stem_channels=16),
    max_size=128,
    class_names=("a", "b", "c"),
    category_ids=(1, 2, 3),
    fpn_channels=32,
    proto_channels=32,
    head_channels=32,
    pred_scales=((8,), (16,), (32,), (64,), (128,)),
)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    model = Yolact(TINY).eval()
    with torch.no_grad():  # random BN statistics so that fusion has something to fold
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", model)


def test_build_writes_verified_artifacts_and_a_report(tiny_checkpoint, tmp_path, capsys):
    out, engines = tmp_path / "export", tmp_path / "engines"
    code = build_main(
        [
            "--weights",
            str(tiny_checkpoint),
            "--postprocess",
            "graph",
            "--out",
            str(out),
            "--engines",
            str(engines),
            "--repeats",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "TensorRT engine skipped" in printed or "tensorrt" in printed
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "tiny.build.json",
        "tiny.fused.fp16.onnx",
        "tiny.fused.onnx",
        "tiny.fused.postprocess.fp16.onnx",
        "tiny.fused.postprocess.onnx",
        "tiny.fused.pth",
    ]
    report = json.loads((out / "tiny.build.json").read_text())
    by_name = {a["name"]: a for a in report["artifacts"]}
    assert max(by_name["tiny.fused.onnx"]["max_abs_error"].values()) < 1e-4
    assert by_name["tiny.fused.onnx"]["same_detections"] is True
    assert by_name["tiny fused (torch)"]["same_detections"] is True
    for graph in ("tiny.fused.postprocess.onnx", "tiny.fused.postprocess.fp16.onnx"):  # checked as the others
        assert by_name[graph]["note"] == "graph post-processing" and by_name[graph]["max_abs_error"] == {}
    assert by_name["tiny.fused.postprocess.onnx"]["same_detections"] is True
    assert by_name["tiny.fused.postprocess.onnx"]["detection_agreement"] == 1.0
    assert by_name["tiny.fused.fp16.onnx"]["precision"] == "fp16"
    assert report["fused"] is True and report["params"] > 0 and report["macs"] > 0


def test_build_bad_input_is_one_line(tiny_checkpoint, tmp_path, capsys):
    assert build_main(["--weights", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "does not exist" in err[0]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert build_main(["--weights", str(tiny_checkpoint), "--out", str(blocker / "sub")]) == 2
    assert capsys.readouterr().err.startswith("error:")
    with pytest.raises(SystemExit) as exit_info:  # rejected by the argument parser, naming the flag
        build_main(["--weights", str(tiny_checkpoint), "--batch", "8,4,1", "--out", str(tmp_path / "y")])
    assert exit_info.value.code == 2 and "argument --batch: need min <= opt <= max" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_tf32_is_off_unless_asked_and_reported(tmp_path, capsys):
    from trt_yolact.build import build_parser, print_report
    from trt_yolact.metrics.verify import ArtifactCheck, BuildReport

    assert build_parser().parse_args([]).tf32 is False
    assert build_parser().parse_args(["--tf32"]).tf32 is True
    assert build_parser().parse_args(["--no-tf32"]).tf32 is False
    engine = ArtifactCheck("m.fp16.engine", "tensorrt", "fp16", "m.fp16.engine", 10)
    engine.equivalent_commands = {"trtexec": "trtexec --onnx=m.fp16.onnx", "polygraphy": "polygraphy run m.fp16.onnx"}
    report = BuildReport("m", "m.pth", "cfg", 1, 1, True, [engine], [], 1.0)
    print_report(report, tmp_path / "m.build.json")
    printed = capsys.readouterr().out.splitlines()
    assert "trtexec equivalent of m.fp16.engine: trtexec --onnx=m.fp16.onnx" in printed
    assert "polygraphy equivalent of m.fp16.engine: polygraphy run m.fp16.onnx" in printed
    assert json.loads(json.dumps(report.to_dict()))["artifacts"][0]["equivalent_commands"]["trtexec"]
