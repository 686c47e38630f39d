"""KVCache slot, position and eviction arithmetic, checked against a plain list model of sink + window."""
import pytest
import torch

from world_model.kv_cache import KVCache

P = 3  # tokens per frame


def make(sink: int, window: int, batch: int = 1, layers: int = 2) -> KVCache:
    return KVCache(layers=layers, batch=batch, heads=2, head_dim=4, tokens_per_frame=P, sink=sink, window=window)


def expected(n: int, sink: int, window: int) -> tuple[list[int], list[int]]:
    """After n appended frames: the frames kept (sink first, then window oldest first) and their positions."""
    kept_sink = list(range(min(n, sink)))
    kept_window = list(range(max(sink, n - window), n))
    return kept_sink + kept_window, list(range(len(kept_sink) + len(kept_window)))


def append_frame(cache: KVCache, frame: int) -> None:
    """Write a frame whose keys and values all equal its frame id, in every layer."""
    k = torch.full((cache.batch, cache.heads, P, cache.head_dim), float(frame))
    for layer in range(cache.layers):
        cache.write(layer, k, -k)
    cache.advance(1)


@pytest.mark.parametrize("sink,window", [(0, 1), (0, 4), (1, 3), (2, 2), (3, 5)])
def test_slots_positions_and_state_follow_sink_plus_window(sink, window):
    cache = make(sink, window)
    for n in range(1, 4 * (sink + window) + 3):
        append_frame(cache, n - 1)
        frames, positions = expected(n, sink, window)
        # What is stored: read the values back slot by slot and keep the valid ones.
        k, v = cache.read(1)
        stored = {}
        for slot in range(cache.slots):
            if cache.valid[slot]:
                frame = int(k[0, 0, slot * P, 0])
                assert torch.all(k[:, :, slot * P:(slot + 1) * P] == frame)
                assert torch.all(v[:, :, slot * P:(slot + 1) * P] == -frame)
                assert cache.frame_in_slot(slot) == frame
                stored[frame] = int(cache.slot_pos[slot])
            else:
                assert cache.frame_in_slot(slot) == -1
        assert sorted(stored) == frames
        assert [stored[f] for f in frames] == positions            # window-relative, chronological
        assert int(cache.query_positions(1)[0]) == len(frames)     # the query comes right after
        s = cache.state()
        assert s.position == n
        assert s.sink_frames == min(n, sink) and s.sink_capacity == sink
        assert s.window_frames == len(frames) - min(n, sink) and s.window_capacity == window
        assert s.evictions == max(0, n - sink - window)
        assert cache.frame_in_slot(s.newest_slot) == n - 1
        assert max(positions) < sink + window                      # bounded however long play lasts


def test_empty_cache_state_and_bytes():
    cache = make(1, 3)
    s = cache.state()
    assert (s.position, s.sink_frames, s.window_frames, s.newest_slot, s.evictions) == (0, 0, 0, -1, 0)
    assert not cache.valid.any()
    assert s.bytes == 2 * 2 * 1 * 2 * (4 * P) * 4 * 4  # k+v, layers, batch, heads, tokens, head_dim, fp32


def test_multi_frame_append_refused_once_it_would_evict():
    cache = make(1, 3)
    cache.check_append(4)                   # fills exactly: allowed
    for f in range(3):
        append_frame(cache, f)
    cache.check_append(1)                   # single frames always allowed
    with pytest.raises(ValueError, match="one frame at a time"):
        cache.check_append(2)


def test_multi_frame_write_lands_in_consecutive_slots():
    cache = make(2, 4)
    k = torch.arange(3.0).repeat_interleave(P)[None, None, :, None].expand(1, 2, 3 * P, 4)  # frames 0, 1, 2
    cache.write(0, k, k)
    cache.advance(3)
    assert [cache.frame_in_slot(s) for s in range(6)] == [0, 1, 2, -1, -1, -1]
    assert torch.equal(cache.read(0)[0][:, :, :3 * P], k)


def test_reset_clone_and_copy_from():
    cache = make(1, 2)
    for f in range(5):
        append_frame(cache, f)
    twin = cache.clone()
    append_frame(cache, 5)
    assert twin.position == 5 and cache.position == 6
    assert not torch.equal(twin.k, cache.k)  # clone owns its storage
    storage = cache.k.data_ptr()
    cache.copy_from(twin)
    assert cache.position == 5 and torch.equal(cache.k, twin.k) and torch.equal(cache.slot_pos, twin.slot_pos)
    assert cache.k.data_ptr() == storage    # restored in place: preallocated memory is kept
    cache.reset()
    assert cache.position == 0 and not cache.valid.any() and cache.state().evictions == 0


@pytest.mark.parametrize("sink,window", [(-1, 3), (1, 0)])
def test_bad_sizes_rejected(sink, window):
    with pytest.raises(ValueError):
        make(sink, window)


def test_writes_are_stored_at_advance_all_layers_at_once():
    """`write` stages; `advance` stores every layer's keys and values (one copy for all layers), so a pass
    that overwrites an evicted slot reads the old frame in every layer until it is done."""
    cache = make(1, 2, layers=3)
    for f in range(3):                                   # full: the next frame evicts frame 1 from slot 1
        append_frame(cache, f)
    slot = cache.slot_of(3)
    k = torch.full((1, 2, P, 4), 3.0)
    for layer in range(3):
        cache.write(layer, k * (layer + 1), -k)
        assert int(cache.read(layer)[0][0, 0, slot * P, 0]) == 1        # still frame 1's, in every layer
    cache.advance(1)
    for layer in range(3):
        assert torch.equal(cache.read(layer)[0][:, :, slot * P:(slot + 1) * P], k * (layer + 1))
        assert torch.equal(cache.read(layer)[1][:, :, slot * P:(slot + 1) * P], -k)
    other = make(1, 2, layers=3)                         # a layer missing: stored one by one, the same way
    other.write(1, k, k)
    other.advance(1)
    assert torch.equal(other.read(1)[0][:, :, :P], k) and not other.read(0)[0].any()
    cache.write(0, k, k)
    cache.reset()                                        # nothing staged survives a reset
    assert not cache._staged
