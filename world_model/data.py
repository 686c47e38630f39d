"""Clip sampling for training: a ring buffer fed by the collector.

Frames (or their latents) arrive in chunks from many workers. A clip is `clip_len` consecutive
ticks of one worker's play that crosses no episode start, so each chunk boundary is also a clip
boundary. The buffer lives on any torch device: the teacher recipe keeps latents on the GPU.
"""
from __future__ import annotations

import numpy as np
import torch


class ClipBuffer:
    def __init__(self, capacity: int, item_shape: tuple[int, ...], dtype: torch.dtype = torch.uint8,
                 device: str | torch.device = "cpu", action_dim: int = 5):
        self.capacity = capacity
        self.items = torch.empty((capacity, *item_shape), dtype=dtype, device=device)   # (N, ...)
        self.actions = torch.zeros((capacity, action_dim), dtype=torch.float32, device=device)
        self.boundary = np.ones(capacity, dtype=bool)   # True: a clip may start here but not run through
        self.valid = np.zeros(capacity, dtype=bool)
        self.head = 0
        self.added = 0

    def __len__(self) -> int:
        return int(self.valid.sum())

    def add(self, items: torch.Tensor, actions: torch.Tensor, starts: np.ndarray) -> None:
        """Append one chunk: items (N, ...), actions (N, 5), starts (N,) episode starts."""
        n = len(starts)
        if n > self.capacity:
            raise ValueError(f"chunk of {n} does not fit a buffer of {self.capacity}")
        if self.head + n > self.capacity:     # never wrap inside a chunk: drop the tail instead
            self.valid[self.head:] = False
            self.head = 0
        sl = slice(self.head, self.head + n)
        self.items[sl] = items.to(self.items.device, self.items.dtype)
        self.actions[sl] = actions.to(self.actions.device, torch.float32)
        self.boundary[sl] = starts
        self.boundary[self.head] = True           # a new chunk: another worker's stream
        self.valid[sl] = True
        self.head += n
        self.added += n
        if self.head < self.capacity:
            self.boundary[self.head] = True       # the oldest data after the head is a different stream

    def starts_for(self, clip_len: int) -> np.ndarray:
        """Indices i where [i, i + clip_len) is valid and crosses no boundary after i."""
        n = self.capacity - clip_len + 1
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        inner = np.concatenate([[0], np.cumsum(self.boundary[1:].astype(np.int32))])
        crossings = inner[clip_len - 1: clip_len - 1 + n] - inner[:n]
        ok_valid = np.concatenate([[0], np.cumsum(~self.valid)])
        invalid = ok_valid[clip_len: clip_len + n] - ok_valid[:n]
        return np.flatnonzero((crossings == 0) & (invalid == 0))

    def sample(self, batch: int, clip_len: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random clips: items (B, T, ...), actions (B, T, 5)."""
        starts = self.starts_for(clip_len)
        if len(starts) == 0:
            raise RuntimeError(f"no clip of {clip_len} ticks in the buffer yet ({len(self)} items)")
        pick = torch.as_tensor(rng.choice(starts, size=batch), device=self.items.device)
        idx = pick[:, None] + torch.arange(clip_len, device=self.items.device)[None]   # (B, T)
        return self.items[idx], self.actions[idx]
