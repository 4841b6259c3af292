"""Network slimming: channel selection, exact removal with compensation, the sparsity update, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import official_layout, random_state_dict
from torch import nn

from trt_yolact.config import BackboneConfig, YolactConfig
from trt_yolact.errors import PruneError
from trt_yolact.model.channel_groups import ChannelGroup, channel_groups
from trt_yolact.model.checkpoint import build_model, load_model, save_checkpoint
from trt_yolact.model.fuse import fuse_model, is_fused_state_dict
from trt_yolact.model.prune import (
    gammas_by_stage,
    plot_gamma_histograms,
    prunable_batchnorms,
    prune_model,
    select_channels,
)
from trt_yolact.model.stats import conv_macs_by_module, count_conv_macs
from trt_yolact.model.yolact import Yolact
from trt_yolact.prune import main
from trt_yolact.training.sparsity import apply_sparsity_penalty

_SMALL = dict(
    max_size=64,
    class_names=("a", "b", "c"),
    category_ids=(1, 2, 3),
    fpn_channels=16,
    proto_channels=16,
    head_channels=16,
    mask_dim=8,
)
TINY_RESNET = YolactConfig(
    name="tiny_resnet",
    backbone=BackboneConfig(kind="resnet", layers=(1, 2, 1, 1), widths=(16, 16, 32, 32), stem_channels=16),
    **_SMALL,
)
TINY_DARKNET = YolactConfig(
    name="tiny_darknet",
    backbone=BackboneConfig(
        kind="darknet", layers=(1, 1, 2, 1, 1), widths=(8, 16, 16, 16, 16), stem_channels=8, selected_layers=(2, 3, 4)
    ),
    normalization="scale",
    **_SMALL,
)


def tiny_model(config: YolactConfig, seed: int = 0) -> Yolact:
    """A small model with non-trivial BN statistics, so that folding mistakes show."""
    torch.manual_seed(seed)
    model = Yolact(config).eval()
    generator = torch.Generator().manual_seed(seed)
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            sign = torch.where(torch.rand(n, generator=generator) < 0.3, -1.0, 1.0)  # negative scales exist
            bn.weight.data = (torch.rand(n, generator=generator) + 0.5) * sign
            bn.bias.data = torch.randn(n, generator=generator) * 0.3
            bn.running_mean.data = torch.randn(n, generator=generator) * 0.2
            bn.running_var.data = torch.rand(n, generator=generator) + 0.5
    return model


def internal(model: Yolact) -> list[ChannelGroup]:
    return channel_groups(model, "internal")


def bn_of(group: ChannelGroup) -> str:
    return group.producers[0].bn


def images(size: int = 64, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def max_difference(a: Yolact, b: Yolact, x: torch.Tensor) -> float:
    with torch.no_grad():
        return max(float((p - q).abs().max()) for p, q in zip(a(x), b(x)))


def module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


# ------------------------------------------------------------------------------------- prunable layers
def test_prunable_batchnorms_are_the_block_internal_ones():
    resnet = tiny_model(TINY_RESNET)
    names = [bn_of(group) for group in internal(resnet)]
    blocks = ["0.0", "1.0", "1.1", "2.0", "3.0"]
    assert names == [f"backbone.layers.{b}.bn{i}" for b in blocks for i in (1, 2)]
    assert prunable_batchnorms(resnet) == [module(resnet, n) for n in names]
    darknet = tiny_model(TINY_DARKNET)
    names = [bn_of(group) for group in internal(darknet)]
    assert names == [f"backbone.layers.{b}.conv1.1" for b in ["0.1", "1.1", "2.1", "2.2", "3.1", "4.1"]]
    assert [group.consumers[0].conv for group in internal(darknet)] == [n.replace("conv1.1", "conv2.0") for n in names]


# ------------------------------------------------------------------------------------ exact removal
def zero_gammas(model: Yolact, count: int, beta_for_3x3, seed: int = 3) -> dict[str, int]:
    """Zero ``count`` scales per prunable layer; betas of channels feeding a 1x1 conv become clearly positive
    (the fold must compensate them), those feeding a 3x3 conv get ``beta_for_3x3(beta)``."""
    generator = torch.Generator().manual_seed(seed)
    widths = {}
    for group in internal(model):
        bn = module(model, bn_of(group))
        index = torch.randperm(bn.num_features, generator=generator)[:count]
        bn.weight.data[index] = 0.0
        beta = bn.bias.data[index]
        one_by_one = module(model, group.consumers[0].conv).kernel_size == (1, 1)
        bn.bias.data[index] = beta.abs() + 0.5 if one_by_one else beta_for_3x3(beta)
        widths[group.name] = bn.num_features - count
    return widths


@pytest.mark.parametrize(
    "config, beta_for_3x3",
    [
        (TINY_RESNET, lambda beta: -beta.abs()),  # ReLU(beta <= 0) = 0: nothing reaches the padded 3x3 conv
        (TINY_DARKNET, torch.zeros_like),  # LeakyReLU is 0 only at 0
    ],
    ids=["resnet", "darknet"],
)
def test_zero_gamma_channels_are_removed_without_changing_outputs(config, beta_for_3x3):
    model = tiny_model(config)
    widths = zero_gammas(model, 5, beta_for_3x3)
    x = images()
    pruned, report = prune_model(model, threshold=0.0, min_keep=1, round_to=1)
    assert {row.name: row.kept for row in report.layers} == widths
    for group in internal(pruned):
        assert module(pruned, bn_of(group)).num_features == widths[group.name]
        assert module(pruned, group.consumers[0].conv).in_channels == widths[group.name]
    assert max_difference(model, pruned, x) < 1e-5
    assert report.params_after < report.params_before and report.macs_after < report.macs_before
    if config is TINY_RESNET:
        # The bn2 channels (beta > 0 into the 1x1 conv3) need the fold: without it the outputs move.
        uncompensated, _ = prune_model(model, threshold=0.0, min_keep=1, round_to=1, compensate=False)
        assert max_difference(model, uncompensated, x) > 1e-3


@pytest.mark.parametrize(
    "config, block, beta_sign",
    [(TINY_RESNET, "backbone.layers.0.0", 1.0), (TINY_DARKNET, "backbone.layers.0.1", -1.0)],
    ids=["resnet-relu", "darknet-leaky"],
)
def test_fold_into_a_padded_3x3_conv_is_exact_inside_and_off_on_the_border(config, block, beta_sign):
    """A removed channel with constant output a != 0 feeding a zero-padded 3x3 conv: the fold into the next
    BN's mean is exact in the interior; on the border it over-compensates by exactly the taps on padding."""
    model = tiny_model(config)
    group = next(g for g in internal(model) if g.name.startswith(block))
    consumer = group.consumers[0]
    bn, next_conv, next_bn = module(model, bn_of(group)), module(model, consumer.conv), module(model, consumer.bn)
    assert next_conv.kernel_size == (3, 3) and next_conv.stride == (1, 1)
    removed = torch.tensor([1, 4, 6])
    bn.weight.data[removed] = 0.0
    bn.bias.data[removed] = beta_sign * (bn.bias.data[removed].abs() + 0.5)
    pruned, _ = prune_model(model, threshold=0.0, min_keep=1, round_to=1)
    assert module(pruned, bn_of(group)).num_features == bn.num_features - 3

    captured = {}
    for tag, net in (("original", model), ("pruned", pruned)):
        # clone: the activation after the BN works in place
        module(net, consumer.bn).register_forward_hook(lambda m, i, o, tag=tag: captured.__setitem__(tag, o.clone()))
        with torch.no_grad():
            net(images())
    error = captured["pruned"] - captured["original"]
    interior = error[:, :, 1:-1, 1:-1].abs().max()
    border = error.abs().max()
    print(f"\n{group.name}: max |error| interior {interior:.2e}, border {border:.2e}")
    assert interior < 1e-5
    assert border > 1e-3

    # Top edge (off the corners): the fold also counted the kernel row that reads the padding row.
    beta = bn.bias.data[removed]
    slope = 0.1 if config is TINY_DARKNET else 0.0  # LeakyReLU(0.1) in DarkNet, ReLU in ResNet
    constant = torch.where(beta >= 0, beta, beta * slope)
    top_taps = next_conv.weight.data[:, removed, 0, :].sum(-1)  # [out, removed]
    scale = next_bn.weight.data / torch.sqrt(next_bn.running_var + next_bn.eps)
    predicted = scale * (top_taps * constant).sum(1)
    top_edge = error[:, :, 0, 1:-1]
    torch.testing.assert_close(top_edge, predicted.view(1, -1, 1).expand_as(top_edge), atol=1e-5, rtol=1e-4)

    uncompensated, _ = prune_model(model, threshold=0.0, min_keep=1, round_to=1, compensate=False)
    module(uncompensated, consumer.bn).register_forward_hook(lambda m, i, o: captured.__setitem__("raw", o.clone()))
    with torch.no_grad():
        uncompensated(images())
    assert (captured["raw"] - captured["original"])[:, :, 1:-1, 1:-1].abs().max() > 1e-3


