"""INT8 by explicit quantization: where the Q/DQ nodes go in each flavour, what calibration computes, that the
calibration cache makes a rebuild byte-identical, that INT8 detections agree with FP32, and the bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from test_export import TINY

from trt_yolact.config import Int8Options
from trt_yolact.data.synthetic import SHAPE_CLASSES, image_rng, render_sample
from trt_yolact.deploy import calibration as calibration_module
from trt_yolact.deploy.artifacts import ArtifactChain
from trt_yolact.deploy.calibration import CalibrationCache, CalibrationSettings, abs_histogram, calibrate, threshold
from trt_yolact.deploy.onnx_format import check_tensorrt_qdq, load_onnx, onnx_precision, read_onnx_metadata
from trt_yolact.deploy.onnx_int8 import block_of, module_path, quantizable_layers, symmetric_scale
from trt_yolact.errors import CalibrationError, EngineBuildError, UsageError
from trt_yolact.files import sha256_file
from trt_yolact.inference.calibration_images import SHAPES_SENSITIVITY_SEED, int8_setup
from trt_yolact.inference.images import sample_images
from trt_yolact.inference.predictor import Predictor
from trt_yolact.metrics import int8_sensitivity
from trt_yolact.metrics.verify import detection_agreement
from trt_yolact.model.checkpoint import ModelSource, save_checkpoint
from trt_yolact.model.yolact import Yolact
from trt_yolact.runtime.open import open_artifact

SETTINGS = Int8Options(calib_images=64, calib_method="minmax")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """Both INT8 flavours of the pruned demo model, calibrated on 64 generated shapes images."""
    source = ModelSource.load("yolact_shapes_pruned")
    chain = ArtifactChain(source, tmp_path_factory.mktemp("int8"), int8=int8_setup(SETTINGS, source))
    return chain, {flavour: chain.int8_onnx(flavour).path for flavour in ("onnxruntime", "tensorrt")}


def producers(model):
    return {out: node for node in model.graph.node for out in node.output}


def constant(model, name):
    return next(numpy_helper.to_array(init) for init in model.graph.initializer if init.name == name)


# --------------------------------------------------------------------------- graph structure


def test_tensorrt_flavour_feeds_every_convolution_from_symmetric_dq(pruned):
    _, paths = pruned
    model = load_onnx(paths["tensorrt"])
    made_by, consumers = producers(model), {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert len(convs) == len(quantizable_layers(load_onnx(paths["onnxruntime"]))) - sum(
        layer.op_type == "Add" for layer in quantizable_layers(load_onnx(paths["onnxruntime"]))
    )
    for conv in convs:
        activation, weight = made_by[conv.input[0]], made_by[conv.input[1]]
        assert activation.op_type == weight.op_type == "DequantizeLinear", conv.name
        assert made_by[activation.input[0]].op_type == "QuantizeLinear"
        assert consumers[conv.input[0]] == 1  # a dedicated pair per convolution
        zero = constant(model, activation.input[2])
        assert zero.dtype == np.int8 and zero == 0
        weights, scales = constant(model, weight.input[0]), constant(model, weight.input[1])
        assert weights.dtype == np.int8 and weights.min() >= -127
        assert scales.shape == (weights.shape[0],) and scales.dtype == np.float16  # per output channel, FP16
        assert next(a.i for a in weight.attribute if a.name == "axis") == 0
        assert not constant(model, weight.input[2]).any()
    residual = [n for n in model.graph.node if n.op_type == "Add" and n.name.startswith("/model/backbone/layers")]
    assert residual and all(any(made_by[i].op_type == "DequantizeLinear" for i in add.input) for add in residual)
    assert model.opset_import[0].version >= 19 and onnx_precision(paths["tensorrt"]) == "int8"
    assert {i.type.tensor_type.elem_type for i in [*model.graph.input, *model.graph.output]} == {onnx.TensorProto.FLOAT}
    check_tensorrt_qdq(paths["tensorrt"])  # what the engine builder checks before it builds


def test_onnxruntime_flavour_has_uint8_activations_and_int8_channel_weights(pruned):
    _, paths = pruned
    model = load_onnx(paths["onnxruntime"])
    made_by = producers(model)
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantize and all(constant(model, q.input[2]).dtype == np.uint8 for q in quantize)
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        weight = made_by[conv.input[1]]
        assert weight.op_type == "DequantizeLinear"
        values, scales = constant(model, weight.input[0]), constant(model, weight.input[1])
        assert values.dtype == np.int8 and scales.shape == (values.shape[0],) and scales.dtype == np.float32
    assert read_onnx_metadata(paths["onnxruntime"])["int8_flavour"] == "onnxruntime"
    with pytest.raises(EngineBuildError, match="TensorRT flavour"):
        check_tensorrt_qdq(paths["onnxruntime"])  # uint8 zero points: never handed to TensorRT


def _calibrated_values(chain, tensor):
    """Activations of ``tensor`` on a calibration batch, from the FP32 export."""
    session = calibration_module._calibration_session(chain.onnx("fp32").path, [tensor])
    return session.run([tensor], {"images": next(chain.int8.data.batches(8))})[0]


def _quantize_dequantize(values, scale, zero):
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        "qdq",
        [onnx.helper.make_tensor_value_info("x", onnx.helper.np_dtype_to_tensor_dtype(values.dtype), None)],
        [onnx.helper.make_tensor_value_info("y", onnx.helper.np_dtype_to_tensor_dtype(values.dtype), None)],
        [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero, "z")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": values})[0]


@pytest.mark.parametrize("flavour", ["tensorrt", "onnxruntime"])
def test_quantize_dequantize_of_a_calibrated_tensor_is_within_half_a_step(pruned, flavour):
    chain, paths = pruned
    model = load_onnx(paths[flavour])
    ranges = chain.calibration_ranges()
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0].startswith("/model/fpn"))
    tensor = q.input[0]
    original = tensor if tensor in ranges else next(name for name in ranges if tensor.startswith(name))
    scale, zero = constant(model, q.input[1]), constant(model, q.input[2])
    values = _calibrated_values(chain, original).astype(scale.dtype)
    lo, hi = ranges[original]
    inside = values[(values >= lo) & (values <= hi)]
    error = np.abs(_quantize_dequantize(inside, scale, zero).astype(np.float64) - inside.astype(np.float64))
    assert inside.size > 0.99 * values.size  # the calibrated range covers what it was calibrated on
    assert error.max() <= 0.5 * float(scale) * (1 + 1e-3) + np.finfo(scale.dtype).eps * np.abs(inside).max()


def test_symmetric_scale_never_clips_the_range_end():
    for amax in (1e-6, 0.3, 1.0, 7.77, 1234.5):
        for dtype in (np.float16, np.float32):
            scale = symmetric_scale(-amax / 2, amax, dtype)
            assert float(scale) * 127 >= amax and float(scale) > 0
    assert symmetric_scale(0.0, 0.0) == 1  # an all-zero tensor


# --------------------------------------------------------------------------- calibration


class Arrays:
    def __init__(self, batches, fingerprint="arrays"):
        self._batches, self.fingerprint = batches, fingerprint

    def __len__(self):
        return sum(len(b) for b in self._batches)

    def batches(self, batch_size):
        yield from self._batches


def identity_model(path, batch="B"):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["images"], ["out"], name="/model/relu/Relu")],
        "g",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [batch, 1, 10, 10])],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [batch, 1, 10, 10])],
    )
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    return path


def test_minmax_is_the_observed_range_and_always_holds_zero(tmp_path):
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-2, 3, (4, 1, 10, 10)).astype(np.float32) for _ in range(3)]
    minmax = CalibrationSettings("minmax")
    ranges = calibrate(identity_model(tmp_path / "m.onnx"), ["images", "out"], Arrays(batches), minmax, False)
    data = np.concatenate(batches)
    assert ranges["images"] == pytest.approx((data.min(), data.max()))
    assert ranges["out"] == pytest.approx((0.0, data.max()))  # a ReLU's range starts at 0
    positive = [b - b.min() + 1 for b in batches]  # all > 0: the range is stretched to hold 0
    assert calibrate(tmp_path / "m.onnx", ["images"], Arrays(positive), minmax, False)["images"][0] == 0


class Images(Arrays):
    """Arrays re-batched to the size asked for, as the real calibration images are."""

    def batches(self, batch_size):
        data = np.concatenate(self._batches)
        yield from (data[i : i + batch_size] for i in range(0, len(data), batch_size))


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_an_export_of_a_fixed_batch_is_calibrated_in_batches_of_that_size(tmp_path, method):
    """10 images through an export fixed at batch 3: the last batch is padded, its copies dropped."""
    data = np.random.default_rng(1).uniform(-2, 3, (10, 1, 10, 10)).astype(np.float32)
    model = identity_model(tmp_path / "b3.onnx", batch=3)
    ranges = calibrate(model, ["images", "out"], Images([data]), CalibrationSettings(method, batch_size=4), False)
    reference = calibrate(
        identity_model(tmp_path / "any.onnx"), ["images", "out"], Images([data]), CalibrationSettings(method), False
    )
    assert ranges.keys() == reference.keys()
    for name in ranges:
        assert ranges[name] == pytest.approx(reference[name])


def test_non_finite_activations_are_one_calibration_error(tmp_path):
    batch = np.ones((4, 1, 10, 10), np.float32)
    batch[2, 0, 5, 5] = np.nan
    with pytest.raises(CalibrationError, match="of m.onnx holds NaN or inf"):
        calibrate(
            identity_model(tmp_path / "m.onnx"), ["images", "out"], Arrays([batch] * 2), CalibrationSettings(), False
        )


def test_percentile_and_entropy_clip_outliers_but_not_the_bulk():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 200_000), [40.0, -35.0]])  # two outliers far out
    amax = float(np.abs(values).max())
    histogram = abs_histogram(values, amax)
    assert histogram.sum() == values.size
    for settings in (CalibrationSettings("percentile", 99.99), CalibrationSettings("entropy")):
        limit = threshold(histogram, amax, settings)
        assert 2.5 < limit < 10, settings.method
    # A ReLU output is mostly exact zeros: they must not pull the entropy threshold to its minimum.
    relu = np.where(rng.random(200_000) < 0.8, 0.0, np.abs(rng.normal(0, 1, 200_000)))
    relu[0] = 30.0
    limit = threshold(abs_histogram(relu, 30.0), 30.0, CalibrationSettings("entropy"))
    assert limit > 2.0


def test_a_rebuild_with_the_cache_is_byte_identical_and_calibrates_nothing(pruned, tmp_path, monkeypatch):
    chain, paths = pruned
    before = {flavour: path.read_bytes() for flavour, path in paths.items()}
    for path in paths.values():
        path.unlink()
    monkeypatch.setattr(calibration_module, "calibrate", lambda *a, **k: pytest.fail("recalibrated"))
    again = ArtifactChain(chain.source, chain.folder, int8=int8_setup(SETTINGS, chain.source))
    for flavour, data in before.items():
        assert again.int8_onnx(flavour).path.read_bytes() == data, flavour
    cache = json.loads(chain.calibration_cache.read_text())  # plain JSON, keyed by the export's hash
    assert cache["onnx_sha256"] == sha256_file(chain.onnx("fp32").path) and cache["settings"]["method"] == "minmax"


def test_a_cache_of_another_model_is_detected_and_replaced(pruned, tmp_path, capsys):
    chain, _ = pruned
    source = ModelSource.load(_tiny_shapes_checkpoint(tmp_path))
    other = ArtifactChain(source, tmp_path / "out", int8=int8_setup(Int8Options(calib_images=8), source))
    other.folder.mkdir()
    other.calibration_cache.write_text(chain.calibration_cache.read_text())
    other.int8_onnx("onnxruntime")
    assert "made for another model" in capsys.readouterr().err
    assert CalibrationCache.read(other.calibration_cache).onnx_sha256 == sha256_file(other.onnx("fp32").path)


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("flavour", ["onnxruntime", "tensorrt"])
def test_int8_detections_agree_with_fp32(pruned, flavour):
    """At least 90 % of the FP32 export's confident detections (score >= 0.3) are found again by the INT8
    export (same class, box IoU >= 0.9), on the sample images and 32 generated shapes images that neither
    calibration nor training saw."""
    chain, paths = pruned
    images = sample_images() + [render_sample(image_rng(SHAPES_SENSITIVITY_SEED, "val", i), 256)[0] for i in range(32)]
    config = chain.source.config
    with open_artifact(chain.onnx("fp32").path) as fp32, open_artifact(paths[flavour]) as int8:
        reference = Predictor(fp32, config).predict(images).detections
        assert int8.precision == "int8"
        agreement, _ = detection_agreement(reference, Predictor(int8, config).predict(images).detections)
    assert agreement >= 0.9


# --------------------------------------------------------------------------- layers and exclusion


def test_layers_are_named_by_module_and_grouped_into_blocks():
    assert module_path("/model/backbone/layers.0/layers.0.0/conv1/Conv") == "backbone.layers.0.0.conv1"
    assert module_path("/model/prediction_layers.0/upfeature/upfeature.0_1/Conv") == ("prediction_layers.0.upfeature.0")
    assert module_path("/Concat_3") == ""  # outside the network: never quantized
    blocks = {m: block_of(m) for m in ("backbone.conv1", "backbone.layers.2.1.conv2", "fpn.lat_layers.0")}
    assert blocks == {"backbone.conv1": "stem", "backbone.layers.2.1.conv2": "stage3", "fpn.lat_layers.0": "fpn"}
    assert block_of("proto_net.4") == "protonet" and block_of("prediction_layers.0.bbox_layer") == "head"


def test_excluded_layers_keep_their_precision(pruned, tmp_path):
    chain, _ = pruned
    path = tmp_path / "no_proto.onnx"
    chain.write_int8_variant("tensorrt", ("protonet", "backbone.layers.0.*"), path)
    model = load_onnx(path)
    made_by = producers(model)
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        module = module_path(conv.name)
        kept = block_of(module) == "protonet" or module.startswith("backbone.layers.0.")
        assert (conv.input[1] in made_by) != kept, conv.name  # an excluded one reads its weights directly
    excluded = json.loads(read_onnx_metadata(path)["int8_excluded"])
    assert "proto_net.0" in excluded and any(m.startswith("backbone.layers.0.") for m in excluded)
    with pytest.raises(UsageError, match="matches no layer"):
        chain.write_int8_variant("tensorrt", ("protonett",), tmp_path / "typo.onnx")
    assert not (tmp_path / "typo.onnx").exists()


def test_sensitivity_and_the_search_for_the_blocks_to_leave_out(pruned, tmp_path, monkeypatch):
    """The report's numbers are the AP of the trial models the search writes (here a stand-in AP: 60 points
    minus a cost per quantized block, read from each trial's metadata)."""
    chain, _ = pruned
    cost = {"head": 1.0, "protonet": 0.4, "stem": 0.1}

    def fake_ap(path, ann, images):
        meta = read_onnx_metadata(path)
        if meta.get("precision") != "int8":
            return 60.0
        kept = {block_of(m) for m in json.loads(meta["int8_excluded"])}
        return 60.0 - sum(c for block, c in cost.items() if block not in kept)

    monkeypatch.setattr(int8_sensitivity, "_mask_ap", fake_ap)
    eval_set = (tmp_path / "ann.json", tmp_path)
    (tmp_path / "ann.json").write_text(json.dumps({"images": [{}] * 5}))
    report = int8_sensitivity.analyse(chain, "onnxruntime", eval_set, Int8Options(max_ap_drop=0.3), progress=False)
    by_block = {b.block: b for b in report.blocks}
    assert report.quantized_ap == pytest.approx(58.5) and report.images == 5
    assert by_block["head"].alone == pytest.approx(-1.0) and by_block["head"].left_out == pytest.approx(-0.5)
    assert by_block["stage2"].alone == pytest.approx(0.0)
    assert report.left_unquantized == ["head", "protonet"] and report.final_ap == pytest.approx(59.9)
    json_path, png_path = int8_sensitivity.write_report(report, tmp_path / "report")
    assert json.loads(json_path.read_text())["left_unquantized"] == ["head", "protonet"]
    assert png_path.read_bytes()[:4] == b"\x89PNG"


