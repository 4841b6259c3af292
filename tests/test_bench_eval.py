"""The comparison (eval) against pycocotools run directly on predict's JSON, and bench's report."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import replace

import pytest
import torch
from conftest import FIXTURE_CONFIG
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from trt_yolact.bench import main as bench_main
from trt_yolact.eval import main as eval_main
from trt_yolact.predict import main as predict_main


@pytest.fixture(scope="module")
def fixture_dataset(reference_dir, tmp_path_factory):
    """The reference images with 'ground truth' made from a subset of the fixture model's own
    detections, so that AP is neither 0 nor 1 and depends on every detail of the evaluation."""
    root = tmp_path_factory.mktemp("fixture_data")
    images = root / "images"
    images.mkdir()
    for name in ("chelsea.png", "shapes.png"):
        shutil.copy(reference_dir / name, images / name)
    predictions = root / "pred.json"
    assert (
        predict_main(
            [
                "--weights",
                str(reference_dir / "yolact_fixture.pth"),
                "--config",
                str(FIXTURE_CONFIG),
                "--out",
                str(predictions),
                str(images),
            ]
        )
        == 0
    )
    detections = json.loads(predictions.read_text())
    annotations = []
    for det in detections[::3]:  # every third detection becomes an object
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": det["image_id"],
                "category_id": det["category_id"],
                "segmentation": det["segmentation"],
                "bbox": det["bbox"],
                "iscrowd": 0,
                "area": det["bbox"][2] * det["bbox"][3],
            }
        )
    from trt_yolact.config import COCO_CATEGORY_IDS, COCO_CLASSES

    sizes = {"chelsea.png": (300, 451), "shapes.png": (240, 360)}
    ids = {d["file_name"]: d["image_id"] for d in detections}
    ann = root / "ann.json"
    ann.write_text(
        json.dumps(
            {
                "images": [{"id": ids[n], "file_name": n, "height": h, "width": w} for n, (h, w) in sizes.items()],
                "annotations": annotations,
                "categories": [{"id": i, "name": n} for i, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)],
            }
        )
    )
    return ann, images


def pycocotools_ap(ann, results_file, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        evaluator = COCOeval(gt, gt.loadRes(str(results_file)), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def test_eval_aps_equal_pycocotools_on_predict_json(reference_dir, fixture_dataset, tmp_path):
    ann, images = fixture_dataset
    weights = ["--weights", str(reference_dir / "yolact_fixture.pth"), "--config", str(FIXTURE_CONFIG)]
    predictions = tmp_path / "pred.json"
    assert predict_main([*weights, "--ann", str(ann), "--out", str(predictions), str(images)]) == 0
    out = tmp_path / "eval.json"
    assert (
        eval_main(
            [
                *weights,
                "--ann",
                str(ann),
                "--images",
                str(images),
                "--json",
                str(out),
                "--backends",
                "torch,onnxruntime",
                "--plot",
                str(tmp_path / "ap.png"),
                "--cache",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    torch_row = next(r for r in rows if r["backend"] == "torch")
    box_ap, mask_ap = pycocotools_ap(ann, predictions, "bbox"), pycocotools_ap(ann, predictions, "segm")
    assert 0.05 < box_ap < 0.99 and 0.05 < mask_ap < 0.99  # a real, non-trivial score
    assert torch_row["bbox_ap"] == pytest.approx(box_ap, abs=1e-9)
    assert torch_row["mask_ap"] == pytest.approx(mask_ap, abs=1e-9)
    ort_row = next(r for r in rows if r["backend"] == "onnxruntime")
    assert abs(ort_row["mask_ap_change"]) < 1.0 and ort_row["fps"] > 0
    assert set(torch_row) >= {"model", "backend", "precision", "bbox_ap", "mask_ap", "fps"}
    assert (tmp_path / "ap.png").stat().st_size > 1000


def test_max_ap_drop_fails_a_regression(reference_dir, fixture_dataset, tmp_path, monkeypatch):
    """A backend that loses mask AP beyond --max-ap-drop makes eval exit non-zero."""
    from trt_yolact.metrics import coco_eval

    real = coco_eval.runner_for

    def degraded(source, options):
        runner = real(source, replace(options, backend="torch", precision="fp32"))
        if options.backend == "onnxruntime":
            original = runner._infer

            def noisy(images):  # shift every box: a broken deployment
                out = original(images)
                return {**out, "loc": out["loc"] + 0.8}

            runner._infer = noisy
        return runner

    monkeypatch.setattr(coco_eval, "runner_for", degraded)
    ann, images = fixture_dataset
    code = eval_main(
        [
            "--weights",
            str(reference_dir / "yolact_fixture.pth"),
            "--config",
            str(FIXTURE_CONFIG),
            "--ann",
            str(ann),
            "--images",
            str(images),
            "--backends",
            "torch,onnxruntime",
            "--max-ap-drop",
            "1.0",
        ]
    )
    assert code == 1


def test_bench_json_has_the_fields(reference_dir, tmp_path):
    out = tmp_path / "bench.json"
    code = bench_main(
        [
            "--weights",
            f"{reference_dir / 'yolact_fixture.pth'},{reference_dir / 'yolact_fixture.pth'}",
            "--config",
            str(FIXTURE_CONFIG),
            "--backends",
            "torch,onnxruntime,tensorrt",
            "--batch",
            "1,2",
            "--iters",
            "2",
            "--warmup",
            "1",
            "--json",
            str(out),
            "--md",
            str(tmp_path / "b.md"),
            "--plot",
            str(tmp_path / "b.png"),
            "--cache",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert len(rows) == 2 * 2 * 2  # models x (torch, onnxruntime) x batches; TensorRT skipped here
    required = {
        "model",
        "backend",
        "precision",
        "batch",
        "fps",
        "forward_fps",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "preprocess_ms",
        "inference_ms",
        "postprocess_ms",
        "file_bytes",
        "params",
        "macs",
        "peak_memory_bytes",
        "size_change_pct",
        "speed_change_pct",
        "memory_change_pct",
    }
    for row in rows:
        assert required <= set(row)
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["fps"] > 0 and row["peak_memory_bytes"] > 0
    if not torch.cuda.is_available():
        assert any("tensorrt" in line for line in report["skipped"])
    assert (tmp_path / "b.md").read_text().startswith("| model")


def test_bench_settles_each_configuration_before_measuring_it(reference_dir, tmp_path, monkeypatch):
    """Each round runs every configuration ``settle`` times unmeasured, then once measured, in turn."""
    from trt_yolact.config import RuntimeOptions
    from trt_yolact.metrics import speed
    from trt_yolact.model.checkpoint import ModelSource

    calls = []
    original = speed.Measurement.once

    def once(self, record=True):
        calls.append((self.runner.backend, len(self.images), record))
        original(self, record)

    monkeypatch.setattr(speed.Measurement, "once", once)
    source = ModelSource.load(str(reference_dir / "yolact_fixture.pth"), str(FIXTURE_CONFIG))
    runtime = RuntimeOptions(cache_dir=str(tmp_path))
    options = speed.BenchOptions(("torch",), ("fp32",), (1, 2), iters=3, warmup=1, settle=2, runtime=runtime)
    rows, _ = speed.run_benchmark([source], options)
    assert [len(r.samples) for r in rows] == [3, 3]
    timed = calls[2:]  # after one warm-up per configuration
    one_round = [("torch", 1, False)] * 2 + [("torch", 1, True)] + [("torch", 2, False)] * 2 + [("torch", 2, True)]
    assert timed == one_round * 3
    with pytest.raises(SystemExit) as exit_info:  # rejected by the argument parser
        main_exit_code(["--settle", "-1"], reference_dir)
    assert exit_info.value.code == 2


def main_exit_code(extra: list[str], reference_dir) -> int:
    return bench_main(
        [
            "--weights",
            str(reference_dir / "yolact_fixture.pth"),
            "--config",
            str(FIXTURE_CONFIG),
            "--backends",
            "torch",
            *extra,
        ]
    )


def test_block_profile_splits_time_and_macs_by_block(tmp_path):
    """benchmarks/block_profile.py: every block of both models, MACs adding up to the model's total."""
    import subprocess
    import sys
    from pathlib import Path

    from trt_yolact.model.checkpoint import ModelSource
    from trt_yolact.model.stats import count_conv_macs

    out = tmp_path / "blocks.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "block_profile.py"
    outputs = ["--json", str(out), "--md", str(tmp_path / "b.md")]
    models = ["--models", "yolact_shapes,yolact_shapes_pruned", "--batch", "1", "--iters", "1"]
    run = [sys.executable, str(script), *outputs]
    subprocess.run([*run, *models, "--plot", str(tmp_path / "b.png")], check=True, capture_output=True)
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["yolact_shapes", "yolact_shapes_pruned"]
    blocks = {"stem", "stage 1", "stage 2", "stage 3", "stage 4", "fpn", "protonet", "head", "other", "total"}
    for row in rows:
        assert set(row["ms_per_image"]) == blocks
        assert sum(row["conv_macs"].values()) == count_conv_macs(ModelSource.load(row["model"]).model())
    dense, pruned = (r["conv_macs"] for r in rows)
    # Pruning shrinks the backbone stages only.
    assert all(pruned[b] == dense[b] for b in ("stem", "fpn", "protonet", "head"))
    assert all(pruned[f"stage {i}"] < dense[f"stage {i}"] for i in range(1, 5))
    assert (tmp_path / "b.png").stat().st_size > 0
    # --config: an untrained architecture against itself pruned, at a chosen input size.
    config = ["--config", "yolact_shapes", "--ratio", "0.5", "--size", "128", "--batch", "1", "--iters", "1"]
    subprocess.run([*run, *config, "--plot", ""], check=True, capture_output=True)
    dense, pruned = json.loads(out.read_text())["rows"]
    assert (dense["model"], pruned["model"]) == ("yolact_shapes", "yolact_shapes pruned 0.5")
    assert dense["input_size"] == pruned["input_size"] == 128
    assert sum(pruned["conv_macs"].values()) < sum(dense["conv_macs"].values())


