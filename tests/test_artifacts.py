"""The artifact chain: each artifact made from the file before it, reused while its parent's content and the
options are unchanged, made again when either changes."""

from __future__ import annotations

import os

import pytest
import torch
from test_export import TINY  # the same tiny model as the export tests

from trt_yolact.config import PostprocessConfig
from trt_yolact.deploy.artifacts import ArtifactChain, ExportOptions, export_artifacts
from trt_yolact.deploy.onnx_format import read_onnx_metadata
from trt_yolact.errors import CalibrationError, ExportError, PrecisionError, UsageError
from trt_yolact.files import sha256_file
from trt_yolact.model.checkpoint import ModelSource, read_checkpoint, save_checkpoint
from trt_yolact.model.yolact import Yolact


def tiny_checkpoint(path, seed: int = 0):
    torch.manual_seed(seed)
    return save_checkpoint(path, Yolact(TINY).eval(), iteration=7)


def mtimes(folder) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.fixture
def source(tmp_path):
    return ModelSource.load(tiny_checkpoint(tmp_path / "tiny.pth"))


def test_each_artifact_is_made_from_the_file_before_it(source, tmp_path):
    chain = ArtifactChain(source, tmp_path / "out")
    fp16 = chain.onnx("fp16")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["tiny.fused.fp16.onnx", "tiny.fused.onnx", "tiny.fused.pth"]
    fused, fp32 = tmp_path / "out" / "tiny.fused.pth", tmp_path / "out" / "tiny.fused.onnx"
    fused_payload = torch.load(fused, weights_only=True)
    assert fused_payload["fused"] and fused_payload["parent_sha256"] == sha256_file(source.path)
    assert fused_payload["iteration"] == 7  # run metadata carried along
    meta32, meta16 = read_onnx_metadata(fp32), read_onnx_metadata(fp16.path)
    assert meta32["parent_sha256"] == sha256_file(fused) and meta16["parent_sha256"] == sha256_file(fp32)
    assert meta32["source_sha256"] == meta16["source_sha256"] == sha256_file(source.path)
    assert meta16["precision"] == "fp16" and fp16.precision == "fp16" and not fp16.reused


def test_unchanged_artifacts_are_reused_and_stale_ones_made_again(source, tmp_path):
    out = tmp_path / "out"
    ArtifactChain(source, out).onnx("fp16")
    before = mtimes(out)
    again = ArtifactChain(source, out)
    assert again.onnx("fp16").reused and again.onnx("fp32").reused and again.checkpoint().reused
    assert mtimes(out) == before  # nothing rewritten
    # Other options (opset 18): the fused checkpoint stays, both exports are made again.
    other = ArtifactChain(source, out, options=ExportOptions(opset=18)).onnx("fp16")
    assert not other.reused and read_onnx_metadata(out / "tiny.fused.onnx")["artifact_options"].count('"opset": 18')
    after = mtimes(out)
    assert after["tiny.fused.pth"] == before["tiny.fused.pth"]
    assert (
        after["tiny.fused.onnx"] != before["tiny.fused.onnx"]
        and after["tiny.fused.fp16.onnx"] != before["tiny.fused.fp16.onnx"]
    )
    # Another config for the same weights (here only its name): the exports are made again.
    renamed = ModelSource.load(source.path, TINY.replace(name="tiny_renamed"))
    assert not ArtifactChain(renamed, out, options=ExportOptions(opset=18)).onnx("fp32").reused
    # New weights under the same name: every artifact is made again.
    tiny_checkpoint(source.path, seed=1)
    new = ArtifactChain(ModelSource.load(source.path), out, options=ExportOptions(opset=18))
    assert not new.checkpoint().reused and not new.onnx("fp32").reused
    assert read_onnx_metadata(out / "tiny.fused.onnx")["source_sha256"] == sha256_file(source.path)


def test_a_damaged_artifact_is_made_again(source, tmp_path):
    out = tmp_path / "out"
    ArtifactChain(source, out).onnx("fp32")
    (out / "tiny.fused.onnx").write_bytes(b"truncated")
    (out / "tiny.fused.pth").write_bytes(b"truncated")
    chain = ArtifactChain(source, out)
    assert not chain.checkpoint().reused and not chain.onnx("fp32").reused
    assert read_onnx_metadata(out / "tiny.fused.onnx")["precision"] == "fp32"