def test_a_drop_bound_no_int8_model_meets_is_an_error(pruned, tmp_path, monkeypatch):
    """When only leaving every block unquantized (no INT8 at all) would do, the search says so instead of
    writing an "INT8" file with nothing quantized."""
    chain, _ = pruned

    def fake_ap(path, ann, images):  # FP32 60 points, every INT8 trial 50, whatever it leaves out
        return 50.0 if read_onnx_metadata(path).get("precision") == "int8" else 60.0

    monkeypatch.setattr(int8_sensitivity, "_mask_ap", fake_ap)
    (tmp_path / "ann.json").write_text(json.dumps({"images": [{}] * 5}))
    with pytest.raises(CalibrationError, match="no INT8 model is within 0.5 mask AP points"):
        int8_sensitivity.analyse(
            chain, "onnxruntime", (tmp_path / "ann.json", tmp_path), Int8Options(max_ap_drop=0.5), progress=False
        )


# --------------------------------------------------------------------------- bad input


def _tiny_shapes_checkpoint(folder, classes=SHAPE_CLASSES):
    torch.manual_seed(0)
    config = TINY.replace(class_names=classes, category_ids=tuple(range(1, len(classes) + 1)))
    return save_checkpoint(folder / "tiny_shapes.pth", Yolact(config).eval())


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _error_line(result):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_model_of_other_data_needs_calibration_images(tmp_path):
    checkpoint = _tiny_shapes_checkpoint(tmp_path, classes=("a", "b"))
    result = run("trt_yolact.export", "--weights", str(checkpoint), "--int8", "--out", "out", cwd=tmp_path)
    assert "--calib DIR" in _error_line(result) and not (tmp_path / "out").exists()


