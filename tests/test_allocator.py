"""Freed CPU memory stays in the process for the next inference call (glibc)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Allocate and touch 256 MiB as tensors of an activation's size, free them, and report how much of it is
# still resident (MiB). Run in a fresh interpreter: the allocator setting is process-wide.
_PROBE = """
import sys, torch
from trt_yolact.runtime.allocator import keep_freed_memory
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
if sys.argv[1] == 'reuse':
    assert keep_freed_memory()
before = rss()
blocks = [torch.ones(8 * 2**20) for _ in range(8)]
peak = rss()
del blocks
print(peak - before, rss() - before)
"""


def _resident_after_free(mode: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True, capture_output=True, text=True)
    grown, kept = map(float, out.stdout.split())
    return grown, kept


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux)")
def test_freed_activations_stay_resident_for_reuse():
    grown, kept = _resident_after_free("default")
    assert grown > 200 and kept < 50, "glibc's default: large blocks go back to the OS on free"
    grown, kept = _resident_after_free("reuse")
    assert grown > 200 and kept > 200, "with reuse the freed blocks stay in the heap for the next call"


def test_torch_runner_applies_it_on_the_cpu_only_when_asked(monkeypatch):
    from trt_yolact.config import BackboneConfig, YolactConfig
    from trt_yolact.model.yolact import Yolact
    from trt_yolact.runtime import torch_runner

    tiny = YolactConfig(
        name="tiny",
        backbone=BackboneConfig(layers=(1, 1, 1, 1), widths=(8, 8, 8, 8), stem_channels=8),
        max_size=64,
        class_names=("a",),
        category_ids=(1,),
        fpn_channels=8,
        proto_channels=8,
        head_channels=8,
        mask_dim=4,
    )
    calls = []
    monkeypatch.setattr(torch_runner, "keep_freed_memory", lambda: calls.append(1) or True)
    torch_runner.TorchRunner(Yolact(tiny), "cpu", reuse_freed_memory=False)
    assert calls == []
    torch_runner.TorchRunner(Yolact(tiny), "cpu")
    assert calls == [1]
