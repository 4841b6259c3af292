"""Probe 15's findings against the tool commands (fuse, prune, export, train, data.shapes, demo), run
in-process through each command's main(): a user's mistake is one ``error:`` line (or argparse's line naming
the flag) with exit 2, and nothing is left written."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY

from trt_yolact.bench import main as bench_main
from trt_yolact.config import PostprocessConfig
from trt_yolact.data.shapes import main as shapes_main
from trt_yolact.data.synthetic import generate_dataset
from trt_yolact.demo import main as demo_main
from trt_yolact.errors import UsageError
from trt_yolact.eval import main as eval_main
from trt_yolact.export import main as export_main
from trt_yolact.fuse import main as fuse_main
from trt_yolact.inference.predictor import Predictor
from trt_yolact.inference.stream import run_demo
from trt_yolact.inference.video_io import VideoSource
from trt_yolact.model.checkpoint import checkpoint_payload, save_checkpoint, serialize
from trt_yolact.model.fuse import max_output_difference
from trt_yolact.model.yolact import Yolact
from trt_yolact.predict import main as predict_main
from trt_yolact.prune import main as prune_main
from trt_yolact.runtime.base import resolve_device
from trt_yolact.runtime.torch_runner import TorchRunner
from trt_yolact.train import main as train_main
from trt_yolact.training import trainer as trainer_module

PROGRESS = re.compile(r"\w+: +\d+%\|")
NON_UTF8 = os.fsdecode(b"v\xff")  # a name Linux allows and OpenCV crashes on


def error_line(capsys, code: int, expected: int = 2) -> str:
    """The one ``error:`` line a command printed, once its exit code and the absence of a traceback are checked."""
    err = capsys.readouterr().err
    # tqdm's progress bar and the indented detail under an error (a checkpoint's key listing) are not lines
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS.match(line) and line[0] != " "]
    assert code == expected, err
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def argparse_line(capsys, main, argv: list[str]) -> str:
    """argparse's error line for ``argv`` (exit 2)."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps(TINY.to_dict()))
    return path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    return generate_dataset(tmp_path_factory.mktemp("shapes"), 2, 1, 64, seed=5)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "v.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for index in range(6):
        writer.write(np.full((48, 64, 3), 40 * index, np.uint8))
    writer.release()
    return path


def train_args(tiny_config: Path, shapes: dict[str, Path], out: Path, *extra: str) -> list[str]:
    data = f"{shapes['train_annotations']}:{shapes['train_images']}"
    common = ["--batch-size", "2", "--workers", "0", "--val-every", "0", "--warmup-iters", "0"]
    return ["--config", str(tiny_config), "--data-train", data, "--out", str(out), "--device", "cpu", *common, *extra]


@pytest.fixture(scope="module")
def train_state(tmp_path_factory, tiny_config, shapes) -> Path:
    """A real training state (one iteration, checkpointed)."""
    out = tmp_path_factory.mktemp("run") / "run"
    args = train_args(tiny_config, shapes, out, "--iters", "2", "--checkpoint-every", "1", "--stop-at", "1")
    assert train_main(args) == 0
    return out / "last.pth"


# ------------------------------------------------------------------ 1: non-UTF-8 names (OpenCV crashes)
def test_demo_refuses_a_non_utf8_source_name(tmp_path, capsys, video):
    source = tmp_path / f"{NON_UTF8}.mp4"
    shutil.copy(video, source)
    line = error_line(capsys, demo_main(["--source", str(source), "--no-display"]))
    assert "not a UTF-8 name" in line and "v\\xff.mp4" in line


def test_demo_refuses_a_non_utf8_output_name(tmp_path, capsys, video, tiny):
    out = tmp_path / f"{NON_UTF8}.mp4"
    code = demo_main(["--source", str(video), "--weights", str(tiny), "--no-display", "--out", str(out)])
    assert "not a UTF-8 name" in error_line(capsys, code)
    assert listing(tmp_path) == []


