"""Recycled full-resolution mask memory: reused only once dropped, always handed out all-False."""

import gc

import torch
from test_postprocess import random_raw as raw_outputs

from trt_yolact.config import PostprocessConfig
from trt_yolact.inference.mask_memory import MaskMemory
from trt_yolact.inference.postprocess import postprocess

SIZES = [(57, 70), (57, 70), (40, 33)]


def random_raw(seed: int):
    return raw_outputs(seed, batch=3, priors=90, classes=5, proto=17)


def masks_of(detections) -> list[torch.Tensor]:
    return [d.masks for d in detections]


def test_dropped_masks_are_recycled_and_cleared():
    """A second batch reuses the first's memory, and its masks equal fresh ones: the first batch's windows
    were cleared (other boxes, so stale pixels would show)."""
    memory, cfg = MaskMemory(), PostprocessConfig()
    first = postprocess(random_raw(1), SIZES, cfg, memory)
    assert all(m.any() for m in masks_of(first))
    pointers = {m.data_ptr() for m in masks_of(first)}
    del first
    second = postprocess(random_raw(2), SIZES, cfg, memory)
    assert {m.data_ptr() for m in masks_of(second)} & pointers, "no memory was reused"
    for recycled, fresh in zip(masks_of(second), masks_of(postprocess(random_raw(2), SIZES, cfg))):
        assert torch.equal(recycled, fresh)


def test_masks_still_held_are_never_overwritten():
    """Masks, a view of them or a NumPy array made from them keep their memory out of reuse."""
    memory, cfg = MaskMemory(), PostprocessConfig()
    first = postprocess(random_raw(1), SIZES, cfg, memory)
    kept = [first[0].masks, first[1].masks[1:], first[2].masks.numpy()]
    expected = [torch.as_tensor(k).clone() for k in kept]
    del first
    gc.collect()
    for seed in (2, 3):
        later = postprocess(random_raw(seed), SIZES, cfg, memory)
        held = {torch.as_tensor(k).untyped_storage().data_ptr() for k in kept}
        assert not held & {m.untyped_storage().data_ptr() for m in masks_of(later)}
    for k, e in zip(kept, expected):
        assert torch.equal(torch.as_tensor(k), e)


def test_budget_bounds_what_is_kept():
    """Beyond ``max_bytes`` arrays are fresh and not kept; free blocks are reused, or dropped to make room."""
    whole = lambda count: [(0, 5, 0, 6)] * count  # noqa: E731
    assert not MaskMemory(max_bytes=0).zeros((2, 5, 6), whole(2)).any()
    memory = MaskMemory(max_bytes=100)
    a = memory.zeros((2, 5, 6), whole(2)).fill_(True)
    b = memory.zeros((1, 5, 6), whole(1))  # a is held: a new block, within the budget
    assert memory.kept_bytes == 90 and a.all() and not b.any()
    pointer = a.data_ptr()
    del a
    c = memory.zeros((2, 5, 6), whole(2))  # a's block, cleared
    assert c.data_ptr() == pointer and not c.any() and memory.kept_bytes == 90
    c.fill_(True)
    d = memory.zeros((3, 5, 6), whole(3))  # nothing free, no room: fresh memory, not kept
    assert not d.any() and memory.kept_bytes == 90
    del c
    e = memory.zeros((3, 5, 6), whole(3))  # c's free block is too small: dropped, still no room
    assert not e.any() and memory.kept_bytes == 30


def test_window_count_must_match():
    memory = MaskMemory()
    try:
        memory.zeros((2, 4, 4), [(0, 1, 0, 1)])
    except ValueError as exc:
        assert "1 windows for 2 masks" in str(exc)
    else:
        raise AssertionError("a mismatched window list was accepted")
