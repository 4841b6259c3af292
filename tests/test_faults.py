"""Bad input and faults against every command, run as a user runs them (a subprocess, small inputs): each ends
with the exit code it should, one message line and no traceback, and leaves no half-written output."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY

from trt_yolact.data.synthetic import generate_dataset
from trt_yolact.model.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
TORCH_ADVICE = re.compile(r"weights_only`? set to `?False|weights_only=False")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def one_line(done: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single line a failed command printed on stderr, once its exit code and cleanliness are checked."""
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("\r")]
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr and "Detected pickle protocol" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith(("error:", "python -m trt_yolact")), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    return generate_dataset(tmp_path_factory.mktemp("shapes"), 2, 2, 64, seed=5)


# ------------------------------------------------------------------------------- accuracy gates
def test_eval_refuses_missing_images_and_counts_them_when_allowed(tiny, shapes, tmp_path):
    ann, images = str(shapes["val_annotations"]), shapes["val_images"]
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_line(run("trt_yolact.eval", "--weights", str(tiny), "--ann", ann, "--images", str(empty)))
    assert "2 of 2 images" in line and "--allow-missing-images" in line
    half = tmp_path / "half"
    half.mkdir()
    first = sorted(images.iterdir())[0]
    (half / first.name).write_bytes(first.read_bytes())
    out = tmp_path / "eval.json"
    allowed = run(
        "trt_yolact.eval",
        "--weights",
        str(tiny),
        "--ann",
        ann,
        "--images",
        str(half),
        "--allow-missing-images",
        "--json",
        str(out),
    )
    assert allowed.returncode == 0, allowed.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["images_evaluated"], row["images_missing"]) == (1, 1) and "left out" in allowed.stdout
    negative = run(
        "trt_yolact.eval", "--weights", str(tiny), "--ann", ann, "--images", str(images), "--max-ap-drop", "-1"
    )
    assert negative.returncode == 2 and "argument --max-ap-drop: must be 0 or more" in negative.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where TensorRT cannot run")
def test_bench_fails_when_no_configuration_can_run(tiny):
    done = run("trt_yolact.bench", "--weights", str(tiny), "--backends", "tensorrt", "--iters", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: no configuration can run here") and "tiny tensorrt fp32" in done.stderr


def test_fuse_half_reports_the_error_of_the_written_file(tiny, tmp_path):
    out = tmp_path / "fused16.pth"
    done = run("trt_yolact.fuse", "--weights", str(tiny), "--half", "--out", str(out))
    assert done.returncode == 0, done.stderr
    reported = float(re.search(r"differ by at most (\S+) at", done.stdout).group(1))
    from trt_yolact.model.checkpoint import load_model
    from trt_yolact.model.fuse import max_output_difference

    assert reported == pytest.approx(max_output_difference(load_model(tiny), load_model(out), 64), rel=0.01)


# --------------------------------------------------------------------------- misleading messages
def _not_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {folder / 'PWNED'}",))

    files = {
        "pickle": (folder / "evil.pth", "refused: it would import posix.system"),
        "text": (folder / "notes.pth", "it is a text file"),
        "zip": (folder / "archive.pth", "it is a zip archive, but holds no PyTorch checkpoint"),
        "empty": (folder / "empty.pth", "the file is empty"),
        "onnx": (folder / "model.onnx", "is an ONNX export, not a checkpoint"),
    }
    files["pickle"][0].write_bytes(pickle.dumps(Evil()))
    files["text"][0].write_text("pop\nnot a checkpoint\n")
    with zipfile.ZipFile(files["zip"][0], "w") as archive:
        archive.writestr("readme.txt", "hello")
    files["empty"][0].write_bytes(b"")
    files["onnx"][0].write_bytes(b"\x08\x08\x12\x0atrt_yolact")
    return files


@pytest.mark.parametrize("kind", ["pickle", "text", "zip", "empty", "onnx"])
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path, kind):
    path, reason = _not_checkpoints(tmp_path)[kind]
    line = one_line(run("trt_yolact.export", "--weights", str(path), "--out", str(tmp_path / "out")))
    assert reason in line and not TORCH_ADVICE.search(line)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "out").exists()