# ------------------------------------------------------------------ 3: fuse --half fooled by fp16 overflow
def test_fuse_half_refuses_weights_beyond_fp16(tmp_path, capsys):
    torch.manual_seed(0)
    model = Yolact(TINY).eval()
    with torch.no_grad():
        next(model.proto_net.parameters()).view(-1)[:2] = torch.tensor([1e6, -1e6])
    weights = save_checkpoint(tmp_path / "big.pth", model)
    out = tmp_path / "f.pth"
    line = error_line(capsys, fuse_main(["--weights", str(weights), "--out", str(out), "--half"]))
    assert "fp16 range" in line and "proto_net" in line
    assert not out.exists() and listing(tmp_path) == ["big.pth"]


def test_fuse_refuses_a_model_whose_outputs_are_nan(tmp_path, capsys):
    torch.manual_seed(0)
    model = Yolact(TINY).eval()
    with torch.no_grad():
        next(model.proto_net.parameters()).fill_(float("nan"))
    weights = save_checkpoint(tmp_path / "nan.pth", model)
    line = error_line(capsys, fuse_main(["--weights", str(weights), "--out", str(tmp_path / "f.pth"), "--half"]))
    assert "NaN or inf" in line and "proto" in line
    assert listing(tmp_path) == ["nan.pth"]


def test_output_difference_is_nan_when_an_output_is():
    torch.manual_seed(0)
    model = Yolact(TINY).eval()
    broken = Yolact(TINY).eval()
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        for parameter in broken.proto_net.parameters():  # not the first output: Python's max skipped it
            parameter.fill_(float("nan"))
    assert np.isnan(max_output_difference(model, broken, 64))


# ------------------------------------------------------------------ 9: damaged or foreign --resume state
def _edit_state(data: dict, edit: str) -> None:
    if edit == "model-key":
        data["model"].pop(next(iter(data["model"])))
    else:
        key, value = {
            "iteration-str": ("iteration", "x"),
            "iteration-neg": ("iteration", -5),
            "rng": ("rng", {}),
            "optimizer": ("optimizer", {}),
            "history": ("history", "x"),
            "config": ("config", None),
        }[edit]
        data[key] = value


@pytest.mark.parametrize(
    "edit", ["iteration-str", "iteration-neg", "rng", "optimizer", "history", "model-key", "config"]
)
def test_train_resume_from_a_damaged_state_is_one_line(tmp_path, capsys, tiny_config, shapes, train_state, edit):
    data = torch.load(train_state, weights_only=True)
    _edit_state(data, edit)
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pth").write_bytes(serialize(data))
    before = listing(out)
    code = train_main(train_args(tiny_config, shapes, out, "--iters", "3", "--resume"))
    assert "--resume" in error_line(capsys, code)
    assert listing(out) == before


# ------------------------------------------------------------------ 10: train's float flags, divergence
@pytest.mark.parametrize(
    "flag, value",
    [
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--lr", "-1"),
        ("--sparsity", "nan"),
        ("--sparsity", "inf"),
        ("--clip-grad", "-1"),
        ("--min-box-size", "nan"),
        ("--expand-max", "nan"),
        ("--expand-max", "-2"),
    ],
)
def test_train_float_flags_are_checked_by_argparse(tmp_path, capsys, flag, value):
    line = argparse_line(capsys, train_main, ["--out", str(tmp_path / "run"), flag, value])
    assert f"argument {flag}" in line
    assert listing(tmp_path) == []


def test_train_divergence_is_one_line_and_leaves_nothing(tmp_path, capsys, tiny_config, shapes):
    out = tmp_path / "run"
    code = train_main(train_args(tiny_config, shapes, out, "--iters", "6", "--lr", "1e12"))
    line = error_line(capsys, code)
    assert "training diverged" in line and "non-finite" in line and "no checkpoint was written" in line
    assert not out.exists()


