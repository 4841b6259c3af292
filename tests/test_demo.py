"""The threaded video demo: every frame out in order, clean stops (Ctrl-C included), one-line errors."""

from __future__ import annotations

import dataclasses
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from trt_yolact.config import BackboneConfig, PostprocessConfig, YolactConfig
from trt_yolact.demo import main
from trt_yolact.errors import DemoError
from trt_yolact.inference.predictor import Predictor
from trt_yolact.inference.stream import PipelineError, run_demo
from trt_yolact.inference.video_io import VideoSource
from trt_yolact.model.checkpoint import save_checkpoint
from trt_yolact.model.yolact import Yolact
from trt_yolact.runtime.torch_runner import TorchRunner

REPO = Path(__file__).resolve().parents[1]
BITS = 6  # frame indices 0..63 are drawn as black/white cells along the bottom of each frame


def tiny_model() -> Yolact:
    torch.manual_seed(0)
    config = YolactConfig(
        name="tiny",
        backbone=BackboneConfig(layers=(1, 1, 1, 1), widths=(8, 16, 16, 32), stem_channels=16),
        max_size=128,
        class_names=("circle", "rectangle", "triangle", "star", "ring"),
        category_ids=(1, 2, 3, 4, 5),
        fpn_channels=32,
        proto_channels=32,
        head_channels=32,
        pred_scales=((8,), (16,), (32,), (64,), (128,)),
    )
    return Yolact(config).eval()


class CountingPredictor(Predictor):
    """A predictor that counts its calls and detections and can act on the n-th call."""

    def __init__(self, model: Yolact, on_call=None):
        # Random weights score every class near 1/6: no threshold, so masks, boxes and labels get drawn.
        # One detection per frame, so that at most one mask and label can overlap the index cells.
        super().__init__(TorchRunner(model), model.config, PostprocessConfig(score_threshold=0.0, max_detections=1))
        self.calls = 0
        self.detections = 0
        self.on_call = on_call

    def __call__(self, images):
        self.calls += 1
        if self.on_call:
            self.on_call(self.calls)
        result = super().__call__(images)
        self.detections += sum(len(d) for d in result)
        return result


def cell_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of the index cells: a tall band along the bottom, away from the FPS overlay."""
    cell_w, top = width // 8, height - (5 * height) // 12
    return [(width // 16 + i * cell_w, top, width // 16 + (i + 1) * cell_w, height) for i in range(BITS)]


def make_frame(index: int, width: int = 160, height: int = 120) -> np.ndarray:
    frame = np.full((height, width, 3), 40, np.uint8)
    band = height - (5 * height) // 12
    x = 12 + (3 * index) % (width - 24)
    cv2.circle(frame, (x, band // 2), band // 4, (0, 0, 255), -1)
    cv2.rectangle(frame, (width - 1 - x - 10, 4), (width - 1 - x + 10, 24), (0, 200, 0), -1)
    for bit, (x0, y0, x1, y1) in enumerate(cell_boxes(width, height)):
        frame[y0:y1, x0:x1] = 255 if (index >> bit) & 1 else 0
    return frame


def decode_index(frame: np.ndarray) -> int:
    """The drawn index; cell medians survive codec noise, a mask blended over a cell and a label over part of it."""
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    index = 0
    for bit, (x0, y0, x1, y1) in enumerate(cell_boxes(frame.shape[1], frame.shape[0])):
        if np.median(gray[y0 + 4 : y1 - 4, x0 + 4 : x1 - 4]) > 128:
            index |= 1 << bit
    return index


def write_video(path: Path, frames: int, width: int = 160, height: int = 120) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (width, height))
    assert writer.isOpened()
    for index in range(frames):
        writer.write(make_frame(index, width, height))
    writer.release()
    return path


def read_video(path: Path) -> tuple[int, list[np.ndarray]]:
    """(the container's frame count, every decodable frame)."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"{path} does not open"
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return count, frames


def demo_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("demo-")]


@pytest.fixture(scope="module")
def model() -> Yolact:
    return tiny_model()


@pytest.fixture(scope="module")
def video60(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "shapes.mp4", 60)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", model)


def test_index_code_round_trips():
    assert [decode_index(make_frame(i)) for i in range(64)] == list(range(64))
    assert [decode_index(make_frame(i, 320, 240)) for i in range(64)] == list(range(64))


