"""Whole-network pruning (scope all): channel groups, exact removal and compensation, the architecture-from-
shapes loader, group-lasso sparsity, ONNX of a pruned model, the CLI's refusals."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_engine_builder import FakeTRT
from test_prune import TINY_DARKNET, TINY_RESNET, images, module, run_cli, tiny_model
from torch import nn

from trt_yolact.config import Int8Options
from trt_yolact.data.synthetic import generate_dataset
from trt_yolact.deploy import tensorrt_build
from trt_yolact.deploy.artifacts import ArtifactChain
from trt_yolact.deploy.onnx_export import export_onnx
from trt_yolact.inference.calibration_images import int8_setup
from trt_yolact.model.channel_groups import BN_KINDS, ChannelGroup, channel_groups
from trt_yolact.model.checkpoint import ModelSource, build_model, load_model, save_checkpoint
from trt_yolact.model.fuse import fuse_model
from trt_yolact.model.prune import group_magnitude, prune_model, prune_to
from trt_yolact.model.yolact import Yolact
from trt_yolact.runtime.open import open_artifact
from trt_yolact.training.importance import annotated_batches, taylor_importance
from trt_yolact.training.sparsity import apply_sparsity_penalty, gamma_statistics

CONFIGS = pytest.mark.parametrize("config", [TINY_RESNET, TINY_DARKNET], ids=["resnet", "darknet"])


def convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


# ------------------------------------------------------------------------------------------- groups
@CONFIGS
def test_every_conv_channel_belongs_to_exactly_one_group(config):
    """Scope all covers the network: every conv's input columns are read from exactly one group (the stem's
    RGB input aside) and its output rows are written into at most one, so no channel space is split."""
    model = tiny_model(config)
    groups = channel_groups(model, "all")
    readers: dict[str, list[str]] = {}
    writers: dict[str, list[str]] = {}
    for group in groups:
        for producer in group.producers:
            conv = module(model, producer.conv)
            assert conv.out_channels == group.width * producer.repeat, (group.name, producer.conv)
            writers.setdefault(producer.conv, []).append(group.name)
        for consumer in group.consumers:
            assert module(model, consumer.conv).in_channels == group.width, (group.name, consumer.conv)
            readers.setdefault(consumer.conv, []).append(group.name)
    stem = "backbone.conv1" if config is TINY_RESNET else "backbone._preconv.0"
    assert set(readers) == set(convs(model)) - {stem}
    assert all(len(names) == 1 for names in readers.values()), readers
    assert all(len(names) == 1 for names in writers.values()), writers
    kinds = {group.kind for group in groups}
    assert kinds == {"internal", "stem", "stage", "fpn", "protonet", "prototypes", "head"}
    # The internal scope is exactly the paper's set, unchanged.
    internal = [g.name for g in channel_groups(model, "internal")]
    assert internal == [g.name for g in groups if g.kind == "internal"]


def test_the_head_coefficients_follow_their_prototypes():
    model = tiny_model(TINY_RESNET)
    prototypes = next(g for g in channel_groups(model, "all") if g.kind == "prototypes")
    coefficients = next(p for p in prototypes.producers if p.conv.endswith("mask_layer"))
    anchors = model.config.priors_per_location
    assert coefficients.repeat == anchors and prototypes.width == model.config.mask_dim
    rows = prototypes.rows(coefficients, torch.tensor([2]))
    assert rows.tolist() == [a * model.config.mask_dim + 2 for a in range(anchors)]


# -------------------------------------------------------------------------------- exact removal
def _one_by_one_consumers(model: nn.Module, group: ChannelGroup) -> bool:
    return all(module(model, c.conv).kernel_size == (1, 1) for c in group.consumers)


def silence_channels(model: Yolact, count: int, seed: int = 5) -> dict[str, torch.Tensor]:
    """Give ``count`` channels of every group zero importance and a constant output that removal with
    compensation reproduces exactly: any constant where all consumers are 1x1 convs (the fold must then
    carry it), 0 where a zero-padded 3x3 conv or a product (the prototypes) reads it. Returns kept indices."""
    generator = torch.Generator().manual_seed(seed)
    kept = {}
    with torch.no_grad():
        for group in channel_groups(model, "all"):
            removed = torch.randperm(group.width, generator=generator)[:count]
            exact_any = group.compensable and _one_by_one_consumers(model, group)
            for producer in group.producers:
                rows = group.rows(producer, removed)
                if producer.bn is not None:
                    bn = module(model, producer.bn)
                    bn.weight[removed] = 0.0
                    bn.bias[removed] = bn.bias[removed].abs() + 0.5 if exact_any else 0.0
                else:
                    conv = module(model, producer.conv)
                    conv.weight[rows] = 0.0
                    conv.bias[rows] = conv.bias[rows].abs() + 0.5 if exact_any else 0.0
            mask = torch.ones(group.width, dtype=torch.bool)
            mask[removed] = False
            kept[group.name] = mask.nonzero().flatten()
    return kept


def masks_and_outputs(model: Yolact, x: torch.Tensor) -> list[torch.Tensor]:
    """What a pruned model must reproduce: boxes, scores, the assembled masks (prototypes x coefficients,
    whatever their number) and the semantic segmentation logits."""
    with torch.no_grad():
        raw = model(x)
        train = model.forward_train(x)
    masks = torch.einsum("bhwk,bnk->bhwn", raw.proto, raw.coeffs)
    return [raw.loc, raw.conf, masks, train.segm]


@CONFIGS
def test_zero_importance_channels_of_every_group_kind_are_removed_without_changing_outputs(config):
    model = tiny_model(config)
    kept = silence_channels(model, 3)
    groups = channel_groups(model, "all")
    pruned, _ = prune_to(model, groups, kept)
    for group in channel_groups(pruned, "all"):
        assert group.width == kept[group.name].numel(), group.name
    x = images()
    for before, after in zip(masks_and_outputs(model, x), masks_and_outputs(pruned, x)):
        assert before.shape == after.shape
        assert float((before - after).abs().max()) < 1e-4
    # The constants carried into 1x1 consumers (stem and stage groups in ResNet, the last protonet
    # width) need the folds: without them the outputs move.
    uncompensated, _ = prune_to(model, groups, kept, compensate=False)
    pairs = zip(masks_and_outputs(model, x), masks_and_outputs(uncompensated, x))
    moved = max(float((a - b).abs().max()) for a, b in pairs)
    assert moved > 1e-3


def test_selection_by_importance_finds_the_zero_channels_of_every_kind():
    model = tiny_model(TINY_RESNET)
    kept = silence_channels(model, 4)
    groups = channel_groups(model, "all")
    with torch.no_grad():  # BN-free channels: zero importance needs their consumers' columns at zero too
        for group in groups:
            removed = torch.tensor(sorted(set(range(group.width)) - set(kept[group.name].tolist())))
            if not group.ranked_by_bn:
                for consumer in group.consumers:
                    module(model, consumer.conv).weight[:, removed] = 0.0
    neck = [g for g in groups if not g.ranked_by_bn]
    zero_share = 4 * len(neck) / sum(g.width for g in neck)
    pruned, report = prune_model(model, threshold=0.0, ratio_neck=zero_share, min_keep=1, round_to=1, scope="all")
    assert {row.name: row.kept for row in report.layers} == {name: int(k.numel()) for name, k in kept.items()}
    assert {row.kind for row in report.layers} >= set(BN_KINDS)
    assert report.macs_after < report.macs_before and report.params_after < report.params_before
    assert pruned.mask_dim == model.config.mask_dim - 4 == pruned.config.mask_dim


def test_round_to_and_min_keep_hold_per_group():
    pruned, report = prune_model(tiny_model(TINY_RESNET), ratio=0.7, min_keep=8, round_to=8, scope="all")
    for row in report.layers:
        assert row.kept == row.total or (row.kept % 8 == 0 and row.kept >= 8), row


# ----------------------------------------------------------------------------------- round trips
@CONFIGS
def test_pruned_checkpoint_loads_from_shapes_alone_and_fuses(config, tmp_path):
    model = tiny_model(config)
    pruned, _ = prune_model(model, ratio=0.5, min_keep=4, round_to=4, scope="all")
    widths = {g.name: g.width for g in channel_groups(pruned, "all")}
    assert any(widths[g.name] < g.width for g in channel_groups(model, "all") if g.kind == "stage")
    path = save_checkpoint(tmp_path / "pruned.pth", pruned)
    # The stored config still names the dense widths (as configs do); the shapes decide.
    loaded = load_model(path)
    assert {g.name: g.width for g in channel_groups(loaded, "all")} == widths
    x = images()
    for a, b in zip(masks_and_outputs(pruned, x), masks_and_outputs(loaded, x)):
        assert torch.equal(a, b)
    # With the dense config and no width table the same file loads the same network.
    same = build_model(torch.load(path, weights_only=True)["model"], config)
    assert {g.name: g.width for g in channel_groups(same, "all")} == widths
    fused = fuse_model(loaded)
    for a, b in zip(loaded(x)[:4], fused(x)[:4]):
        assert float((a - b).detach().abs().max()) < 1e-4


def test_pruned_model_exports_to_onnx_whose_adds_line_up_and_match_torch(tmp_path):
    model = tiny_model(TINY_RESNET)
    pruned, _ = prune_model(model, ratio=0.5, min_keep=4, round_to=4, scope="all")
    fused = fuse_model(pruned)
    path = tmp_path / "pruned.onnx"
    export_onnx(fused, path, simplify=False)
    graph = onnx.shape_inference.infer_shapes(onnx.load(path)).graph
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in graph.value_info}
    shapes.update({v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in graph.output})
    adds = [node for node in graph.node if node.op_type == "Add"]
    checked = 0
    for node in adds:
        known = [shapes[name] for name in node.input if name in shapes and len(shapes[name]) == 4]
        if len(known) == 2 and all(isinstance(shape[1], int) for shape in known):
            assert known[0][1] == known[1][1], (node.name, known)  # channel counts of every residual / FPN add
            checked += 1
    assert checked >= 3
    x = images(64, 1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        reference = fused(x)
    by_name = dict(zip([o.name for o in session.get_outputs()], outputs))
    for name, tensor in (("loc", reference.loc), ("proto", reference.proto), ("coeffs", reference.coeffs)):
        np.testing.assert_allclose(by_name[name], tensor.numpy(), atol=1e-4, rtol=1e-3)


# --------------------------------------------------------------------------------------- sparsity
def test_group_lasso_pushes_every_bn_free_channel_by_lambda_along_its_weights():
    model = tiny_model(TINY_RESNET).train()
    outputs = model.forward_train(images(batch=2))
    (outputs.loc.square().sum() + outputs.conf_logits.sum() + outputs.proto.sum()).backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    bn_strength, neck_strength = 1e-3, 3e-3
    apply_sparsity_penalty(model, bn_strength, "all", neck_strength)
    expected = dict(before)

    def push(name: str, delta: torch.Tensor) -> None:
        if name in expected:  # parameters the test loss leaves without a gradient get no penalty either
            expected[name] = expected[name] + delta

    for group in channel_groups(model, "all"):
        if group.ranked_by_bn:
            for producer in group.producers:
                gamma = module(model, producer.bn).weight.detach()
                push(f"{producer.bn}.weight", bn_strength * torch.sign(gamma))
            continue
        scale = neck_strength / group_magnitude(model, group).float()
        for producer in group.producers:
            conv = module(model, producer.conv)
            rows = scale.repeat(producer.repeat)
            push(f"{producer.conv}.weight", conv.weight.detach() * rows.view(-1, 1, 1, 1))
            push(f"{producer.conv}.bias", conv.bias.detach() * rows)
        for consumer in group.consumers:
            weight = module(model, consumer.conv).weight.detach()
            push(f"{consumer.conv}.weight", weight * scale.view(1, -1, 1, 1))
    grads = dict(model.named_parameters())
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name].grad, grad, rtol=1e-5, atol=1e-9, msg=name)
    assert not torch.equal(grads["fpn.pred_layers.0.weight"].grad, before["fpn.pred_layers.0.weight"])
    assert torch.equal(grads["prediction_layers.0.conf_layer.bias"].grad, before["prediction_layers.0.conf_layer.bias"])
    stats = gamma_statistics(model, "all")
    assert {"group_norm_median", "group_norm_below_0.1"} <= set(stats)
    assert "group_norm_median" not in gamma_statistics(model)


# -------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def checkpoint(tmp_path):
    return save_checkpoint(tmp_path / "tiny.pth", tiny_model(TINY_RESNET))


def test_cli_scope_all_reports_every_group_and_writes_the_checkpoint(checkpoint, tmp_path, capsys):
    out, report_path = tmp_path / "p.pth", tmp_path / "r.json"
    args = ["--weights", str(checkpoint), "--scope", "all", "--ratio-backbone", "0.5", "--ratio-neck", "0.3"]
    args += ["--importance", "l2"]
    args += ["--min-keep", "4", "--round-to", "4", "--out", str(out), "--report", str(report_path)]
    code, printed, err = run_cli(args, capsys)
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["scope"] == "all" and report["ratio"] == 0.5 and report["ratio_neck"] == 0.3
    kinds = {"internal", "stem", "stage", "fpn", "protonet", "prototypes", "head"}
    assert {row["kind"] for row in report["layers"]} == kinds
    for name in ("backbone.layers.2", "fpn.out", "prototypes", "prediction_layers.0.upfeature"):
        assert name in printed
    stored = torch.load(out, weights_only=True)
    assert stored["pruning"]["scope"] == "all" and stored["pruning"]["ratio_neck"] == 0.3
    assert load_model(out).mask_dim == stored["config"]["mask_dim"]
    assert any(row["kept"] < row["total"] for row in report["layers"] if row["kind"] in ("fpn", "protonet", "head"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--scope", "all", "--threshold", "100", "--ratio-neck", "0.5"], "at or above every"),
        (["--scope", "all", "--threshold", "0.1"], "--ratio-neck"),
        (["--ratio", "0.5", "--ratio-neck", "0.5"], "only --scope all"),
        (["--scope", "all"], "say how much to prune"),
        (["--scope", "all", "--ratio", "0.5", "--threshold", "0.1"], "not both"),
    ],
    ids=["empties-every-group", "threshold-without-neck-ratio", "neck-ratio-internal", "no-rule", "both-rules"],
)
def test_cli_bad_rules_get_one_line_and_no_file(checkpoint, tmp_path, capsys, extra, message):
    out = tmp_path / "p.pth"
    code, _, err = run_cli(["--weights", str(checkpoint), "--importance", "l2", *extra, "--out", str(out)], capsys)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_cli_scope_all_on_a_fused_checkpoint_gets_one_line_and_no_file(tmp_path, capsys):
    fused = tmp_path / "fused.pth"
    save_checkpoint(fused, fuse_model(tiny_model(TINY_RESNET)), fused=True)
    out = tmp_path / "p.pth"
    code, _, err = run_cli(["--weights", str(fused), "--scope", "all", "--ratio", "0.5", "--out", str(out)], capsys)
    assert code != 0 and "fused" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


# ------------------------------------------------------------------------------- the deploy chain
def test_a_whole_network_pruned_checkpoint_goes_through_the_deploy_chain_unchanged(tmp_path, monkeypatch):
    """fuse -> ONNX -> FP16 ONNX -> both INT8 flavours -> engine, with no width table anywhere; every ONNX
    runs in ONNX Runtime and agrees with torch on the pruned model."""
    pruned, _ = prune_model(load_model("yolact_shapes"), ratio=0.6, ratio_neck=0.5, scope="all")
    path = save_checkpoint(tmp_path / "slim.pth", pruned)
    source = ModelSource.load(path)
    settings = Int8Options(calib_images=16, calib_method="minmax")
    chain = ArtifactChain(source, tmp_path / "export", int8=int8_setup(settings, source))
    x = images(source.config.max_size, 2)
    with torch.no_grad():
        reference = pruned(x)
    tolerances = {"fp32": 1e-3, "fp16": 5e-2}
    for precision, atol in tolerances.items():
        with open_artifact(chain.onnx(precision).path) as runner:
            raw = runner(x)
        np.testing.assert_allclose(raw.loc.float().numpy(), reference.loc.numpy(), atol=atol, rtol=atol)
        assert raw.proto.shape[-1] == pruned.mask_dim < 32
    for flavour in ("onnxruntime", "tensorrt"):
        assert chain.int8_onnx(flavour).path.is_file()
    with open_artifact(chain.int8_onnx("onnxruntime").path) as runner:
        assert runner(x).proto.shape == reference.proto.shape
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT())
    gpu = {"name": "Fake GPU", "compute_capability": "9.0"}
    monkeypatch.setattr(tensorrt_build, "gpu_info", lambda device=None: gpu)
    engine = chain.engine("fp16", "1,2,4")
    assert engine.path.is_file() and engine.precision == "fp16"


# ----------------------------------------------------------------------------------- Taylor importance
@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("shapes"), 0, 8, 128, seed=11)


def test_taylor_importance_is_zero_for_a_dead_channel_and_leaves_the_model_alone(shapes_data):
    model = load_model("yolact_shapes")
    model.config = model.config.replace(max_size=128)
    with torch.no_grad():  # protonet channel 3 of conv 4 outputs ReLU(0) = 0 everywhere
        model.proto_net[4].weight[3] = 0.0
        model.proto_net[4].bias[3] = 0.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = channel_groups(model, "all")
    data = f"{shapes_data['val_annotations']}:{shapes_data['val_images']}"
    scores = taylor_importance(model, groups, annotated_batches(data, model, 8))
    assert set(scores) == {g.name for g in groups if not g.ranked_by_bn}
    assert float(scores["proto_net.4"][3]) == 0.0
    for name, score in scores.items():
        assert torch.isfinite(score).all() and (score > 0).float().mean() > 0.5, name
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not model.training and all(p.grad is None for p in model.parameters())
    again = taylor_importance(model, groups, annotated_batches(data, model, 8))
    assert all(torch.allclose(scores[k], again[k]) for k in scores)


def test_cli_taylor_needs_annotated_images_and_uses_them(shapes_data, tmp_path, capsys):
    weights = save_checkpoint(tmp_path / "shapes.pth", load_model("yolact_shapes"))
    args = ["--weights", str(weights), "--scope", "all", "--ratio", "0.5", "--dry-run"]  # taylor: the default
    code, _, err = run_cli(args, capsys)
    assert code != 0 and "--taylor-data" in err and len(err.strip().splitlines()) == 1
    data = f"{shapes_data['val_annotations']}:{shapes_data['val_images']}"
    report_path = tmp_path / "report.json"
    code, _, err = run_cli([*args, "--taylor-data", data, "--taylor-images", "4", "--report", str(report_path)], capsys)
    assert code == 0, err
    assert json.loads(report_path.read_text())["importance"] == "taylor"