def test_train_skips_a_lone_non_finite_batch_as_the_original_does(tmp_path, monkeypatch, tiny_config, shapes):
    """One NaN loss (an AMP overflow, an odd batch) is skipped, not taken for divergence: the run finishes."""
    from trt_yolact.training.loss import YolactLoss

    forward, calls = YolactLoss.forward, []

    def nan_on_the_second_call(self, *args, **kwargs):
        losses = forward(self, *args, **kwargs)
        calls.append(1)
        return {k: v * float("nan") for k, v in losses.items()} if len(calls) == 2 else losses

    monkeypatch.setattr(YolactLoss, "forward", nan_on_the_second_call)
    out = tmp_path / "run"
    assert train_main(train_args(tiny_config, shapes, out, "--iters", "4")) == 0
    assert (out / "model_final.pth").is_file() and len(calls) == 4  # iteration 2 skipped, 3 and 4 trained


# ------------------------------------------------------------------ 11: bad --device
@pytest.mark.parametrize("device", ["bogus", "", "mps", "meta"])
def test_bad_device_is_refused_for_every_command(tmp_path, capsys, device):
    line = argparse_line(capsys, train_main, ["--out", str(tmp_path / "run"), "--device", device])
    assert "argument --device" in line and "cpu, cuda" in line
    for main in (demo_main, predict_main, eval_main, bench_main):  # --device from add_runtime_arguments
        assert "argument --device" in argparse_line(capsys, main, ["--device", device])
    with pytest.raises(UsageError, match="device must be"):
        resolve_device(device)
    assert listing(tmp_path) == []


# ------------------------------------------------------------------ 13: fuse leaves nothing on failure
def test_fuse_interrupted_during_the_check_leaves_no_output(tmp_path, capsys, tiny, monkeypatch):
    import trt_yolact.fuse as fuse_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fuse_module, "compare_outputs", interrupted)
    out = tmp_path / "fu.pth"
    assert fuse_main(["--weights", str(tiny), "--out", str(out)]) == 130
    assert listing(tmp_path) == []


def test_fuse_check_size_beyond_the_limit_is_refused_before_work(tmp_path, capsys, tiny):
    out = tmp_path / "fu3.pth"
    line = argparse_line(capsys, fuse_main, ["--weights", str(tiny), "--out", str(out), "--check-size", "100000"])
    assert "argument --check-size" in line and "4096" in line
    assert listing(tmp_path) == []


# ------------------------------------------------------------------ 15: write errors name the real path
def test_fuse_write_errors_name_the_path_given(tmp_path, capsys, tiny):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = {
        str(tmp_path / "folder"): "is a folder",
        "": "no file name given",
        str(tmp_path / "afile" / "x.pth"): "is a file, not a folder",
    }
    for out, reason in cases.items():
        line = error_line(capsys, fuse_main(["--weights", str(tiny), "--out", out]))
        assert reason in line and ".tmp" not in line, line
    assert listing(tmp_path) == ["afile", "folder"]


def test_train_out_under_a_file_says_not_a_folder(tmp_path, capsys, tiny_config, shapes):
    (tmp_path / "afile").write_text("x")
    code = train_main(train_args(tiny_config, shapes, tmp_path / "afile" / "run", "--iters", "1"))
    line = error_line(capsys, code)
    assert "afile is a file, not a folder" in line and "File exists" not in line
    assert listing(tmp_path) == ["afile"]


# ------------------------------------------------------------------ 16: a new run into an old run's folder
def test_train_refuses_a_folder_holding_another_run(tmp_path, capsys, tiny_config, shapes, train_state):
    out = tmp_path / "old"
    shutil.copytree(train_state.parent, out)
    before = listing(out)
    line = error_line(capsys, train_main(train_args(tiny_config, shapes, out, "--iters", "3")))
    assert "already holds a training run" in line and "--resume" in line
    assert listing(out) == before


def test_train_interrupted_before_a_checkpoint_names_none(tmp_path, capsys, tiny_config, shapes, monkeypatch):
    def interrupted(self, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "step", interrupted)
    out = tmp_path / "run"
    assert train_main(train_args(tiny_config, shapes, out, "--iters", "3")) == 130
    printed = capsys.readouterr().out
    assert "no checkpoint was written yet" in printed and "last.pth" not in printed
    assert not out.exists()