def test_demo_writes_every_frame_in_order(tmp_path, model, video60):
    predictor = CountingPredictor(model)
    out = tmp_path / "out" / "demo.mp4"
    stats = run_demo(predictor, video60, out, batch=4, display=False)

    assert (stats.frames_read, stats.frames_written, stats.batches) == (60, 60, 15)
    assert stats.end_reason == "end of stream" and not stats.interrupted and stats.output == out
    assert predictor.detections > 0  # masks, boxes and labels were drawn
    assert stats.fps > 0 and set(stats.stage_ms()) >= {"read", "inference", "render", "write"}
    assert "60 frames read, 60 written" in stats.summary()
    count, frames = read_video(out)
    assert count == 60 and len(frames) == 60
    assert all(f.shape == (120, 160, 3) for f in frames)
    assert [decode_index(f) for f in frames] == list(range(60))
    # The FPS overlay (top left) is on every frame.
    changed = [np.abs(f[4:28, 4:60].astype(int) - make_frame(i)[4:28, 4:60]).mean() > 20 for i, f in enumerate(frames)]
    assert all(changed)
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo.mp4"]  # no temporary file left
    assert demo_threads() == []


def test_max_frames_and_stop_event_end_cleanly(tmp_path, model, video60):
    stats = run_demo(CountingPredictor(model), video60, tmp_path / "ten.mp4", batch=3, max_frames=10)
    assert (stats.frames_read, stats.frames_written, stats.end_reason) == (10, 10, "max frames")
    assert [decode_index(f) for f in read_video(tmp_path / "ten.mp4")[1]] == list(range(10))

    stop = threading.Event()
    predictor = CountingPredictor(model, on_call=lambda n: stop.set() if n == 2 else None)
    stats = run_demo(predictor, video60, tmp_path / "stopped.mp4", batch=2, stop_event=stop)
    assert stats.interrupted and stats.end_reason == "interrupted"
    assert 2 * 2 <= stats.frames_written == stats.frames_read < 60  # frames in flight were finished
    count, frames = read_video(tmp_path / "stopped.mp4")
    assert count == len(frames) == stats.frames_written
    assert [decode_index(f) for f in frames] == list(range(count))
    assert demo_threads() == []


def test_a_failing_stage_is_reported_and_leaves_nothing(tmp_path, model, video60):
    def fail(call: int) -> None:
        if call == 3:
            raise RuntimeError("boom\nsecond line")

    out = tmp_path / "failed.mp4"
    with pytest.raises(PipelineError, match=r"^inference failed: RuntimeError: boom$"):
        run_demo(CountingPredictor(model, on_call=fail), video60, out, batch=2)
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary file
    assert demo_threads() == []


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_exits_130_with_a_playable_video(tmp_path, checkpoint):
    video = write_video(tmp_path / "long.mp4", 300, 320, 240)
    out = tmp_path / "out.mp4"
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    command = [
        sys.executable,
        "-m",
        "trt_yolact.demo",
        "--source",
        str(video),
        "--weights",
        str(checkpoint),
        "--out",
        str(out),
        "--no-display",
        "--batch",
        "2",
        "--score-threshold",
        "0",
    ]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = b""
        deadline = time.monotonic() + 60
        while b"progress:" not in seen and time.monotonic() < deadline:  # the first frame is written
            if select.select([proc.stderr], [], [], 0.1)[0]:
                chunk = os.read(proc.stderr.fileno(), 4096)
                if not chunk:
                    break
                seen += chunk
        assert b"progress:" in seen, seen.decode(errors="replace")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = seen + stderr
    assert proc.returncode == 130, stderr.decode(errors="replace")
    assert b"Traceback" not in stderr
    assert b"interrupted" in stdout  # the summary
    count, frames = read_video(out)
    assert 0 < count <= 300 and len(frames) == count
    assert [decode_index(f) for f in frames] == list(range(count))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mp4", "out.mp4"]


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


@pytest.mark.parametrize("kind", ["missing", "text", "directory", "camera", "url"])
def test_an_unreadable_source_is_one_error_line(tmp_path, capsys, kind):
    (tmp_path / "notes.mp4").write_text("not a video")
    source = {
        "missing": str(tmp_path / "none.mp4"),
        "text": str(tmp_path / "notes.mp4"),
        "directory": str(tmp_path),
        "camera": "97",
        "url": "rtsp://user:secret@127.0.0.1:9/none",
    }[kind]
    # No model is loaded: the source is checked first (the default embedded weights need not exist).
    assert main(["--source", source, "--no-display", "--out", str(tmp_path / "o.mp4")]) == 2
    line = one_error_line(capsys)
    assert "secret" not in line
    assert not (tmp_path / "o.mp4").exists() and demo_threads() == []


