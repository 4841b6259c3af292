"""Recycled host memory for full-resolution masks.

A batch's full-resolution masks are tens of megabytes of booleans that are almost all zero. Fresh memory
costs its zeroing (a memset, or a page fault per page on first touch) every batch, which is more than the
windowed upsampling that then writes only each mask's window. :class:`MaskMemory` hands out zeroed
masks and takes their memory back once nothing made from them is alive any more; a recycled block only
clears the windows written into it last time.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

Window = tuple[int, int, int, int]  # rows y0:y1, columns x0:x1 of one mask


@dataclass
class _Block:
    """One flat buffer, zero everywhere except the windows it was last handed out with."""

    buffer: np.ndarray  # bool, flat
    shape: tuple[int, int, int] = (0, 0, 0)  # of the last hand-out
    windows: list[Window] = field(default_factory=list)  # per mask of the last hand-out
    holder: weakref.ref | None = None  # the array last handed out: the block is free once it is gone

    def is_free(self) -> bool:
        return self.holder is None or self.holder() is None

    def clear(self) -> None:
        """Zero the windows of the last hand-out, so that the whole buffer is zero again."""
        view = self.buffer[: int(np.prod(self.shape))].reshape(self.shape)
        for mask, (y0, y1, x0, x1) in zip(view, self.windows):
            mask[y0:y1, x0:x1] = False
        self.windows = []


@dataclass
class MaskMemory:
    """Zeroed bool masks ``[count, height, width]`` on the CPU, in memory recycled from masks the caller has
    dropped.

    Masks are handed out for writing only inside the given windows: they are what gets cleared when their
    memory comes back. It comes back only once the tensor, every view of it and every NumPy array made from
    those are gone: masks a caller keeps are never overwritten. Safe to share between threads.

    Args:
        max_bytes: memory kept for reuse; beyond it, masks are handed out in fresh memory, not recycled.
    """

    max_bytes: int = 512 * 2**20
    _blocks: list[_Block] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def kept_bytes(self) -> int:
        return sum(block.buffer.nbytes for block in self._blocks)

    def zeros(self, shape: tuple[int, int, int], windows: list[Window]) -> torch.Tensor:
        """An all-False CPU bool tensor of ``shape`` (masks, height, width); ``windows[d]`` bounds what the
        caller will write into mask ``d``.

        Returns:
            A contiguous tensor; its memory is recycled once it, its views and the NumPy arrays made from them
            (``.numpy()``) are all gone.
        """
        if len(windows) != shape[0]:
            raise ValueError(f"{len(windows)} windows for {shape[0]} masks")
        size = int(np.prod(shape))
        with self._lock:
            block = self._free_block(size) or self._new_block(size)
            if block is None:  # over budget: plain memory, freed with the caller's tensors
                return torch.zeros(shape, dtype=torch.bool)
            block.clear()
            # Every tensor made from this array (and every view of those) keeps it alive, while NumPy views
            # would point at the block's buffer instead: only a tensor leaves here.
            array = block.buffer[:size].reshape(shape)
            block.shape, block.windows, block.holder = shape, list(windows), weakref.ref(array)
            return torch.from_numpy(array)

    def _free_block(self, size: int) -> _Block | None:
        """The smallest free block that holds ``size`` elements, or None."""
        fitting = [b for b in self._blocks if b.buffer.size >= size and b.is_free()]
        return min(fitting, key=lambda b: b.buffer.size, default=None)

    def _new_block(self, size: int) -> _Block | None:
        """A new block of ``size`` elements within the budget (dropping free blocks to make room), or None."""
        free = sorted((b for b in self._blocks if b.is_free()), key=lambda b: b.buffer.size)
        while free and self.kept_bytes + size > self.max_bytes:
            self._blocks.remove(free.pop())
        if self.kept_bytes + size > self.max_bytes:
            return None
        block = _Block(np.zeros(size, dtype=np.bool_))
        self._blocks.append(block)
        return block