def test_without_fusing_the_checkpoint_itself_is_exported(source, tmp_path):
    chain = ArtifactChain(source, tmp_path / "out", options=ExportOptions(fuse=False))
    artifact = chain.onnx("fp32", PostprocessConfig())
    assert artifact.path.name == "tiny.postprocess.onnx" and artifact.postprocess == "graph"
    assert chain.checkpoint().path == source.path
    assert read_onnx_metadata(artifact.path)["parent_sha256"] == sha256_file(source.path)
    with pytest.raises(PrecisionError, match="int4"):
        chain.onnx("int4")
    with pytest.raises(CalibrationError, match="calibration images"):  # INT8 without a calibration set
        chain.onnx("int8")


def test_a_cache_keeps_checkpoints_of_one_name_apart(tmp_path):
    a = ModelSource.load(tiny_checkpoint(tmp_path / "a" / "model.pth", seed=0))
    b = ModelSource.load(tiny_checkpoint(tmp_path / "b" / "model.pth", seed=1))
    cache = tmp_path / "cache"
    path_a, path_b = ArtifactChain.cached(a, cache).onnx().path, ArtifactChain.cached(b, cache).onnx().path
    assert path_a != path_b and path_a.name.startswith("model-") and path_a.name.endswith(".fused.onnx")
    assert ArtifactChain.cached(a, cache).onnx().reused


def test_export_writes_a_complete_set_or_nothing(source, tmp_path, monkeypatch):
    written = export_artifacts(source, tmp_path / "set", "model", fp16=True, postprocess=PostprocessConfig())
    assert sorted(p.path.name for p in written) == sorted(os.listdir(tmp_path / "set"))
    assert all(p.path.parent == tmp_path / "set" for p in written)
    with pytest.raises(UsageError, match="plain file name"):
        export_artifacts(source, tmp_path / "other", "../escape")

    def broken(*args, **kwargs):
        raise ExportError("simulated FP16 failure")

    monkeypatch.setattr("trt_yolact.deploy.artifacts.convert_fp16", broken)
    with pytest.raises(ExportError, match="simulated"):
        export_artifacts(source, tmp_path / "failed", "model", fp16=True)
    assert not (tmp_path / "failed").exists()  # the FP32 file made before the failure is gone too
    assert read_checkpoint(source.path).extra["iteration"] == 7  # the source is never touched


def test_a_cached_engine_is_named_by_its_batch_profile(source, tmp_path, monkeypatch):
    """A cache keeps the engines of different batch profiles apart instead of rebuilding one file for each."""
    from trt_yolact.deploy import artifacts
    from trt_yolact.deploy.tensorrt_build import BuildProfile, EngineBuildResult

    built = []

    def fake_build(onnx_path, engine_path, profile, precision, extra_metadata, tf32):
        built.append((engine_path.name, str(profile), precision, extra_metadata["config"]["name"], tf32))
        note = "timing cache x rejected" if tf32 else ""
        return EngineBuildResult(
            engine_path, engine_path, {}, reused=False, reason="built", build_seconds=1.0, timing_cache_note=note
        )

    monkeypatch.setattr(artifacts, "build_engine", fake_build)
    cached = ArtifactChain.cached(source, tmp_path / "cache")
    cached.engine("fp16", BuildProfile(1, 4, 8))
    cached.engine("fp16", BuildProfile(1, 2, 2))
    chain = ArtifactChain(source, tmp_path / "export", tmp_path / "engines")
    assert chain.engine("fp16", "1,4,8").note == "built in 1 s"
    assert chain.engine("fp32", "1,4,8", tf32=True).note == "built in 1 s; timing cache x rejected"
    digest = sha256_file(source.path)[:12]
    assert built == [
        (f"tiny-{digest}.fused.fp16.b1-4-8.engine", "1,4,8", "fp16", "tiny", False),  # TF32 off by default
        (f"tiny-{digest}.fused.fp16.b1-2-2.engine", "1,2,2", "fp16", "tiny", False),
        ("tiny.fused.fp16.engine", "1,4,8", "fp16", "tiny", False),  # build's own engine keeps its documented name
        ("tiny.fused.engine", "1,4,8", "fp32", "tiny", True),
    ]