# -------------------------------------------------------------------------------------- selection
GAMMAS = {
    "a": torch.tensor([0.9, 0.0, 0.5, 0.05, 0.3, 0.01, -0.7, 0.2, 0.0, 0.6]),
    "b": torch.tensor([0.02, -0.04, 0.01, 0.03, 0.0, 0.05]),
}


def kept(result: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {name: index.tolist() for name, index in result.items()}


ALL = {"a": list(range(10)), "b": list(range(6))}


def test_threshold_keeps_strictly_larger_magnitudes_and_min_keep_fills_up():
    result = select_channels(GAMMAS, threshold=0.2, min_keep=1, round_to=1)
    assert all(index.dtype == torch.long for index in result.values())
    # |gamma| > 0.2 survives (|-0.7| included, 0.2 itself pruned); "b" keeps its single largest.
    assert kept(result) == {"a": [0, 2, 4, 6, 9], "b": [5]}
    assert kept(select_channels(GAMMAS, threshold=0.2, min_keep=3, round_to=1))["b"] == [1, 3, 5]
    assert kept(select_channels(GAMMAS, threshold=0.2, min_keep=50, round_to=1)) == ALL
    assert kept(select_channels(GAMMAS, threshold=0.0, min_keep=1, round_to=1))["a"] == [0, 2, 3, 4, 5, 6, 7, 9]


def test_round_to_rounds_kept_counts_up_by_magnitude_and_never_past_the_width():
    result = kept(select_channels(GAMMAS, threshold=0.2, min_keep=1, round_to=4))
    # "a": 5 kept -> 8, adding the next largest |gamma| (0.2 at 7, 0.05 at 3, 0.01 at 5); "b": 1 -> 4.
    assert result == {"a": [0, 2, 3, 4, 5, 6, 7, 9], "b": [0, 1, 3, 5]}
    assert kept(select_channels(GAMMAS, threshold=0.2, min_keep=1, round_to=16)) == ALL
    # Ties are broken towards the lower index: 0.0 at 1 before 0.0 at 8.
    assert kept(select_channels(GAMMAS, threshold=0.2, min_keep=1, round_to=9))["a"] == [0, 1, 2, 3, 4, 5, 6, 7, 9]


def test_ratio_is_a_global_percentile_of_magnitudes():
    # 16 channels, ratio 0.5: the 8 smallest |gamma| over both layers go (0, 0, 0, .01, .01, .02, .03, .04).
    result = kept(select_channels(GAMMAS, ratio=0.5, min_keep=1, round_to=1))
    assert result == {"a": [0, 2, 3, 4, 6, 7, 9], "b": [5]}
    flat = {"x": torch.arange(1.0, 101.0)}
    assert kept(select_channels(flat, ratio=0.6, min_keep=1, round_to=1))["x"] == list(range(60, 100))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ratio=0.0), "between 0 and 1"),
        (dict(ratio=1.0), "between 0 and 1"),
        (dict(ratio=0.5, threshold=0.1), "exactly one"),
        (dict(), "exactly one"),
        (dict(threshold=-0.1), ">= 0"),
        (dict(threshold=0.9), "would empty every layer"),
        (dict(threshold=0.1, min_keep=0), "min-keep"),
        (dict(threshold=0.1, round_to=0), "round-to"),
    ],
)
def test_selection_rejects_bad_options(kwargs, message):
    with pytest.raises(PruneError, match=message):
        select_channels(GAMMAS, **kwargs)


