"""The runner base class: input validation, moving and casting, chunking to the batch profile and padding,
unbatched outputs, and the activate/deactivate lifecycle; the ONNX Runtime runner releases its session."""

from __future__ import annotations

import pytest
import torch

from trt_yolact.errors import RunnerError
from trt_yolact.runtime.base import Runner
from trt_yolact.structures import RawOutputs


class RecordingRunner(Runner):
    """Returns outputs that encode each image's first pixel, and records every chunk it is given."""

    backend = "recording"

    def __init__(self, min_batch: int = 1, max_batch: int | None = None, input_dtype=torch.float32):
        super().__init__()
        self.min_batch, self.max_batch, self.input_dtype = min_batch, max_batch, input_dtype
        self.chunks: list[torch.Tensor] = []
        self.activations = 0
        self._input_size = 8
        self.activate()

    def _activate(self) -> None:
        self.activations += 1

    def _infer(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.chunks.append(images)
        batch = images.shape[0]
        first = images[:, 0, 0, 0].to(torch.float16)  # a half-precision output: returned as float32
        return {
            "loc": first.view(batch, 1, 1).expand(batch, 3, 4),
            "conf": torch.zeros(batch, 3, 2),
            "coeffs": torch.zeros(batch, 3, 2),
            "proto": torch.zeros(batch, 2, 2, 2),
            "priors": torch.arange(12.0).view(3, 4),
        }


def images(batch: int) -> torch.Tensor:
    return torch.arange(batch, dtype=torch.float64).view(batch, 1, 1, 1).expand(batch, 3, 8, 8).clone()


def test_a_batch_is_split_to_the_profile_and_padded_to_its_minimum():
    runner = RecordingRunner(min_batch=2, max_batch=3)
    out = runner(images(7))
    assert [c.shape[0] for c in runner.chunks] == [3, 3, 2]  # the last chunk, 1 image, padded to 2
    assert runner.chunks[-1][1].abs().sum() == 0  # with zeros
    assert isinstance(out, RawOutputs) and out.loc.shape == (7, 3, 4) and out.loc.dtype == torch.float32
    assert out.loc[:, 0, 0].tolist() == list(range(7))  # every image's own result, in order, padding cut
    assert out.priors.shape == (3, 4)  # not concatenated: it has no batch axis
    assert all(c.dtype == torch.float32 and c.is_contiguous() for c in runner.chunks)  # cast from float64


def test_the_input_dtype_of_the_artifact_is_used():
    runner = RecordingRunner(input_dtype=torch.float16)
    runner(images(2))
    assert runner.chunks[0].dtype == torch.float16


@pytest.mark.parametrize(
    "bad, message",
    [
        ("not a tensor", "must be a torch.Tensor"),
        (torch.zeros(2, 3, 8, 9), r"must be \[B,3,8,8\]"),
        (torch.zeros(0, 3, 8, 8), "B >= 1"),
        (torch.zeros(3, 8, 8), r"must be \[B,3,8,8\]"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "floating-point"),
    ],
)
def test_bad_input_is_one_clear_error(bad, message):
    runner = RecordingRunner()
    with pytest.raises(RunnerError, match=message):
        runner(bad)
    assert runner.chunks == []


def test_a_deactivated_runner_refuses_to_run_until_activated_again():
    runner = RecordingRunner()
    with runner:
        runner(images(1))
    assert not runner.is_active
    with pytest.raises(RunnerError, match="not active"):
        runner(images(1))
    runner.activate()
    runner.activate()  # a no-op when active
    assert runner.activations == 2 and runner(images(1)).loc.shape[0] == 1


def test_graph_outputs_are_not_raw_outputs():
    runner = RecordingRunner()
    runner.output_names = ("num_dets", "boxes")
    with pytest.raises(RunnerError, match="not the raw outputs"):
        runner(images(1))


def test_onnxruntime_runner_releases_its_session(tmp_path):
    from test_artifacts import TINY

    from trt_yolact.export import main as export_main
    from trt_yolact.model.checkpoint import save_checkpoint
    from trt_yolact.model.yolact import Yolact
    from trt_yolact.runtime.onnxruntime_runner import OnnxRuntimeRunner

    checkpoint = save_checkpoint(tmp_path / "tiny.pth", Yolact(TINY).eval())
    assert export_main(["--weights", str(checkpoint), "--out", str(tmp_path), "--batch", "2"]) == 0
    with OnnxRuntimeRunner(tmp_path / "model.onnx", threads=1) as runner:
        assert (runner.min_batch, runner.max_batch) == (2, 2)  # a fixed-batch export is its own profile
        assert runner(torch.randn(3, 3, 64, 64)).loc.shape[0] == 3
    assert not hasattr(runner, "session")
    assert runner.activate()(torch.randn(1, 3, 64, 64)).conf.shape[0] == 1
