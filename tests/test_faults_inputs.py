"""Hostile inputs to predict, eval, bench, build and the training data loader (probe 15), run as a user runs
them: each ends with the exit code it should, one message line and no traceback, overwrites no input, and
leaves no half-written output."""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trt_yolact.data.synthetic import generate_dataset
from trt_yolact.errors import DatasetError

REPO = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(r"[\w ]+: +\d+%\|")  # a tqdm bar (text mode reads its carriage returns as newlines)
NOT_UTF8 = os.fsdecode(b"\xff")  # a byte no UTF-8 text has, as Python keeps it in a str path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` as the module's main() in this process (no interpreter start per run): its
    exit code, stdout and stderr. A bug raises here, so that the test shows its traceback."""
    module = importlib.import_module(args[0])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd or Path.cwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main(list(args[1:]))
        except SystemExit as exc:  # argparse's errors
            code = exc.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def run_process(*args: str) -> subprocess.CompletedProcess:
    """As :func:`run`, in a child interpreter: for crashes (a segmentation fault) that would end the tests."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True, timeout=120)


def one_line(done: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single line a failed command printed on stderr, once its exit code and cleanliness are checked."""
    lines = [line for line in done.stderr.splitlines() if line.strip() and not PROGRESS.match(line)]
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    return lines[0]


def parser_error(done: subprocess.CompletedProcess, flag: str) -> str:
    """The argparse error that names ``flag``."""
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.splitlines()[-1]
    assert f"argument {flag}:" in last, done.stderr
    return last


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    return generate_dataset(tmp_path_factory.mktemp("shapes"), 2, 3, 64, seed=1)


def _edited(shapes: dict[str, Path], folder: Path, name: str, edit) -> Path:
    data = json.loads(shapes["val_annotations"].read_text())
    edit(data)
    path = folder / name
    path.write_text(json.dumps(data))
    return path


# ----------------------------------------------------------------------------------------- predict
def test_1_predict_takes_paths_that_are_not_utf8(tiny, shapes, tmp_path):
    image = tmp_path / f"x{NOT_UTF8}.png"
    image.write_bytes(sorted(shapes["val_images"].iterdir())[0].read_bytes())
    vis = tmp_path / f"vis{NOT_UTF8}"
    done = run_process(
        "trt_yolact.predict",
        "--weights",
        str(tiny),
        "--out",
        str(tmp_path / "r.json"),
        "--save-vis",
        str(vis),
        str(image),
    )
    assert done.returncode == 0, done.stderr  # was a segmentation fault in OpenCV's file functions
    assert [p.name for p in vis.iterdir()] == [f"x{NOT_UTF8}.png"]
    assert json.loads((tmp_path / "r.json").read_text())[0]["file_name"] == image.name


def test_2_outputs_never_overwrite_inputs(tiny, shapes, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(shapes["val_images"].iterdir()):
        (images / path.name).write_bytes(path.read_bytes())
    ann = tmp_path / "ann.json"
    ann.write_text(shapes["val_annotations"].read_text())
    before = snapshot(tmp_path)
    weights = ["--weights", str(tiny)]
    over_images = run(
        "trt_yolact.predict", *weights, "--out", str(tmp_path / "o.json"), "--save-vis", str(images), str(images)
    )
    assert "would overwrite the input" in one_line(over_images)
    first = str(images / "000000.png")
    assert "--out" in one_line(run("trt_yolact.predict", *weights, "--out", first, first))
    over_ann = run("trt_yolact.eval", *weights, "--ann", str(ann), "--images", str(images), "--results", str(ann))
    assert "--results" in one_line(over_ann) and "--ann" in one_line(over_ann)
    assert snapshot(tmp_path) == before


def test_7_a_zero_byte_image_is_skipped_in_one_line(tiny, shapes, tmp_path):
    folder = tmp_path / "val"
    folder.mkdir()
    for path in sorted(shapes["val_images"].iterdir()):
        (folder / path.name).write_bytes(b"" if path.name == "000001.png" else path.read_bytes())
    done = run("trt_yolact.predict", "--weights", str(tiny), "--out", str(tmp_path / "p.json"), str(folder))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "000001.png: an empty file" in done.stderr
    allowed = run(
        "trt_yolact.eval",
        "--weights",
        str(tiny),
        "--ann",
        str(shapes["val_annotations"]),
        "--images",
        str(folder),
        "--allow-missing-images",
    )
    assert allowed.returncode == 0 and "000001.png: an empty file" in allowed.stdout, allowed.stderr


def test_12_an_interrupted_predict_leaves_no_overlay_and_no_results(tiny, shapes, tmp_path, monkeypatch, capsys):
    from trt_yolact import predict

    drawn = []

    def interrupted_on_the_second(image, *args, **kwargs):
        drawn.append(image)
        if len(drawn) == 2:
            raise KeyboardInterrupt  # as Ctrl-C, or a full disk, halfway through
        return image

    monkeypatch.setattr(predict, "draw_detections", interrupted_on_the_second)
    vis, out = tmp_path / "vis", tmp_path / "r.json"
    argv = ["--weights", str(tiny), "--out", str(out), "--save-vis", str(vis), "--batch-size", "1"]
    assert predict.main([*argv, str(shapes["val_images"])]) == 130
    assert not vis.exists() and not out.exists()
    drawn.clear()
    vis.mkdir()
    (vis / "keep.txt").write_text("the user's own file")
    assert predict.main([*argv, str(shapes["val_images"])]) == 130
    assert [p.name for p in vis.iterdir()] == ["keep.txt"] and not out.exists()


def test_19_predict_refuses_image_ids_or_overlay_names_two_images_would_share(tiny, shapes, tmp_path):
    weights = ["--weights", str(tiny), "--out", str(tmp_path / "r.json")]
    listed = sorted(shapes["val_images"].iterdir())[0]
    unlisted = REPO / "trt_yolact" / "samples" / "shapes.png"
    ann = ["--ann", str(shapes["val_annotations"])]
    assert "is not one of the images" in one_line(run("trt_yolact.predict", *weights, *ann, str(unlisted), str(listed)))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.png").write_bytes(listed.read_bytes())
    vis = tmp_path / "vis"
    same_name = run("trt_yolact.predict", *weights, "--save-vis", str(vis), str(tmp_path / "a"), str(tmp_path / "b"))
    assert "would both" in one_line(same_name)
    assert not vis.exists() and not (tmp_path / "r.json").exists()


def test_20_predict_writes_nothing_when_no_image_can_be_read(tiny, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    out, vis = tmp_path / "r.json", tmp_path / "vis"
    done = run("trt_yolact.predict", "--weights", str(tiny), "--out", str(out), "--save-vis", str(vis), str(fake))
    assert "none of the 1 image(s) could be read" in one_line(done)
    assert not out.exists() and not vis.exists()


# -------------------------------------------------------------------------------------------- eval
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where TensorRT and torch FP16 cannot run")
@pytest.mark.parametrize(
    "asked", [["--backends", "torch,tensorrt"], ["--precision", "fp32,fp16"]], ids=["tensorrt", "torch-fp16-on-cpu"]
)
def test_4_the_eval_gate_fails_when_a_requested_configuration_cannot_run(tiny, shapes, asked):
    data = ["--ann", str(shapes["val_annotations"]), "--images", str(shapes["val_images"])]
    done = run("trt_yolact.eval", "--weights", str(tiny), *data, *asked, "--max-ap-drop", "100")
    assert "cannot check 1 requested configuration" in one_line(done, code=1)


@pytest.mark.parametrize(
    "field, value", [("category_id", 77), ("image_id", 77)], ids=["foreign-category", "foreign-image"]
)
def test_5_eval_refuses_annotations_it_would_silently_drop(tiny, shapes, tmp_path, field, value):
    def edit(data):
        data["annotations"][0][field] = value

    ann = _edited(shapes, tmp_path, "a.json", edit)
    done = run("trt_yolact.eval", "--weights", str(tiny), "--ann", str(ann), "--images", str(shapes["val_images"]))
    assert f"{field} 77" in one_line(done)


def test_6_eval_refuses_ground_truth_without_annotations(tiny, shapes, tmp_path):
    ann = _edited(shapes, tmp_path, "a.json", lambda data: data["annotations"].clear())
    done = run(
        "trt_yolact.eval",
        "--weights",
        str(tiny),
        "--ann",
        str(ann),
        "--images",
        str(shapes["val_images"]),
        "--max-ap-drop",
        "0",
    )
    assert "COCO AP is undefined" in one_line(done)


def test_14_eval_and_bench_check_every_output_before_the_work(tiny, shapes, tmp_path):
    (tmp_path / "afile").write_text("a file where a folder should be")
    blocked = str(tmp_path / "afile" / "x")
    data = ["--ann", str(shapes["val_annotations"]), "--images", str(shapes["val_images"])]
    weights = ["--weights", str(tiny)]
    done = run("trt_yolact.eval", *weights, *data, "--json", str(tmp_path / "e.json"), "--plot", blocked + ".png")
    assert "not a folder" in one_line(done) and done.stdout == ""  # refused before any evaluation
    bench = ["--backends", "torch", "--batch", "1", "--iters", "1", "--warmup", "0", "--settle", "0"]
    done = run("trt_yolact.bench", *weights, *bench, "--json", str(tmp_path / "b.json"), "--md", blocked + ".md")
    assert "not a folder" in one_line(done) and done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_15_write_errors_name_the_real_path_and_reason(tiny, shapes, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    data = ["--ann", str(shapes["val_annotations"]), "--images", str(shapes["val_images"])]
    weights = ["--weights", str(tiny)]
    done = run("trt_yolact.eval", *weights, *data, "--json", str(folder))
    assert one_line(done).endswith(f"is a folder, not a file: {folder}") and done.stdout == ""
    bench = ["--backends", "torch", "--batch", "1", "--iters", "1", "--warmup", "0", "--settle", "0"]
    done = run("trt_yolact.bench", *weights, *bench, "--md", str(folder))
    assert one_line(done).endswith(f"is a folder, not a file: {folder}") and done.stdout == ""
    out = tmp_path / "export"
    (out / "tiny.build.json").mkdir(parents=True)  # a folder in the way of the build report
    done = run("trt_yolact.build", *weights, "--out", str(out), "--engines", str(tmp_path / "engines"))
    assert one_line(done).endswith(f"is a folder, not a file: {out / 'tiny.build.json'}") and done.stdout == ""
    (tmp_path / "afile").write_text("a file where a folder should be")
    done = run("trt_yolact.build", *weights, "--out", str(tmp_path / "afile" / "x"), "--engines", str(out))
    assert one_line(done).endswith(f"{tmp_path / 'afile'} is a file, not a folder")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["afile", "export", "folder", "tiny.build.json"]


# -------------------------------------------------------------------- annotation files, everywhere
def _set_rle(data: dict, counts: str) -> None:
    """The first annotation's mask: a compressed RLE of its image's size with these counts."""
    ann = data["annotations"][0]
    image = next(i for i in data["images"] if i["id"] == ann["image_id"])
    ann["segmentation"] = {"size": [image["height"], image["width"]], "counts": counts}


MALFORMED = {
    "bad polygon": lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3]]),
    "no bbox": lambda d: d["annotations"][0].pop("bbox"),
    "no area": lambda d: d["annotations"][0].pop("area"),
    "no segmentation": lambda d: d["annotations"][0].pop("segmentation"),
    "no iscrowd": lambda d: d["annotations"][0].pop("iscrowd"),
    "no annotation id": lambda d: d["annotations"][0].pop("id"),
    "no image height": lambda d: d["images"][0].pop("height"),
    "no file_name": lambda d: d["images"][0].pop("file_name"),
    "string image id": lambda d: d["images"][0].update(id="one"),
    "null image id": lambda d: d["images"][0].update(id=None),
    "2-number bbox": lambda d: d["annotations"][0].update(bbox=[1, 2]),
    "NaN bbox": lambda d: d["annotations"][0].update(bbox=[float("nan"), 0, 1, 1]),
    "RLE without size": lambda d: d["annotations"][0].update(segmentation={"counts": "abc"}),
    "garbage RLE": lambda d: _set_rle(d, "!!!garbage"),
    "images a dict": lambda d: d.update(images={"0": 1}),
    "integer file_name": lambda d: d["images"][0].update(file_name=5),
    "repeated annotation id": lambda d: d["annotations"].append(copy.deepcopy(d["annotations"][0])),
}
EVALUATION_ONLY = {"no area", "no segmentation", "no iscrowd"}  # training reads them as optional


def test_8_every_malformed_annotation_file_is_one_dataset_error(shapes, tmp_path):
    from trt_yolact.data.coco import CocoDetection
    from trt_yolact.metrics.coco_eval import load_annotations

    for name, edit in MALFORMED.items():
        ann = _edited(shapes, tmp_path, "a.json", edit)
        with pytest.raises(DatasetError) as caught:
            load_annotations(ann)
        assert len(str(caught.value).splitlines()) == 1, name
        if name not in EVALUATION_ONLY:
            with pytest.raises(DatasetError):
                CocoDetection(ann, shapes["val_images"])


def test_8_eval_predict_and_train_report_malformed_annotations_in_one_line(tiny, shapes, tmp_path):
    images = str(shapes["val_images"])
    ann = str(_edited(shapes, tmp_path, "poly.json", MALFORMED["bad polygon"]))
    assert "polygon" in one_line(run("trt_yolact.eval", "--weights", str(tiny), "--ann", ann, "--images", images))
    ann = str(_edited(shapes, tmp_path, "name.json", MALFORMED["no file_name"]))
    predict = run("trt_yolact.predict", "--weights", str(tiny), "--ann", ann, "--out", str(tmp_path / "r.json"), images)
    assert "file_name" in one_line(predict)
    train = ["trt_yolact.train", "--config", "yolact_shapes", "--iters", "1", "--out", str(tmp_path / "run")]
    ann = str(_edited(shapes, tmp_path, "id.json", MALFORMED["string image id"]))
    assert "ids must be integers" in one_line(run(*train, "--data-train", f"{ann}:{images}"))
    ann = str(_edited(shapes, tmp_path, "none.json", lambda data: data["annotations"].clear()))
    assert "no image" in one_line(run(*train, "--data-train", f"{ann}:{images}"))
    assert not (tmp_path / "run").exists() and not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------- argument values and messages
def test_21_bench_refuses_an_absurd_batch_at_the_parser(tmp_path):
    done = run("trt_yolact.bench", "--weights", str(tmp_path / "none.pth"), "--batch", "1,100000", cwd=tmp_path)
    assert "must be from 1 to 256" in parser_error(done, "--batch")


@pytest.mark.parametrize(
    "command, weights",
    [
        ("trt_yolact.eval", "{tiny},"),
        ("trt_yolact.bench", "{tiny},"),
        ("trt_yolact.bench", ""),
        ("trt_yolact.build", ""),
    ],
    ids=["eval-empty-item", "bench-empty-item", "bench-empty", "build-empty"],
)
def test_24_empty_weights_are_refused_at_the_parser(tiny, shapes, tmp_path, command, weights):
    data = ["--ann", str(shapes["val_annotations"]), "--images", str(shapes["val_images"])]
    extra = {
        "trt_yolact.eval": data,
        "trt_yolact.build": ["--out", str(tmp_path / "x"), "--engines", str(tmp_path / "e")],
    }
    done = run(command, "--weights", weights.format(tiny=tiny), *extra.get(command, []), cwd=tmp_path)
    assert "empty" in parser_error(done, "--weights")
    assert list(tmp_path.iterdir()) == []


def test_24_a_folder_for_a_file_and_a_file_for_a_folder_say_so(tiny, shapes, tmp_path):
    weights = ["--weights", str(tiny)]
    folder_ann = run("trt_yolact.eval", *weights, "--ann", str(tmp_path), "--images", str(shapes["val_images"]))
    assert "is a folder" in one_line(folder_ann)
    file_images = run("trt_yolact.eval", *weights, "--ann", str(shapes["val_annotations"]), "--images", str(tiny))
    assert "is a file" in one_line(file_images)


def test_25_bench_refuses_a_deployed_file_on_another_backend(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"refused by its suffix before it is read")
    done = run("trt_yolact.bench", "--weights", str(onnx), "--backends", "torch", "--iters", "1")
    assert "runs on onnxruntime, not on torch" in one_line(done)