def test_too_few_readable_calibration_images_is_one_line_and_nothing_written(tmp_path):
    checkpoint = _tiny_shapes_checkpoint(tmp_path)
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((40, 50, 3), 40 * i, np.uint8))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = run(
        "trt_yolact.export", "--weights", str(checkpoint), "--int8", "--calib", "calib", "--out", "out", cwd=tmp_path
    )
    line = _error_line(result)
    assert "5 readable images" in line and "at least 8" in line and not (tmp_path / "out").exists()
    assert "skipped 1 unreadable calibration images" in result.stderr


def test_unreadable_calibration_images_are_skipped_and_counted(tmp_path):
    checkpoint = _tiny_shapes_checkpoint(tmp_path)
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(9):
        cv2.imwrite(str(folder / f"{i}.jpg"), np.full((40, 50, 3), 25 * i, np.uint8))
    (folder / "empty.png").write_bytes(b"")
    (folder / "cut.jpg").write_bytes((folder / "0.jpg").read_bytes()[:100])
    result = run(
        "trt_yolact.export", "--weights", str(checkpoint), "--int8", "--calib", "calib", "--out", "out", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "skipped 2 unreadable calibration images" in result.stderr
    cache = json.loads((tmp_path / "out" / "model.calib.json").read_text())
    assert cache["settings"]["images"] == 9
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "model.calib.json",
        "model.int8-trt.onnx",
        "model.int8.onnx",
        "model.onnx",
    ]