# -------------------------------------------------------------------------------------- sparsity
@pytest.mark.parametrize("config", [TINY_RESNET, TINY_DARKNET], ids=["resnet", "darknet"])
def test_sparsity_update_adds_lambda_sign_gamma_to_prunable_scales_only(config):
    model = tiny_model(config).train()
    first = prunable_batchnorms(model)[0]
    first.weight.data[:3] = torch.tensor([0.0, -0.4, 0.7])  # sign 0, -1, +1
    outputs = model.forward_train(images(batch=2))
    (outputs.loc.square().sum() + outputs.conf_logits.sum() + outputs.proto.sum()).backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    strength = 1e-3
    apply_sparsity_penalty(model, strength)
    prunable = {f"{bn_of(group)}.weight" for group in internal(model)}
    assert prunable <= set(before)
    for name, param in model.named_parameters():
        if name not in before:
            continue
        expected = before[name] + strength * torch.sign(param.detach()) if name in prunable else before[name]
        torch.testing.assert_close(param.grad, expected, rtol=0, atol=1e-9, msg=name)
    assert float(first.weight.grad[0] - before[f"{bn_of(internal(model)[0])}.weight"][0]) == 0.0


# ---------------------------------------------------------------------------------- checkpoints
def test_pruned_checkpoint_round_trips_through_load_model(tmp_path):
    model = tiny_model(TINY_RESNET)
    pruned, report = prune_model(model, ratio=0.5, min_keep=8, round_to=8)
    widths = {bn_of(g): module(pruned, bn_of(g)).num_features for g in internal(pruned)}
    assert all(w % 8 == 0 for w in widths.values()) and sum(widths.values()) < report.channels_before
    path = save_checkpoint(tmp_path / "pruned.pth", pruned)
    loaded = load_model(path)
    assert {bn_of(g): module(loaded, bn_of(g)).num_features for g in internal(loaded)} == widths
    assert max_difference(pruned, loaded, images()) == 0.0
    assert path.stat().st_size == report.bytes_after


