"""Training data on the device: collector -> frozen autoencoder -> ClipBuffers of latents.

The parallel collector plays E1M1 in worker processes; each chunk is encoded with the frozen autoencoder
and appended to a ClipBuffer on the training device, from which random clips are drawn. Chunks of worker 0
go to a separate held-out buffer (its own seed and policy variation). Nothing is stored on disk: the GPU
machine starts empty. Shared by the teacher and distillation recipes.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

import torch

from world_model.autoencoder import Autoencoder, frames_to_model
from world_model.collect import CollectConfig, Collector
from world_model.data import ClipBuffer, PairBuffer
from world_model.recipes.common import autocast


@dataclass(frozen=True)
class DataConfig:
    collect: CollectConfig = CollectConfig(workers=14)
    seed: int = 1
    buffer_frames: int = field(default=400_000, metadata={"min": 64})   # latents on the device
    heldout_frames: int = field(default=8_192, metadata={"min": 64})
    min_fill: int = field(default=20_000, metadata={"min": 16})
    encode_batch: int = field(default=256, metadata={"min": 1})
    max_chunks_per_step: int = field(default=4, metadata={"min": 1})    # data drained between steps
    pair_capacity: int = field(default=4096, metadata={"min": 1})       # fork pairs kept (collect.fork.share > 0)
    min_pairs: int = field(default=256, metadata={"min": 1})            # in the training pair buffer before step 1


class Feeder:
    """Collector -> autoencoder -> ClipBuffers (training and held-out), on the training device."""

    def __init__(self, cfg: DataConfig, ae: Autoencoder, device: torch.device, rank: int = 0, world: int = 1):
        self.cfg, self.ae, self.device = cfg, ae, device
        workers = max(2, cfg.collect.workers // world)
        self.collector = Collector(replace(cfg.collect, workers=workers), seed=cfg.seed * 1000 + rank)
        _keep_off_worker_cores(workers * world)
        shape = ae.latent_shape
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.train = ClipBuffer(cfg.buffer_frames, shape, dtype, device)
        self.heldout = ClipBuffer(cfg.heldout_frames, shape, dtype, device)
        # Fork pairs (collect.fork.share > 0) go to their own buffers, never into clip sampling: each pair is
        # drawn whole, for the pair loss (losses.py). Worker 0's pairs are held out like its clips.
        self.forks = cfg.collect.fork.share > 0
        clip = cfg.collect.fork.clip
        self.train_pairs = PairBuffer(cfg.pair_capacity if self.forks else 1, clip, shape, dtype, device)
        self.heldout_pairs = PairBuffer(max(1, cfg.pair_capacity // 16) if self.forks else 1, clip, shape, dtype, device)
        self.frames = 0

    @torch.no_grad()
    def _add(self, chunk) -> None:
        frames = torch.from_numpy(chunk.frames).to(self.device, non_blocking=True)
        z = []
        for i in range(0, len(frames), self.cfg.encode_batch):
            with autocast(self.device):
                z.append(self.ae.encode(frames_to_model(frames[i:i + self.cfg.encode_batch])).float())
        z = torch.cat(z)                                                      # (N, C, h, w)
        actions = torch.from_numpy(chunk.actions)
        if chunk.forks:
            (self.heldout_pairs if chunk.worker == 0 else self.train_pairs).add(z, actions)
        else:
            (self.heldout if chunk.worker == 0 else self.train).add(z, actions, chunk.starts)
        self.frames += len(z)

    def drain(self, limit: int | None = None) -> None:
        """Take up to `limit` (default: the configured max_chunks_per_step) ready chunks without waiting."""
        for _ in range(self.cfg.max_chunks_per_step if limit is None else limit):
            chunk = self.collector.poll()
            if chunk is None:
                return
            self._add(chunk)

    def fill(self, frames: int, log=print) -> None:
        t0 = time.perf_counter()
        def short() -> bool:
            pairs_short = self.forks and (len(self.train_pairs) < self.cfg.min_pairs or len(self.heldout_pairs) == 0)
            return len(self.train) < frames or len(self.heldout) < min(self.heldout.capacity, 512) or pairs_short
        while short():
            self._add(self.collector.next())
        pairs = f", {len(self.train_pairs)} / {len(self.heldout_pairs)} fork pairs" if self.forks else ""
        log(f"buffer filled: {len(self.train)} train / {len(self.heldout)} held-out latents{pairs} "
            f"in {time.perf_counter() - t0:.1f} s")

    def close(self) -> None:
        self.collector.close()


def _keep_off_worker_cores(busy: int) -> None:
    """Collector workers pin themselves to the first cores; keep this process (which must launch
    GPU kernels without waiting for a core) and its torch threads on the rest, where there are any."""
    if not hasattr(os, "sched_getaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    free = cpus[busy:]
    if free:
        os.sched_setaffinity(0, set(free))
        torch.set_num_threads(len(free))
