"""Clip sampling for training: a ring buffer fed by the collector.

Frames (or their latents) arrive in chunks from many workers. A clip is `clip_len` consecutive
ticks of one worker's play that crosses no episode start, so each chunk boundary is also a clip
boundary. The buffer lives on any torch device: the teacher recipe keeps latents on the GPU.

Clips may be drawn with more weight where the forward input breaks with the motion (`forward_breaks`):
Doom's walking has momentum, so on most ticks the context frames already show where the view goes and a
model can learn to ignore the forward input (docs/DATA.md). The ticks where it cannot are rare, and they are
what the action-response probes ask.
"""
from __future__ import annotations

import numpy as np
import torch


def forward_breaks(forward: np.ndarray, starts: np.ndarray, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per tick of one stream, (reversal, start_from_rest) flags (N,) bool: |forward| >= 0.5 against the sign
    of the previous k ticks' mean forward (itself >= 0.2 in size), or after k ticks of rest (|forward| < 0.05).
    A tick needs k ticks of history inside its episode: the first k of a stream and the k ticks from an episode
    start (`starts`) on are never flagged. forward (N,) float, starts (N,) bool."""
    n = len(forward)
    rev, start = np.zeros(n, bool), np.zeros(n, bool)
    if n <= k:
        return rev, start
    f = np.asarray(forward, np.float64)
    csum = np.concatenate([[0.0], np.cumsum(f)])
    mean = (csum[k:n] - csum[:n - k]) / k                                # mean of f[t-k:t] for t = k..n-1
    rest = np.concatenate([[0], np.cumsum(np.abs(f) >= 0.05)])
    still = (rest[k:n] - rest[:n - k]) == 0                              # all of f[t-k:t] at rest
    st = np.concatenate([[0], np.cumsum(np.asarray(starts, bool))])
    clean = (st[k + 1:n + 1] - st[1:n - k + 1]) == 0                     # no episode start in (t-k, t]
    now = f[k:]
    strong = np.abs(now) >= 0.5
    rev[k:] = clean & strong & (np.abs(mean) >= 0.2) & (np.sign(now) != np.sign(mean))
    start[k:] = clean & strong & still
    return rev, start


def clips_with_breaks(breaks: np.ndarray, starts: np.ndarray, clip_len: int) -> np.ndarray:
    """For clip starts i (K,) into per-tick break flags (N,) bool, whether a forward break falls on one of the
    clip's frames 1..clip_len-1 (a break on frame 0 has no context in the clip to break with)."""
    c = np.concatenate([[0], np.cumsum(breaks)])
    return (c[starts + clip_len] - c[starts + 1]) > 0


class ClipBuffer:
    def __init__(self, capacity: int, item_shape: tuple[int, ...], dtype: torch.dtype = torch.uint8,
                 device: str | torch.device = "cpu", action_dim: int = 5):
        self.capacity = capacity
        self.items = torch.empty((capacity, *item_shape), dtype=dtype, device=device)   # (N, ...)
        self.actions = torch.zeros((capacity, action_dim), dtype=torch.float32, device=device)
        self.boundary = np.ones(capacity, dtype=bool)   # True: a clip may start here but not run through
        self.valid = np.zeros(capacity, dtype=bool)
        self.breaks = np.zeros(capacity, dtype=bool)   # forward_breaks (either kind), within each chunk
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
        rev, begin = forward_breaks(actions[:, 0].float().cpu().numpy(), starts)
        self.breaks[sl] = rev | begin
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

    def with_breaks(self, starts: np.ndarray, clip_len: int) -> np.ndarray:
        return clips_with_breaks(self.breaks, starts, clip_len)

    def sample(self, batch: int, clip_len: int, rng: np.random.Generator, break_weight: float = 1.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random clips: items (B, T, ...), actions (B, T, 5). With break_weight w != 1 a clip that holds a
        forward break is drawn w times as often as one that does not."""
        starts = self.starts_for(clip_len)
        if len(starts) == 0:
            raise RuntimeError(f"no clip of {clip_len} ticks in the buffer yet ({len(self)} items)")
        p = None
        if break_weight != 1.0:
            w = np.where(self.with_breaks(starts, clip_len), break_weight, 1.0)
            p = w / w.sum()
        pick = torch.as_tensor(rng.choice(starts, size=batch, p=p), device=self.items.device)
        idx = pick[:, None] + torch.arange(clip_len, device=self.items.device)[None]   # (B, T)
        return self.items[idx], self.actions[idx]


class PairBuffer:
    """Fork pairs (world_model/forks.py) on the training device: a ring of `capacity` pairs of clips."""

    def __init__(self, capacity: int, clip_len: int, item_shape: tuple[int, ...], dtype: torch.dtype = torch.uint8,
                 device: str | torch.device = "cpu", action_dim: int = 5):
        self.capacity, self.clip_len = capacity, clip_len
        self.items = torch.empty((capacity, 2, clip_len, *item_shape), dtype=dtype, device=device)
        self.actions = torch.zeros((capacity, 2, clip_len, action_dim), dtype=torch.float32, device=device)
        self.head = 0
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, items: torch.Tensor, actions: torch.Tensor) -> None:
        """One fork chunk: items (N, ...), actions (N, 5), N = pairs x 2 x clip_len, pair by pair."""
        per = 2 * self.clip_len
        if len(items) % per:
            raise ValueError(f"a fork chunk of {len(items)} ticks is not whole pairs of {self.clip_len}-tick clips")
        items = items.reshape(-1, 2, self.clip_len, *items.shape[1:])                # (n, 2, T, ...)
        actions = actions.reshape(-1, 2, self.clip_len, actions.shape[-1])
        for j in range(len(items)):
            self.items[self.head] = items[j].to(self.items.device, self.items.dtype)
            self.actions[self.head] = actions[j].to(self.actions.device, torch.float32)
            self.head = (self.head + 1) % self.capacity
            self.count = min(self.count + 1, self.capacity)

    def sample(self, pairs: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random pairs: items (P, 2, T, ...), actions (P, 2, T, 5)."""
        if self.count == 0:
            raise RuntimeError("no fork pair in the buffer yet")
        pick = torch.as_tensor(rng.integers(0, self.count, size=pairs), device=self.items.device)
        return self.items[pick], self.actions[pick]