# ------------------------------------------------------------------ 17: crafted checkpoints
@pytest.mark.parametrize("craft", ["config-list", "config-str", "downsample-key"])
def test_crafted_checkpoints_are_one_line(tmp_path, capsys, craft):
    payload = checkpoint_payload(Yolact(TINY).eval())
    if craft == "config-list":
        payload["config"] = [1, 2]
    elif craft == "config-str":
        payload["config"] = "tiny"
    else:
        payload["model"]["fpn.downsample_layers.x.weight"] = torch.zeros(1)
    weights = tmp_path / "crafted.pth"
    weights.write_bytes(serialize(payload))
    error_line(capsys, fuse_main(["--weights", str(weights), "--out", str(tmp_path / "f.pth")]))
    assert listing(tmp_path) == ["crafted.pth"]


# ------------------------------------------------------------------ 18: config files
@pytest.mark.parametrize(
    "change, needle",
    [
        ({"pred_aspect_ratios": [-1.0, 0.5, 2.0]}, "pred_aspect_ratios"),
        ({"pred_aspect_ratios": [0.0, 0.5, 2.0]}, "pred_aspect_ratios"),
        ({"std": [0.0, 0.0, 0.0]}, "std"),
        ({"category_ids": [1, 1, 3, 4, 5]}, "category_ids"),
        (None, "not UTF-8"),
    ],
    ids=["ratio-negative", "ratio-zero", "std-zero", "duplicate-ids", "latin-1"],
)
def test_bad_config_files_are_one_line(tmp_path, capsys, shapes, change, needle):
    config = tmp_path / "bad.yaml"
    if change is None:
        config.write_bytes("name: caf\xe9\n".encode("latin-1"))
    else:
        config.write_text(json.dumps({**TINY.to_dict(), **change}))
    out = tmp_path / "run"
    args = train_args(config, shapes, out, "--iters", "1")
    assert needle in error_line(capsys, train_main(args))
    assert not out.exists()


# ------------------------------------------------------------------ 21: huge sizes refused before allocating
@pytest.mark.parametrize(
    "main, argv, flag",
    [
        (export_main, ["--weights", "yolact_shapes", "--batch", "100000"], "--batch"),
        (shapes_main, ["--out", "ds", "--size", "100000", "--train", "1", "--val", "0"], "--size"),
        (
            prune_main,
            ["--weights", "yolact_shapes", "--ratio", "0.5", "--dry-run", "--input-size", "100000"],
            "--input-size",
        ),
    ],
    ids=["export-batch", "shapes-size", "prune-input-size"],
)
def test_huge_sizes_are_refused_with_the_limit(tmp_path, capsys, monkeypatch, main, argv, flag):
    monkeypatch.chdir(tmp_path)
    line = argparse_line(capsys, main, argv)
    assert f"argument {flag}: must be from" in line
    assert listing(tmp_path) == []