def test_conv_macs_by_module_counts_each_layer_and_every_call_of_the_shared_head():
    model = tiny_model(TINY_RESNET)
    macs = conv_macs_by_module(model)
    assert sum(macs.values()) == count_conv_macs(model)
    # Stem: 7x7, 3 -> 16 channels, stride 2 on 64x64 -> 32x32 outputs.
    assert macs["backbone.conv1"] == 32 * 32 * 16 * 3 * 7 * 7
    # The one prediction head runs on every pyramid level (64 px: 8x8, 4x4, 2x2, 1x1, 1x1); its 3x3
    # upfeature conv (16 -> 16 channels) counts each call.
    upfeature = next(name for name in macs if name.startswith("prediction_layers.0.upfeature"))
    assert macs[upfeature] == (8 * 8 + 4 * 4 + 2 * 2 + 1 + 1) * 16 * 16 * 9
    assert "semantic_seg_conv" not in macs  # a training-only branch


def official_random_state(reference_dir, name: str) -> dict[str, torch.Tensor]:
    return random_state_dict(official_layout(reference_dir, name))


def test_ratio_0_6_on_released_yolact_base_shrinks_the_file_below_45_percent(reference_dir, tmp_path, capsys):
    source = tmp_path / "yolact_base_54_800000.pth"  # a released-layout file; config from the name
    torch.save(official_random_state(reference_dir, "yolact_base"), source)
    out, report_path = tmp_path / "pruned.pth", tmp_path / "report.json"
    code = main(["--weights", str(source), "--ratio", "0.6", "--out", str(out), "--report", str(report_path)])
    assert code == 0, capsys.readouterr().err
    ratio = out.stat().st_size / source.stat().st_size
    print(f"\nyolact_base, ratio 0.6: file {100 * ratio:.1f}% of the original")
    assert ratio <= 0.45
    report = json.loads(report_path.read_text())
    assert len(report["layers"]) == 2 * (3 + 4 + 23 + 3)
    assert all(row["kept"] % 8 == 0 and 8 <= row["kept"] <= row["total"] for row in report["layers"])
    assert report["macs_after"] < report["macs_before"] and report["params_after"] < 0.5 * report["params_before"]
    assert report["bytes_after"] == out.stat().st_size
    model = load_model(out)
    assert model.config.name == "yolact_base"
    with torch.no_grad():
        raw = model(torch.zeros(1, 3, 128, 128))
    assert raw.conf.shape[-1] == 81 and torch.allclose(raw.conf.sum(-1), torch.ones(1))
    assert "backbone.layers.2.22.bn2" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def tiny_checkpoint(tmp_path):
    return save_checkpoint(tmp_path / "tiny.pth", tiny_model(TINY_RESNET))


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_dry_run_reports_every_layer_and_writes_no_checkpoint(tiny_checkpoint, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    args = ["--weights", str(tiny_checkpoint), "--ratio", "0.5", "--dry-run", "--out", str(tmp_path / "p.pth")]
    code, out, _ = run_cli([*args, "--report", str(report_path)], capsys)
    assert code == 0 and not (tmp_path / "p.pth").exists()
    report = json.loads(report_path.read_text())
    names = [group.name for group in internal(tiny_model(TINY_RESNET))]
    assert [row["name"] for row in report["layers"]] == names
    row_keys = {"name", "kind", "total", "kept", "max_pruned_importance"}
    row_keys |= {f"{what}_{when}" for what in ("params", "macs") for when in ("before", "after")}
    assert all(set(row) == row_keys and row["kind"] == "internal" for row in report["layers"])
    assert report["channels_after"] == sum(row["kept"] for row in report["layers"]) < report["channels_before"]
    for key in ("params_before", "params_after", "macs_before", "macs_after", "bytes_before", "bytes_after"):
        assert report[key] > 0, key
    assert report["input_size"] == [64, 64] and report["ratio"] == 0.5
    for name in names:
        assert name in out
    assert "conv MACs @ 64x64" in out and "parameters" in out and "checkpoint file" in out


def test_cli_fuse_writes_a_fused_pruned_checkpoint(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "pruned_fused.pth"
    code, _, err = run_cli(["--weights", str(tiny_checkpoint), "--ratio", "0.4", "--fuse", "--out", str(out)], capsys)
    assert code == 0, err
    data = torch.load(out, weights_only=True)
    assert data["fused"] is True and data["pruning"]["ratio"] == 0.4
    assert is_fused_state_dict(data["model"])
    fused = build_model(data["model"], TINY_RESNET)
    reference, _ = prune_model(load_model(tiny_checkpoint), ratio=0.4)
    assert max_difference(reference, fused, images()) < 1e-5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())


def _fused_file(tmp_path):
    return save_checkpoint(tmp_path / "fused.pth", fuse_model(tiny_model(TINY_RESNET)), fused=True)


def _bn_free_file(tmp_path):
    state = tiny_model(TINY_RESNET).state_dict()
    state = {k: v for k, v in state.items() if ".bn" not in k and "downsample.1" not in k}
    path = tmp_path / "no_bn.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "make, args, message",
    [
        # --ratio, --min-keep and --round-to out of range: the argument parser's (tests/test_faults_tools.py)
        (None, ["--threshold", "100"], "would empty every layer"),
        (_fused_file, ["--ratio", "0.5"], "is fused"),
        (_bn_free_file, ["--ratio", "0.5", "--config", "yolact_base"], "no batch-norm layers"),
        (lambda tmp_path: tmp_path / "missing.pth", ["--ratio", "0.5"], "does not exist"),
    ],
    ids=["threshold-empties", "fused", "no-bn", "missing"],
)
def test_cli_bad_input_gives_one_error_line_and_writes_nothing(tiny_checkpoint, tmp_path, capsys, make, args, message):
    weights = tiny_checkpoint if make is None else make(tmp_path)
    out = tmp_path / "out" / "pruned.pth"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    report = tmp_path / "r.json"
    code, stdout, err = run_cli(["--weights", str(weights), *args, "--out", str(out), "--report", str(report)], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    if message == "would empty every layer":
        assert "--ratio" in err
    assert stdout == "" and sorted(p.name for p in tmp_path.rglob("*")) == before


def test_cli_needs_out_unless_dry_run(tiny_checkpoint, capsys):
    code, _, err = run_cli(["--weights", str(tiny_checkpoint), "--ratio", "0.5"], capsys)
    assert code == 2 and "--out is required" in err


# ------------------------------------------------------------------------------------- histograms
def test_gamma_histograms_from_models_and_state_dicts(tmp_path):
    model = tiny_model(TINY_RESNET)
    stages = gammas_by_stage(model)
    assert sorted(stages) == [0, 1, 2, 3] and stages[1].numel() == 4 * 16
    from_state = gammas_by_stage(model.state_dict())
    assert all(torch.equal(stages[s], from_state[s]) for s in stages)
    assert sorted(gammas_by_stage(tiny_model(TINY_DARKNET).state_dict())) == [0, 1, 2, 3, 4]
    sparse = tiny_model(TINY_RESNET, seed=1)
    for bn in prunable_batchnorms(sparse):
        bn.weight.data *= 0.1
    out = plot_gamma_histograms([model, sparse.state_dict()], ["before", "after sparsity"], tmp_path / "gammas.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="one label per model"):
        plot_gamma_histograms([model], ["a", "b"], tmp_path / "x.png")
    with pytest.raises(PruneError, match="no prunable"):
        gammas_by_stage(fuse_model(model))