def test_cuda_memory_counts_this_configuration_alone(monkeypatch):
    """Found on a GPU: every model of a run stays loaded on the device, so the allocator's peak grew with
    each model measured and smaller models read as using more memory. A row counts its own weights plus the
    rise above the level just before its warm-up; a TensorRT engine brings its own weights."""
    from types import SimpleNamespace

    from trt_yolact.metrics import speed

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 5_000)
    runner = SimpleNamespace(device=torch.device("cuda", 0))
    measurement = speed.Measurement(SimpleNamespace(runner=runner), [])
    assert measurement.memory(before=4_200, weight_bytes=300) == (1_100, "cuda weights + peak allocated rise")
    runner.device_memory_bytes = 2_000
    assert measurement.memory(before=4_200, weight_bytes=300)[0] == 2_800
    assert measurement.memory(before=6_000, weight_bytes=300)[0] == 2_000  # a peak below the level: no rise


@pytest.fixture(scope="module")
def fixture_onnx(reference_dir, tmp_path_factory):
    from trt_yolact.export import main as export_main

    out = tmp_path_factory.mktemp("fixture_onnx")
    weights = ["--weights", str(reference_dir / "yolact_fixture.pth"), "--config", str(FIXTURE_CONFIG)]
    assert export_main([*weights, "--out", str(out), "--name", "fixture"]) == 0
    return out / "fixture.onnx"