# ------------------------------------------------------------------ 22: a full disk while training
def test_train_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, tiny_config, shapes, monkeypatch):
    def full(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(trainer_module, "atomic_write_bytes", full)
    out = tmp_path / "run"
    code = train_main(train_args(tiny_config, shapes, out, "--iters", "2", "--checkpoint-every", "1"))
    line = error_line(capsys, code)
    assert "No space left on device" in line and "last.pth" in line
    assert not out.exists()


def test_a_tensorboard_thread_failure_is_raised_not_printed(tmp_path, capsys):
    from trt_yolact.training.logs import TrainingLog

    log = TrainingLog(tmp_path, 0, Yolact(TINY), None)

    class Writer(threading.Thread):  # stands for TensorBoard's writer thread meeting a full disk
        def run(self) -> None:
            raise OSError(28, "No space left on device", str(tmp_path / "tensorboard"))

    Writer.__module__ = "tensorboard.summary.writer.event_file_writer"
    thread = Writer()
    thread.start()
    thread.join()
    with pytest.raises(OSError, match="No space left"):
        log.close()
    assert "Exception in thread" not in capsys.readouterr().err


# ------------------------------------------------------------------ 23: data.shapes leaves no partial dataset
def test_shapes_regenerated_keeps_no_stale_images(tmp_path):
    generate_dataset(tmp_path, 1, 3, 32, seed=1)
    assert shapes_main(["--out", str(tmp_path), "--train", "1", "--val", "1", "--size", "32"]) == 0
    assert sorted(p.name for p in (tmp_path / "val").iterdir()) == ["000000.png"]
    assert len(json.loads((tmp_path / "annotations" / "instances_val.json").read_text())["images"]) == 1


def test_shapes_interrupted_leaves_nothing(tmp_path, capsys, monkeypatch):
    import trt_yolact.data.synthetic as synthetic

    real = synthetic._write_split

    def interrupted(out_dir, split, *args):
        if split == "val":
            raise KeyboardInterrupt
        return real(out_dir, split, *args)

    monkeypatch.setattr(synthetic, "_write_split", interrupted)
    out = tmp_path / "ds"
    assert shapes_main(["--out", str(out), "--train", "2", "--val", "1", "--size", "32"]) == 130
    assert not out.exists()


# ------------------------------------------------------------------ 24: empty or odd values
def test_empty_or_folder_weights_and_sources_are_named_accurately(tmp_path, capsys, tiny_config, shapes):
    out = str(tmp_path / "f.pth")
    assert "no checkpoint given" in error_line(capsys, fuse_main(["--weights", "", "--out", out]))
    assert "is a folder" in error_line(capsys, fuse_main(["--weights", str(tmp_path), "--out", out]))
    assert "source is empty" in error_line(capsys, demo_main(["--source", "", "--no-display"]))
    run = tmp_path / "run"
    (run / "last.pth").mkdir(parents=True)
    code = train_main(train_args(tiny_config, shapes, run, "--iters", "1", "--resume"))
    assert "is a folder" in error_line(capsys, code)
    assert listing(tmp_path) == ["run", "run/last.pth"]


# ------------------------------------------------------------------ 25: argparse names the flag; SIGTERM notice
@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--ratio", "0"], "--ratio"),
        (["--ratio", "1.5"], "--ratio"),
        (["--threshold", "-1"], "--threshold"),
        (["--ratio", "0.5", "--min-keep", "0"], "--min-keep"),
        (["--ratio", "0.5", "--round-to", "0"], "--round-to"),
    ],
    ids=["ratio-0", "ratio-1.5", "threshold-negative", "min-keep", "round-to"],
)
def test_prune_numbers_are_checked_by_argparse(tmp_path, capsys, tiny, argv, flag):
    out = tmp_path / "p.pth"
    line = argparse_line(capsys, prune_main, ["--weights", str(tiny), "--out", str(out), *argv])
    assert f"argument {flag}" in line
    assert listing(tmp_path) == []


@pytest.mark.parametrize("opset", ["5", "1000"])
def test_export_opset_is_checked_by_argparse(tmp_path, capsys, tiny, opset):
    argv = ["--weights", str(tiny), "--out", str(tmp_path / "onnx"), "--opset", opset]
    assert "argument --opset: must be from" in argparse_line(capsys, export_main, argv)
    assert listing(tmp_path) == []


def test_demo_on_sigterm_does_not_talk_of_ctrl_c(tmp_path, capsys, video, tiny):
    from trt_yolact.model.checkpoint import load_model

    model = load_model(tiny)
    calls = []

    class Terminated(TorchRunner):
        def run(self, images):  # the first batch brings a SIGTERM, as `timeout` or `docker stop` send
            if not calls:
                calls.append(1)
                os.kill(os.getpid(), signal.SIGTERM)
            return super().run(images)

    predictor = Predictor(Terminated(model, "cpu"), TINY, PostprocessConfig())
    stats = run_demo(predictor, VideoSource.open(video), None, display=False, progress=True)
    err = capsys.readouterr().err
    assert stats.terminated and "notice: terminated" in err and "Ctrl-C" not in err