def test_run_demo_raises_for_an_unreadable_source(tmp_path, model):
    with pytest.raises(DemoError, match="does not exist"):
        run_demo(CountingPredictor(model), tmp_path / "none.mp4")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--weights", "missing.engine"], "missing.engine does not exist"),
        (["--weights", "missing.onnx"], "missing.onnx does not exist"),
        (["--backend", "tensorrt"], "TensorRT"),
        (["--weights", "CHECKPOINT.onnx", "--backend", "tensorrt"], "runs with the onnxruntime backend, not tensorrt"),
    ],
)
def test_bad_model_arguments_are_one_error_line(tmp_path, capsys, video60, tiny_onnx, args, message):
    names = {"CHECKPOINT.onnx": str(tiny_onnx)}
    args = [names.get(a, str(tmp_path / a) if a.endswith((".engine", ".onnx")) else a) for a in args]
    assert main(["--source", str(video60), "--no-display", *args]) == 2
    assert re.search(message, one_error_line(capsys))


def test_bad_numbers_are_rejected_by_the_argument_parser(capsys, video60):
    with pytest.raises(SystemExit) as exit_info:
        main(["--source", str(video60), "--no-display", "--batch", "0"])
    assert exit_info.value.code == 2 and "argument --batch: must be at least 1, got 0" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, checkpoint) -> Path:
    from trt_yolact.export import main as export_main

    out = tmp_path_factory.mktemp("onnx")
    args = ["--weights", str(checkpoint), "--out", str(out), "--name", "tiny", "--postprocess", "graph"]
    assert export_main(args) == 0
    return out / "tiny.onnx"  # beside it, tiny.postprocess.onnx: the post-processing in the graph


@pytest.mark.parametrize("name", ["tiny.onnx", "tiny.postprocess.onnx"])
def test_an_onnx_export_runs_a_video(tmp_path, capsys, video60, tiny_onnx, name):
    """--weights X.onnx: the export runs with ONNX Runtime, its config read from the file's metadata; with the
    post-processing in the graph as well."""
    out = tmp_path / "onnx.mp4"
    code = main(
        [
            "--source",
            str(video60),
            "--weights",
            str(tiny_onnx.with_name(name)),
            "--out",
            str(out),
            "--no-display",
            "--batch",
            "4",
            "--score-threshold",
            "0",
            "--top-k",
            "1",
        ]
    )
    assert code == 0, capsys.readouterr().err
    count, frames = read_video(out)
    assert count == 60 and [decode_index(f) for f in frames] == list(range(60))
    assert "60 frames read, 60 written" in capsys.readouterr().out


@pytest.mark.parametrize("out", ["blocker/out.mp4", "out.txt"])
def test_an_unwritable_output_is_one_error_line(tmp_path, capsys, video60, checkpoint, out):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    code = main(["--source", str(video60), "--weights", str(checkpoint), "--no-display", "--out", str(tmp_path / out)])
    assert code == 2
    one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_a_live_source_skips_stale_frames_but_keeps_the_order(tmp_path, model, video60):
    # A file read as if it were a camera: capture outruns a slow inference, so the oldest waiting frames go.
    source = dataclasses.replace(VideoSource.open(video60), live=True)
    predictor = CountingPredictor(model, on_call=lambda n: time.sleep(0.05))
    stats = run_demo(predictor, source, tmp_path / "live.mp4", batch=2)
    assert stats.frames_read == 60 and stats.frames_dropped > 0
    assert stats.frames_written + stats.frames_dropped == 60
    indices = [decode_index(f) for f in read_video(tmp_path / "live.mp4")[1]]
    assert len(indices) == stats.frames_written and indices == sorted(set(indices))
    assert demo_threads() == []


def test_a_missing_onnxruntime_runner_is_one_error_line(tmp_path, capsys, video60, monkeypatch):
    monkeypatch.setitem(sys.modules, "trt_yolact.runtime.onnxruntime_runner", None)  # as if it were not installed
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    assert main(["--source", str(video60), "--weights", str(tmp_path / "model.onnx"), "--no-display"]) == 2
    assert "onnxruntime backend is not available" in one_error_line(capsys)
