"""KV cache for streaming the causal DiT: S sink frames kept forever plus a rolling window of W frames.

Layout and rules (recipe.md section 2):
- Memory is preallocated once: k and v are (layers, B, heads, slots * P, head_dim) with slots = S + W and
  P tokens per frame. Shapes never change; a `valid` mask over slots says which ones are filled, so attention
  always reads every slot and masks the empty ones (friendly to CUDA graphs).
- Keys are stored BEFORE RoPE. Temporal positions are assigned at read time and are window-relative:
  sink frames get 0..S-1, window frames S.. in chronological order, the query the next position. Positions
  therefore stay below S + W + chunk however long play lasts (LongLive "infinity", Reward-Forcing port).
- Frame n (absolute) lives in slot n if n < S, else in ring slot S + (n - S) % W. Writing frame n when the
  window is full overwrites (evicts) frame n - W.
- Three modes. APPEND: the t=0 re-encode pass reads the cache and writes its own keys (stored, all layers
  at once, at `advance`). READONLY: denoising passes read the cache and write nothing. FUSED: one pass over
  [clean frame n | noisy frame n+1] that appends frame n and denoises frame n+1 as if n were already stored
  (see below).

FUSED (the re-encode of frame n folded into frame n+1's first denoising pass, Session(fuse_reencode=True)).
Queries: the clean frame at the next position q = min(n, slots), the noisy frame at q + 1. The clean frame
must see exactly what an APPEND pass would (the valid slots at their current positions); the noisy frame
exactly what a READONLY pass after that append would. Attention depends on positions only through
q_pos - k_pos (RoPE), so the noisy frame may be shifted along with its keys, and:
- without an eviction (n < slots) nothing renumbers: the noisy frame sees the valid slots and the clean frame;
- with one (n >= slots), frame n overwrites the oldest window frame, and every window frame moves one position
  closer to the query while the sink frames keep theirs. Seen from q + 1 instead of q, the window slots are
  already right; the sink slots are not, so the keys get the sink slots a second time at positions + 1, and
  the noisy frame reads that copy (and not the evicted slot) while the clean frame reads the originals.
So context keys are [slots | sink slots again] (`read_fused`), with positions and a mask from `fused_tables`.

All slot and eviction arithmetic lives in this file; the model only calls `read`, `write` and `advance` (and for
FUSED `read_fused` and `fused_tables`).

CUDA graphs (world_model/graphs.py): the frame counter exists twice, as a Python int (`position`, for the HUD,
`slot_of` and error checks) and as a device scalar (`_pos`) from which `_sync` refreshes every read-time
table with tensor ops. A captured step therefore reads and updates only fixed device buffers: it works at
every fill level and after evictions, with no host sync and no Python slot arithmetic baked into it.

The tables depend on the counter n only through its phase: n itself while the window fills (n < slots + W),
then slots + (n - slots) % W, because a full ring repeats every W frames. They are computed once per phase
at construction (`_tables_at`) and `_sync` copies the current phase's row, one copy per dtype. Why: at batch 1
a pass is launch-bound, and computing them anew took about 50 small kernels per played tick (H100: ~2.5 us
each), the student's tick paying them once in 1.5 ms, the 16-step teacher's once in 16 ms.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import Tensor


class CacheMode(enum.Enum):
    READONLY = "readonly"  # denoising passes: attend cache + current frames, write nothing
    APPEND = "append"      # t=0 re-encode pass: same attention, then store the frames' keys/values
    FUSED = "fused"        # [clean frame | noisy next frame]: store the clean one, the noisy one sees it stored


@dataclass(frozen=True)
class CacheState:
    """What the HUD shows about the cache."""
    sink_frames: int       # sink frames filled (<= sink_capacity)
    sink_capacity: int
    window_frames: int     # window frames filled (<= window_capacity)
    window_capacity: int
    newest_slot: int       # slot holding the newest frame, -1 when empty
    evictions: int         # frames dropped from the window so far
    bytes: int             # k + v storage
    position: int          # absolute frame counter: frames appended since reset (pending ones included)
    pending: int = 0       # of those, frames not yet written: re-encoded inside the next step's first pass


class KVCache:
    """Preallocated per-layer keys (pre-RoPE) and values for S sink + W window frames."""

    def __init__(self, *, layers: int, batch: int, heads: int, head_dim: int, tokens_per_frame: int,
                 sink: int, window: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        if sink < 0:
            raise ValueError(f"sink must be >= 0, got {sink}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.layers, self.batch, self.heads, self.head_dim = layers, batch, heads, head_dim
        self.tokens_per_frame, self.sink, self.window = tokens_per_frame, sink, window
        self.slots = sink + window
        shape = (layers, batch, heads, self.slots * tokens_per_frame, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self._slot_idx = torch.arange(self.slots, device=device)                      # constants
        self._tok_idx = torch.arange(self.slots * tokens_per_frame, device=device)
        self._pos = torch.zeros((), device=device, dtype=torch.long)  # `position` on the device
        self.position = 0
        self._staged: dict[int, tuple[Tensor, Tensor]] = {}           # layer -> (k, v) written, not yet stored
        # Read-time tables of every phase (module docstring), one row per phase and one tensor per dtype;
        # the current row lives in fixed buffers that _sync overwrites, and the tables are views into them.
        rows = [self._tables_at(torch.tensor(n, device=device)) for n in range(self.slots + window)]
        self._lut = [torch.stack(col) for col in zip(*rows)]                          # 3 x (phases, width)
        self._cur = [t[0].clone() for t in self._lut]
        self._bind_views()
        self._sync()

    def _bind_views(self) -> None:
        """The named tables as views into the current-row buffers (layout of `_tables_at`)."""
        S, N, P = self.sink, self.slots, self.tokens_per_frame
        b, f, i = self._cur
        self.valid = b[:N]                                                   # (slots,) bool
        self._fused_mask = b[N:].view(2, N + S)                              # (2, slots + S) bool
        self.slot_pos = f[:N]                                                # (slots,) temporal position
        self._query_pos = f[N:2 * N]                                         # (slots,) next positions
        self._fused_q = f[2 * N:2 * N + 2]                                   # (2,)
        self._fused_key_pos = f[2 * N + 2:]                                  # (slots + S,)
        self._write_tok = i[:N * P]                                          # (slots * P,) token slots to write
        self._next_slot = i[N * P]                                           # () slot the next frame goes to

    # ---- slot arithmetic (all of it; unit-tested) ----

    def slot_of(self, frame: int) -> int:
        """Slot that holds (or will hold) absolute frame `frame`."""
        return frame if frame < self.sink else self.sink + (frame - self.sink) % self.window

    @property
    def next_position(self) -> int:
        """Position given to the next query frame (right after the newest stored frame)."""
        return min(self.position, self.slots)

    @property
    def evictions(self) -> int:
        return max(0, self.position - self.slots)

    def frames_in_slots(self, n: Tensor | None = None) -> Tensor:
        """(slots,) absolute frame held by each slot after n frames (default: now), -1 where empty. Ring slot
        j holds the frames sink + j + k * W; the newest such frame below n is the one still there."""
        S, W = self.sink, self.window
        n = self._pos if n is None else n                     # a device scalar: no host value used
        slot = self._slot_idx
        last = n - 1 - slot                                   # ring: (n - 1 - S - j) with j = slot - S
        ring = slot + W * torch.div(last, W, rounding_mode="floor")
        frame = torch.where(slot < S, slot, torch.where(last >= 0, ring, -1))
        return torch.where((slot < S) & (slot >= n), -1, frame)

    def frame_in_slot(self, slot: int) -> int:
        return int(self.frames_in_slots()[slot])

    def _tables_at(self, n: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every read-time table for counter n (a device scalar), packed by dtype: bool [valid | FUSED mask],
        float [slot positions | query positions | FUSED query positions | FUSED key positions], long
        [token write indices | next slot]. Window positions are S + (frame - oldest window frame); the next
        frame goes to slot_of(n). FUSED (module docstring): keys [slots | sink slots again]."""
        S, W = self.sink, self.window
        frame = self.frames_in_slots(n)
        oldest = (n - W).clamp_min(S)
        valid = frame >= 0
        slot_pos = torch.where(valid, torch.where(frame < S, frame, S + frame - oldest), 0).float()
        query_pos = (n.clamp_max(self.slots) + self._slot_idx).float()
        next_slot = torch.where(n < S, n, S + (n - S).remainder(W))
        write_tok = next_slot * self.tokens_per_frame + self._tok_idx
        evicting = n >= self.slots                                # frame n overwrites the oldest window frame
        moved_sink = (self._slot_idx < S) & evicting              # sink slots the noisy frame reads from the copy
        noisy = valid & (self._slot_idx != next_slot) & ~moved_sink                                 # (slots,)
        mask = torch.stack([torch.cat([valid, torch.zeros_like(valid[:S])]),                         # clean
                            torch.cat([noisy, valid[:S] & evicting])])                               # noisy
        fused_q = query_pos[:1] + torch.arange(2, device=n.device)
        key_pos = torch.cat([slot_pos, slot_pos[:S] + 1])
        return (torch.cat([valid, mask.flatten()]), torch.cat([slot_pos, query_pos, fused_q, key_pos]),
                torch.cat([write_tok, next_slot[None]]))

    def _sync(self) -> None:
        """Copy the tables of the counter's phase into the current-row buffers: tensor ops only (no host
        round trip; capturable)."""
        n, N = self._pos, self.slots
        phase = torch.where(n < N, n, N + (n - N).remainder(self.window)).view(1)
        for cur, lut in zip(self._cur, self._lut):
            torch.index_select(lut, 0, phase, out=cur.view(1, -1))   # (lut[phase] would read phase on the host)

    # ---- what the model calls ----

    def query_positions(self, frames: int) -> Tensor:
        """Temporal positions (frames,) for `frames` query frames that follow the stored ones."""
        return self._query_pos[:frames]

    def fused_tables(self) -> tuple[Tensor, Tensor, Tensor]:
        """For a FUSED pass (module docstring): query positions (2,) of the clean and the noisy frame,
        context key positions (slots + S,) and context mask (2, slots + S) over [slots | sink slots again].
        Views of the current tables (`_tables_at`)."""
        return self._fused_q, self._fused_key_pos, self._fused_mask

    def read(self, layer: int) -> tuple[Tensor, Tensor]:
        """All slots of one layer, pre-RoPE: k, v each (B, heads, slots * P, head_dim). Mask with `valid`."""
        return self.k[layer], self.v[layer]

    def read_fused(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """FUSED keys [slots | sink slots again | the pass's own k, v (B, heads, N, head_dim)], pre-RoPE, in k's
        dtype, one concatenation each: (B, heads, (slots + S) * P + N, head_dim). Positions and mask of the
        cache part from `fused_tables`."""
        sink = self.sink * self.tokens_per_frame
        ck, cv = self.k[layer].to(k.dtype), self.v[layer].to(v.dtype)
        return torch.cat([ck, ck[:, :, :sink], k], dim=2), torch.cat([cv, cv[:, :, :sink], v], dim=2)

    def check_append(self, frames: int) -> None:
        """A chunk of several frames may be appended only while nothing gets evicted, because its frames
        attend to each other directly and would otherwise see more context than streaming would give them."""
        if frames > 1 and self.position + frames > self.slots:
            raise ValueError(f"cannot append {frames} frames at once at position {self.position} "
                             f"(capacity {self.slots}); append one frame at a time once the window rolls")

    def write(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Stage the pre-RoPE keys/values (B, heads, frames * P, head_dim) of the frames being appended; the
        next `advance` stores every layer's at once. Why: one copy for all layers instead of one per layer
        and tensor (16 small kernels for the shipped 8 layers, in every played tick). Until then the cache
        reads as before the pass, which is what every layer of the pass must see anyway."""
        self._staged[layer] = (k, v)

    def _store_staged(self) -> None:
        """Store the staged keys/values (`write`) at the slots of the frames being appended."""
        if not self._staged:
            return
        n = next(iter(self._staged.values()))[0].shape[2]
        idx = self._write_tok[:n]
        if len(self._staged) == self.layers:                   # all layers: one stack and one copy each
            for store, j in ((self.k, 0), (self.v, 1)):
                new = torch.stack([self._staged[i][j] for i in range(self.layers)])  # (layers, B, H, n, Dh)
                store.index_copy_(3, idx, new.to(store.dtype))
        else:
            for layer, (k, v) in self._staged.items():
                self.k[layer].index_copy_(2, idx, k.to(self.k.dtype))
                self.v[layer].index_copy_(2, idx, v.to(self.v.dtype))
        self._staged.clear()

    def advance(self, frames: int) -> None:
        """Commit `frames` appended frames (after every layer has written them)."""
        self.advance_host(frames)
        self.advance_device(frames)

    def advance_host(self, frames: int) -> None:
        """The Python half of `advance`: the counter the HUD and the checks read."""
        self.position += frames

    def advance_device(self, frames: int) -> None:
        """The device half of `advance`: counter and tables. No host values, so a CUDA graph can capture it
        (graphs.py replays it and calls `advance_host` itself)."""
        self._store_staged()
        self._pos.add_(frames)
        self._sync()

    # ---- lifecycle ----

    def reset(self) -> None:
        """Forget every frame. Storage is kept; stale values are masked out by `valid`."""
        self.position = 0
        self._staged.clear()
        self._pos.zero_()
        self._sync()

    def clone(self) -> "KVCache":
        """Deep copy (for savestates)."""
        other = KVCache.__new__(KVCache)
        other.__dict__.update(self.__dict__)       # the per-phase tables are constants: shared
        for name in ("k", "v", "_pos"):
            setattr(other, name, getattr(self, name).clone())
        other._staged = dict(self._staged)
        other._cur = [t.clone() for t in self._cur]
        other._bind_views()
        return other

    def copy_from(self, other: "KVCache") -> None:
        """Restore `other`'s contents into this cache's preallocated storage."""
        if other.k.shape != self.k.shape:
            raise ValueError(f"cache shape {tuple(other.k.shape)} does not match {tuple(self.k.shape)}")
        self.k.copy_(other.k)
        self.v.copy_(other.v)
        self.position = other.position
        self._pos.copy_(other._pos)
        self._sync()

    def state(self, pending: int = 0) -> CacheState:
        """What the HUD shows: the cache as it will be once `pending` produced-but-not-yet-written frames
        are in (a fused session writes each frame during the next step), so the HUD reads the same with or
        without fusion; `pending` says how many of those frames are still to be written."""
        n = self.position + pending
        return CacheState(
            sink_frames=min(n, self.sink),
            sink_capacity=self.sink,
            window_frames=min(max(n - self.sink, 0), self.window),
            window_capacity=self.window,
            newest_slot=self.slot_of(n - 1) if n > 0 else -1,
            evictions=max(0, n - self.slots),
            bytes=self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size(),
            position=n,
            pending=pending,
        )