def test_a_deployed_file_is_compared_with_the_checkpoint_before_it(
    reference_dir, fixture_dataset, fixture_onnx, tmp_path, capsys
):
    ann, images = fixture_dataset
    data = ["--config", str(FIXTURE_CONFIG), "--ann", str(ann), "--images", str(images)]
    out = tmp_path / "eval.json"
    weights = f"{reference_dir / 'yolact_fixture.pth'},{fixture_onnx}"
    assert eval_main(["--weights", weights, *data, "--json", str(out), "--max-ap-drop", "0.5"]) == 0
    torch_row, onnx_row = json.loads(out.read_text())["rows"]
    assert (torch_row["backend"], onnx_row["backend"], onnx_row["model"]) == ("torch", "onnxruntime", "fixture")
    assert onnx_row["mask_ap_change"] is not None and abs(onnx_row["mask_ap_change"]) < 0.5
    capsys.readouterr()
    # Listed first, a deployed file has no torch FP32 row to be compared with: the gate refuses to pass blindly.
    assert eval_main(["--weights", str(fixture_onnx), *data, "--max-ap-drop", "0.5"]) == 2
    assert "list the checkpoint it was made from first" in capsys.readouterr().err


def test_missing_images_are_an_error_unless_allowed(reference_dir, fixture_dataset, tmp_path, capsys):
    """Found in a trial: with the listed images missing, AP was computed on what was left (or 0.00 on nothing)
    and --max-ap-drop passed; now missing images stop eval before any inference, or are counted."""
    ann, images = fixture_dataset
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(images / "chelsea.png", partial / "chelsea.png")
    base = ["--weights", str(reference_dir / "yolact_fixture.pth"), "--config", str(FIXTURE_CONFIG), "--ann", str(ann)]
    assert eval_main([*base, "--images", str(partial)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 of 2 images" in err[0] and "--allow-missing-images" in err[0]
    out = tmp_path / "eval.json"
    assert eval_main([*base, "--images", str(partial), "--allow-missing-images", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["images_evaluated"], row["images_missing"]) == (1, 1)
    assert "left out with their annotations" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "chelsea.png").write_bytes(b"not an image")
    assert eval_main([*base, "--images", str(empty), "--allow-missing-images"]) == 2
    assert "none of the 2 images" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a negative drop allowance is refused by the argument parser
        eval_main([*base, "--images", str(images), "--max-ap-drop", "-1"])


def test_bench_runs_a_deployed_file_and_fails_when_nothing_can(reference_dir, fixture_onnx, tmp_path, capsys):
    out = tmp_path / "bench.json"
    quick = ["--batch", "1", "--iters", "1", "--warmup", "0", "--settle", "0"]
    assert bench_main(["--weights", str(fixture_onnx), *quick, "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["model"], row["backend"], row["precision"]) == ("fixture", "onnxruntime", "fp32")
    assert row["params"] > 0 and row["macs"] == 0  # weights counted from the file; MACs unknown
    if torch.cuda.is_available():
        return
    capsys.readouterr()
    checkpoint = ["--weights", str(reference_dir / "yolact_fixture.pth"), "--config", str(FIXTURE_CONFIG)]
    assert bench_main([*checkpoint, "--backends", "tensorrt", *quick]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no configuration can run here") and "yolact_fixture tensorrt fp32" in err