def _one_image_set(folder):
    """``img.png`` and ``a.json``, its COCO annotations with one square."""
    cv2.imwrite(str(folder / "img.png"), np.zeros((32, 32, 3), np.uint8))
    image = {"id": 1, "file_name": "img.png", "height": 32, "width": 32}
    box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 8, 8], "area": 64, "iscrowd": 0}
    box["segmentation"] = [[4, 4, 12, 4, 12, 12, 4, 12]]
    annotations = {"images": [image], "annotations": [box], "categories": [{"id": 1, "name": "square"}]}
    (folder / "a.json").write_text(json.dumps(annotations))


@pytest.mark.parametrize(
    "command",
    [
        ("trt_yolact.predict", "--precision", "int8", "--weights", "yolact_shapes_pruned", "img.png"),
        ("trt_yolact.eval", "--precision", "int8", "--ann", "a.json", "--images", "."),
        ("trt_yolact.bench", "--backends", "torch", "--precision", "int8", "--iters", "1"),
    ],
)
def test_int8_on_torch_names_the_backends_that_run_it(tmp_path, command):
    _one_image_set(tmp_path)
    line = _error_line(run(*command, cwd=tmp_path))
    assert "onnxruntime" in line and "tensorrt" in line and "INT8" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "img.png"]  # no cache, no output


