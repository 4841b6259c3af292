"""The predict command end to end on the reference fixture model."""

from __future__ import annotations

import json
import shutil

from conftest import FIXTURE_CONFIG

from trt_yolact.cli import main as cli_main
from trt_yolact.predict import main as predict_main


def test_predict_writes_coco_results_and_overlays(reference_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(reference_dir / "chelsea.png", images / "000000000042.png")
    shutil.copy(reference_dir / "shapes.png", images / "shapes.png")
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "results.json"
    code = predict_main(
        [
            "--weights",
            str(reference_dir / "yolact_fixture.pth"),
            "--config",
            str(FIXTURE_CONFIG),
            "--batch-size",
            "2",
            "--score-threshold",
            "0.3",
            "--out",
            str(out),
            "--save-vis",
            str(tmp_path / "vis"),
            str(images),
        ]
    )
    assert code == 1  # one unreadable image: reported, others still predicted
    assert "broken.png" in capsys.readouterr().err
    results = json.loads(out.read_text())
    assert {r["file_name"] for r in results} == {"000000000042.png", "shapes.png"}
    first = results[0]
    assert set(first) == {"file_name", "image_id", "category_id", "class_index", "score", "bbox", "segmentation"}
    assert {r["image_id"] for r in results} == {42, 3}  # numeric stems are COCO ids, else the 1-based position
    assert all(r["score"] > 0.3 for r in results)
    assert all(r["category_id"] >= r["class_index"] + 1 for r in results)  # COCO ids
    assert isinstance(first["segmentation"]["counts"], str)
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["000000000042.png", "shapes.png"]


def test_predict_reports_a_missing_checkpoint(reference_dir, tmp_path, capsys):
    image = str(reference_dir / "shapes.png")
    code = predict_main(["--weights", str(tmp_path / "none.pth"), "--out", str(tmp_path / "r.json"), image])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_console_entry_lists_commands(capsys):
    assert cli_main(["--help"]) == 0
    assert "predict" in capsys.readouterr().out


def test_predict_with_onnxruntime_matches_torch(reference_dir, tmp_path):
    """--backend onnxruntime on a checkpoint, and an .onnx file given directly, find what torch finds."""
    weights = ["--weights", str(reference_dir / "yolact_fixture.pth"), "--config", str(FIXTURE_CONFIG)]
    image = str(reference_dir / "shapes.png")
    runs = {}
    for name, extra in {"torch": [], "ort": ["--backend", "onnxruntime", "--cache", str(tmp_path / "cache")]}.items():
        out = tmp_path / f"{name}.json"
        assert predict_main([*weights, *extra, "--score-threshold", "0.3", "--out", str(out), image]) == 0
        runs[name] = json.loads(out.read_text())
    onnx_file = next((tmp_path / "cache").glob("*.onnx"))
    # A deployed file's precision is fixed: asking for another is an error, not silently ignored.
    args = ["--weights", str(onnx_file), "--precision", "fp16", "--out", str(tmp_path / "no.json"), image]
    assert predict_main(args) == 2 and not (tmp_path / "no.json").exists()
    out = tmp_path / "file.json"
    assert predict_main(["--weights", str(onnx_file), "--score-threshold", "0.3", "--out", str(out), image]) == 0
    runs["file"] = json.loads(out.read_text())
    classes = [r["class_index"] for r in runs["torch"]]
    assert classes and classes == [r["class_index"] for r in runs["ort"]] == [r["class_index"] for r in runs["file"]]
