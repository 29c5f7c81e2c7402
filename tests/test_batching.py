"""Session-parallel batching: slot assignment, order, hidden-state reset flags, negative sampling."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from modelkit.item_index import ItemIndex
from offline.batching import session_parallel_batches
from offline.model_tf import reset_hidden
from offline.sampling import SampleCache
from offline.session_arrays import SessionArrays


def _sessions(lengths: list[int]) -> tuple[SessionArrays, ItemIndex]:
    """Session s has events with item ids "s*10+position", starting at time s (so session order = s)."""
    sids, items, times = [], [], []
    for s, length in enumerate(lengths):
        for p in range(length):
            sids.append(f"s{s}")
            items.append(str(s * 10 + p))
            times.append(float(s) + p * 0.001)
    index = ItemIndex.from_events(items)
    return SessionArrays.from_columns(np.array(sids), np.array(items), np.array(times), index), index


def test_two_slots_walk_sessions_in_order_and_flag_resets() -> None:
    data, index = _sessions([3, 2, 4, 1, 2])  # session 3 has one click: no pair, skipped
    batches = list(session_parallel_batches(data, batch_size=2))
    pairs = [
        [
            (int(index.ids[i]), int(index.ids[t]), bool(v), bool(st))
            for i, t, v, st in zip(b.inputs, b.targets, b.valid, b.starts, strict=True)
        ]
        for b in batches
    ]
    assert pairs == [
        [(0, 1, True, True), (10, 11, True, True)],
        [(1, 2, True, False), (20, 21, True, True)],  # slot 1: session 1 ended, session 2 starts (reset)
        [(40, 41, True, True), (21, 22, True, False)],  # slot 0: session 3 skipped (1 click), session 4 starts
        [(0, 0, False, False), (22, 23, True, False)],  # slot 0 has no session left
    ]


def test_every_training_pair_appears_once() -> None:
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 9, size=57).tolist()
    data, _ = _sessions(lengths)
    seen = []
    for batch in session_parallel_batches(data, batch_size=5):
        seen += [(int(i), int(t)) for i, t in zip(batch.inputs[batch.valid], batch.targets[batch.valid], strict=True)]
    expected = [
        (int(data.item_idx[e]), int(data.item_idx[e + 1]))
        for s in range(data.n_sessions)
        for e in range(data.offsets[s], data.offsets[s + 1] - 1)
    ]
    assert sorted(seen) == sorted(expected)
    assert len(seen) == sum(n - 1 for n in lengths if n >= 2)


def test_reset_zeroes_only_started_slots() -> None:
    hidden = tf.ones((2, 3, 4))  # (n_layers, batch, size)
    out = reset_hidden(hidden, tf.constant([0.0, 1.0, 0.0])).numpy()
    assert out[:, 1].sum() == 0 and out[:, 0].sum() == 8 and out[:, 2].sum() == 8


def test_sample_cache_follows_popularity_power() -> None:
    counts = np.array([1, 0, 9, 90])
    cache = SampleCache(counts, n_sample=100, alpha=1.0, rng=np.random.default_rng(0), cache_size=10_000)
    samples = cache.take(500)  # more than one refill (100 steps per refill)
    assert samples.shape == (500, 100)
    freq = np.bincount(samples.ravel(), minlength=4) / samples.size
    assert freq[1] == 0  # never-clicked items are never drawn
    np.testing.assert_allclose(freq, counts / counts.sum(), atol=0.01)
    half = SampleCache(counts, n_sample=1000, alpha=0.5, rng=np.random.default_rng(0)).take(50)
    expected = np.sqrt(counts) / np.sqrt(counts).sum()
    np.testing.assert_allclose(np.bincount(half.ravel(), minlength=4) / half.size, expected, atol=0.01)
