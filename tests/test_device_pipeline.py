"""The device pipeline through the predictor and the demo, on the CPU: the static and graph pipelines'
refusals, the static pipeline's detections equal the dynamic one's, and the demo's overlapped uploads keep
the batches in order (batch N+1's upload is queued before batch N is finished)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from test_demo import decode_index, read_video, tiny_model, write_video
from test_static_pipeline import assert_same_detections

from trt_yolact.config import PostprocessConfig
from trt_yolact.demo import main
from trt_yolact.errors import BackendUnavailable, UsageError
from trt_yolact.inference.device_pipeline import FrameUploads, capture_whole
from trt_yolact.inference.predictor import Predictor
from trt_yolact.inference.stream import run_demo
from trt_yolact.model.checkpoint import load_model, save_checkpoint
from trt_yolact.runtime.cuda_graph import CudaGraphCall
from trt_yolact.runtime.torch_runner import TorchRunner

POST = PostprocessConfig(score_threshold=0.0, max_detections=3)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", 22)


def test_graphs_need_the_torch_runner_on_a_gpu(model):
    runner = TorchRunner(model)
    with pytest.raises(BackendUnavailable, match="CUDA GPU"):
        Predictor(runner, model.config, pipeline="graph")
    with pytest.raises(BackendUnavailable, match="CUDA graphs need a CUDA GPU"):
        runner.capture(lambda x: x + 1, (torch.zeros(2),))
    with pytest.raises(BackendUnavailable, match="inputs on a CUDA GPU"):
        CudaGraphCall(lambda x: x + 1, (torch.zeros(2),))
    with pytest.raises(BackendUnavailable, match="CUDA graphs need a CUDA GPU"):
        capture_whole(runner, model.config, POST, (1, 8, 8, 3))
    with pytest.raises(UsageError, match="pipeline must be one of dynamic, static, graph"):
        Predictor(runner, model.config, pipeline="fast")


def test_cpu_uploads_are_the_stacked_frames():
    frames = [np.full((5, 7, 3), i, np.uint8) for i in range(3)]
    upload = FrameUploads("cpu").start(frames)
    assert upload.ready is None and upload.sizes == [(5, 7)] * 3
    assert torch.equal(upload.wait(), torch.from_numpy(np.stack(frames)))


def test_static_pipeline_predicts_what_the_dynamic_one_does(tmp_path):
    from trt_yolact.data.synthetic import generate_dataset

    paths = generate_dataset(tmp_path, 0, 6, 256, seed=12345)
    images = [cv2.imread(str(p)) for p in sorted(paths["val_images"].glob("*.png"))]
    shipped = load_model("yolact_shapes")
    runner = TorchRunner(shipped)
    dynamic = Predictor(runner, shipped.config)
    static = Predictor(runner, shipped.config, pipeline="static")
    with torch.inference_mode():
        assert_same_detections(dynamic(images), static(images))
        mixed = [images[0], cv2.resize(images[1], (200, 150)), images[2]]  # mixed sizes: the dynamic path
        assert_same_detections(dynamic(mixed), static(mixed))
    assert static.times.images == 9 and min(static.times.preprocess, static.times.inference) > 0
    assert sum(len(d) for d in static(images)) > 10


class RecordingPredictor(Predictor):
    """The static pipeline, logging each upload, launch and finish with its batch number."""

    def __init__(self, model):
        super().__init__(TorchRunner(model), model.config, POST, pipeline="static")
        self.log: list[tuple[str, int]] = []
        self.results: list[list] = []
        self._numbers: dict[int, int] = {}

    def upload(self, images):
        upload = super().upload(images)
        self._numbers[id(upload)] = number = sum(1 for step, _ in self.log if step == "upload")
        self.log.append(("upload", number))
        return upload

    def launch(self, upload, synchronize=True, started=None):
        in_flight = super().launch(upload, synchronize, started)
        self._numbers[id(in_flight)] = number = self._numbers[id(upload)]
        self.log.append(("launch", number))
        return in_flight

    def finish(self, batch):
        self.log.append(("finish", self._numbers[id(batch)]))
        prediction = super().finish(batch)
        self.results.append(prediction.detections)
        return prediction


def test_the_demo_uploads_the_next_batch_before_finishing_this_one(tmp_path, model, video):
    predictor = RecordingPredictor(model)
    stats = run_demo(predictor, video, tmp_path / "out.mp4", batch=4)
    assert (stats.frames_written, stats.batches) == (22, 6)
    assert [decode_index(f) for f in read_video(tmp_path / "out.mp4")[1]] == list(range(22))
    log = predictor.log
    assert [step for step, _ in log].count("finish") == 6 and log[-1] == ("finish", 5)
    for n in range(6):
        assert log.index(("upload", n)) < log.index(("launch", n)) < log.index(("finish", n))
        if n > 0:  # batch n's copy is queued while batch n - 1 is still in flight
            assert log.index(("launch", n - 1)) < log.index(("upload", n)) < log.index(("finish", n - 1))
    # The same detections as the dynamic pipeline on the same decoded frames.
    frames = read_video(video)[1]
    reference = Predictor(TorchRunner(model), model.config, POST)
    with torch.inference_mode():
        for n, got in enumerate(predictor.results):
            assert_same_detections(reference(frames[4 * n : 4 * n + 4]), got)


def test_the_demo_command_takes_a_pipeline(tmp_path, capsys, model, video):
    checkpoint = save_checkpoint(tmp_path / "tiny.pth", model)
    args = ["--source", str(video), "--weights", str(checkpoint), "--no-display", "--device", "cpu"]
    assert main([*args, "--pipeline", "graph"]) == 2
    assert "needs the torch runner on a CUDA GPU" in capsys.readouterr().err
    for pipeline in ("dynamic", "static"):
        assert main([*args, "--pipeline", pipeline, "--out", str(tmp_path / f"{pipeline}.mp4"), "--batch", "3"]) == 0
    assert len(read_video(tmp_path / "static.mp4")[1]) == 22


def test_bench_reports_each_pipeline_in_one_table(tmp_path, capsys):
    """On the CPU: the dynamic and static rows with their stage split; the graph rows are listed as skipped."""
    import json

    from trt_yolact.bench import default_pipelines
    from trt_yolact.bench import main as bench_main

    out = tmp_path / "bench.json"
    args = ["--weights", "yolact_shapes", "--backends", "torch", "--batch", "1,2", "--iters", "2", "--warmup", "1"]
    assert (
        bench_main([*args, "--pipelines", "dynamic,static,graph", "--json", str(out), "--md", str(tmp_path / "b.md")])
        == 0
    )
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [(r["batch"], r["pipeline"]) for r in rows] == [(1, "dynamic"), (1, "static"), (2, "dynamic"), (2, "static")]
    for row in rows:
        assert min(row["preprocess_ms"], row["inference_ms"], row["postprocess_ms"]) > 0
        assert row["fps"] > 0 and row["forward_fps"] >= row["fps"]
    static = [r for r in rows if r["pipeline"] == "static"]
    assert all(r["speed_change_pct"] == 0 for r in static)  # compared with the same pipeline of the first model
    graph_skips = [line for line in report["skipped"] if " graph: " in line]
    assert len(graph_skips) == 2 and "CUDA GPU only" in graph_skips[0]
    header = (tmp_path / "b.md").read_text().splitlines()[0]
    assert "| pipeline |" in header and "| pre/inf/post ms |" in header
    printed = capsys.readouterr().out
    assert "static" in printed and "skipped: yolact_shapes torch fp32 b1 graph" in printed
    assert default_pipelines("cuda:1") == ("dynamic", "static", "graph") and default_pipelines("cpu") == ("dynamic",)
    assert default_pipelines(None) == ("dynamic",)
    with pytest.raises(SystemExit):
        bench_main([*args, "--pipelines", "fast"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graph_pipeline_on_cuda(model):
    """On a GPU: the stage graphs and the overlapped upload give the dynamic pipeline's detections (masks up
    to CUDA's rounding near 0.5), replay after replay."""
    runner = TorchRunner(model, "cuda")
    post = PostprocessConfig(max_detections=20)
    frames = [cv2.resize(np.full((8, 8, 3), i * 20, np.uint8), (64, 48)) for i in range(4)]
    frames = [cv2.circle(f, (20 + 5 * i, 24), 10, (0, 0, 255), -1) for i, f in enumerate(frames)]
    reference = Predictor(runner, model.config, post)(frames)
    for pipeline in ("static", "graph", "graph"):
        predictor = Predictor(runner, model.config, post, pipeline=pipeline)
        first = predictor.finish(predictor.launch(predictor.upload(frames), synchronize=False)).detections
        other = predictor([f[::-1].copy() for f in frames])  # a replay on other frames must not change `first`
        assert len(other) == len(frames)
        for got in (first, predictor(frames)):
            for a, b in zip(reference, got):
                assert a.classes.tolist() == b.classes.tolist() and torch.equal(a.boxes, b.boxes)
                torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0)
                assert a.masks.shape == b.masks.shape and (a.masks != b.masks).float().mean() <= 1e-3