def test_a_key_listing_is_kept_and_the_advice_fits_the_file(tiny, tmp_path):
    data = torch.load(tiny, weights_only=True)
    data["model"] = {k: v for k, v in data["model"].items() if not k.startswith("proto_net.0.")}
    broken = tmp_path / "broken.pth"
    torch.save(data, broken)
    done = run(
        "trt_yolact.predict",
        "--weights",
        str(broken),
        "--out",
        str(tmp_path / "r.json"),
        str(REPO / "trt_yolact" / "samples" / "shapes.png"),
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "config stored in the file does not fit its own weights" in done.stderr and "--config" not in done.stderr
    assert "missing keys (2):" in done.stderr and "proto_net.0.weight" in done.stderr


def test_a_truncated_jpeg_is_skipped_in_one_line(tiny, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    image = cv2.imread(str(REPO / "trt_yolact" / "samples" / "shapes.png"))
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    (folder / "whole.jpg").write_bytes(jpeg)
    (folder / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    out = tmp_path / "r.json"
    done = run("trt_yolact.predict", "--weights", str(tiny), "--out", str(out), str(folder))
    assert done.returncode == 1 and "Premature end" not in done.stderr and "Traceback" not in done.stderr
    assert re.search(r"skipped: .*cut\.jpg: truncated JPEG", done.stderr)
    assert {r["file_name"] for r in json.loads(out.read_text())} <= {"whole.jpg"}


@pytest.mark.parametrize(
    "command, flag, value",
    [
        ("trt_yolact.predict", "--score-threshold", "2"),
        ("trt_yolact.predict", "--score-threshold", "nan"),
        ("trt_yolact.predict", "--score-threshold", "-0.1"),
        ("trt_yolact.eval", "--batch-size", "0"),
        ("trt_yolact.bench", "--batch", "x"),
        ("trt_yolact.bench", "--precision", "int4"),
        ("trt_yolact.build", "--batch", "0,8"),
        ("trt_yolact.build", "--repeats", "0"),
        ("trt_yolact.train", "--lr-steps", "abc"),
    ],
)
def test_bad_numbers_are_refused_by_the_argument_parser_naming_the_flag(tmp_path, command, flag, value):
    required = {
        "trt_yolact.predict": ["x.png"],
        "trt_yolact.eval": ["--ann", "a.json", "--images", "i"],
        "trt_yolact.train": ["--config", "yolact_shapes", "--data-train", "a:b"],
    }
    done = run(command, flag, value, *required.get(command, []), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"argument {flag}:" in done.stderr.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------- ordinary mistakes, no traceback
def test_predict_checks_its_inputs_and_outputs_before_any_inference(tiny, tmp_path):
    image = str(REPO / "trt_yolact" / "samples" / "shapes.png")
    weights = ["--weights", str(tiny)]
    assert "is a folder" in one_line(run("trt_yolact.predict", *weights, "--out", str(tmp_path), image))
    (tmp_path / "blocker").write_text("a file where a folder should be")
    blocked = str(tmp_path / "blocker" / "vis")
    assert one_line(
        run("trt_yolact.predict", *weights, "--out", str(tmp_path / "r.json"), "--save-vis", blocked, image)
    )
    missing_ann = run(
        "trt_yolact.predict", *weights, "--ann", str(tmp_path / "none.json"), "--out", str(tmp_path / "r.json"), image
    )
    assert "does not exist" in one_line(missing_ann)
    (tmp_path / "plain.json").write_text("[1, 2]")
    not_coco = run(
        "trt_yolact.predict", *weights, "--ann", str(tmp_path / "plain.json"), "--out", str(tmp_path / "r.json"), image
    )
    assert "not a COCO annotation file" in one_line(not_coco)
    missing = run("trt_yolact.predict", *weights, "--out", str(tmp_path / "r.json"), str(tmp_path / "none.png"))
    assert "do not exist" in one_line(missing)
    assert not (tmp_path / "r.json").exists()  # no empty results file either


def test_an_overlay_that_cannot_be_written_is_an_error(tiny, tmp_path, monkeypatch, capsys):
    from trt_yolact import predict

    monkeypatch.setattr(predict.cv2, "imencode", lambda *args: (False, None))  # overlays are encoded, then written
    code = predict.main(
        [
            "--weights",
            str(tiny),
            "--out",
            str(tmp_path / "r.json"),
            "--save-vis",
            str(tmp_path / "v"),
            str(REPO / "trt_yolact" / "samples" / "shapes.png"),
        ]
    )
    assert code == 2 and "cannot write the overlay" in capsys.readouterr().err


def test_train_resume_of_a_damaged_or_foreign_state_is_one_line(shapes, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(TINY.to_dict()))
    other = tmp_path / "other.yaml"
    other.write_text(json.dumps(TINY.replace(name="other", fpn_channels=16).to_dict()))
    data = f"{shapes['train_annotations']}:{shapes['train_images']}"
    common = ["--data-train", data, "--iters", "2", "--batch-size", "1", "--workers", "0", "--val-every", "0"]
    out = tmp_path / "run"
    first = run(
        "trt_yolact.train",
        "--config",
        str(config),
        *common,
        "--stop-at",
        "1",
        "--checkpoint-every",
        "1",
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert first.returncode == 0, first.stderr
    foreign = run("trt_yolact.train", "--config", str(other), *common, "--out", str(out), "--resume")
    assert "was trained with config 'tiny'" in one_line(foreign)
    (out / "last.pth").write_bytes(b"\x80\x02 damaged")
    assert "not a usable PyTorch checkpoint" in one_line(
        run("trt_yolact.train", "--config", str(config), *common, "--out", str(out), "--resume")
    )


def test_prune_writes_both_outputs_or_neither(tmp_path):
    from trt_yolact.model.checkpoint import load_model

    checkpoint = save_checkpoint(tmp_path / "dense.pth", load_model("yolact_shapes"))
    (tmp_path / "report.json").mkdir()  # a folder where the report should go
    out = tmp_path / "pruned.pth"
    line = one_line(
        run(
            "trt_yolact.prune",
            "--weights",
            str(checkpoint),
            "--ratio",
            "0.5",
            "--out",
            str(out),
            "--report",
            str(tmp_path / "report.json"),
        )
    )
    assert "is a folder" in line and not out.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="watches the process's memory maps (Linux)")
def test_ctrl_c_while_build_loads_its_libraries_is_not_a_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "trt_yolact.build", "--out", str(tmp_path / "x")]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline and "libtorch" not in maps.read_text():
        time.sleep(0.005)  # until `import torch` has begun loading its libraries
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, -signal.SIGINT) and "Traceback" not in err and "interrupted" in err
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- silent success and half-written output
def test_export_moves_nothing_when_one_target_is_blocked(tiny, tmp_path):
    out = tmp_path / "export"
    (out / "model.fp16.onnx").mkdir(parents=True)  # a folder where the FP16 file should go
    line = one_line(run("trt_yolact.export", "--weights", str(tiny), "--out", str(out), "--fp16"))
    assert "model.fp16.onnx" in line and sorted(p.name for p in out.iterdir()) == ["model.fp16.onnx"]


def test_export_refuses_topk_sizes_tensorrt_rejects(tiny, tmp_path):
    line = one_line(
        run(
            "trt_yolact.export",
            "--weights",
            str(tiny),
            "--out",
            str(tmp_path / "x"),
            "--postprocess",
            "graph",
            "--max-detections",
            "3841",
        )
    )
    assert "3840" in line and not (tmp_path / "x").exists()


def test_sigterm_ends_the_demo_as_cleanly_as_ctrl_c(tiny, tmp_path):
    video = tmp_path / "long.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25, (96, 64))
    for index in range(400):
        writer.write(np.full((64, 96, 3), index % 256, np.uint8))
    writer.release()
    out = tmp_path / "out.mp4"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "trt_yolact.demo",
        "--source",
        str(video),
        "--weights",
        str(tiny),
        "--out",
        str(out),
        "--no-display",
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while b"progress" not in _peek(proc) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "terminated" in stdout
    capture = cv2.VideoCapture(str(out))
    assert capture.isOpened() and 0 < capture.get(cv2.CAP_PROP_FRAME_COUNT) <= 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mp4", "out.mp4"]  # no hidden partial file


_PEEKED: dict[int, bytes] = {}


def _peek(proc: subprocess.Popen) -> bytes:
    """What the process has written to stderr so far (read without blocking)."""
    import select

    if select.select([proc.stderr], [], [], 0)[0]:
        _PEEKED[proc.pid] = _PEEKED.get(proc.pid, b"") + os.read(proc.stderr.fileno(), 4096)
    return _PEEKED.get(proc.pid, b"")