@pytest.mark.parametrize(
    "command, ask_with",
    [
        (("trt_yolact.build", "--weights", "yolact_shapes_pruned", "--calib", "."), "--precision int8"),
        (("trt_yolact.build", "--weights", "yolact_shapes_pruned", "--int8-sensitivity"), "--precision int8"),
        (("trt_yolact.export", "--weights", "yolact_shapes_pruned", "--int8-exclude", "head"), "--int8"),
        (("trt_yolact.eval", "--ann", "a.json", "--images", ".", "--calib-method", "entropy"), "--precision int8"),
    ],
)
def test_int8_options_without_int8_are_refused_not_ignored(tmp_path, command, ask_with):
    _one_image_set(tmp_path)
    line = _error_line(run(*command, cwd=tmp_path))
    assert "apply to INT8 only" in line and line.endswith(f"add {ask_with}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "img.png"]  # nothing written


def test_build_int8_makes_checks_and_reports_both_flavours(tmp_path):
    from trt_yolact.metrics.verify import BuildOptions, build_and_verify

    checkpoint = _tiny_shapes_checkpoint(tmp_path)
    int8 = Int8Options(calib_images=8, sensitivity_images=6, max_ap_drop=0.0)
    options = BuildOptions(out_dir=tmp_path / "export", precision="int8", repeats=1, int8=int8)
    report = build_and_verify(str(checkpoint), options)
    checked = {check.name: check for check in report.artifacts}
    for name in ("tiny_shapes.fused.onnx", "tiny_shapes.fused.fp16.onnx"):
        assert checked[name].precision != "int8"
    for name in ("tiny_shapes.fused.int8.onnx", "tiny_shapes.fused.int8-trt.onnx"):
        assert checked[name].precision == "int8" and checked[name].detection_agreement is not None
        assert checked[name].max_abs_error  # raw outputs compared with torch FP32
    assert [r.flavour for r in report.sensitivity] == ["onnxruntime", "tensorrt"]
    assert {b.block for b in report.sensitivity[0].blocks} >= {"stem", "stage1", "fpn", "protonet", "head"}
    assert report.int8["calibration"].startswith("8 generated shapes images")
    assert json.loads(json.dumps(report.to_dict()))["sensitivity"][1]["flavour"] == "tensorrt"
