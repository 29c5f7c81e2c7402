"""Session-parallel batching: slot assignment, order, hidden-state reset flags, negative sampling, step items."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from modelkit.item_index import ItemIndex
from offline.batching import SessionParallelBatches, session_parallel_batches
from offline.model_tf import reset_hidden
from offline.sampling import WIDTH_MULTIPLE, NegativeSampler, step_items
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


def _walk(data: SessionArrays, batch_size: int) -> list[tuple[list[int], list[int], list[bool], list[bool]]]:
    """The reference: step by step, each slot advances its session; a freed slot takes the next session."""
    queue = [s for s in range(data.n_sessions) if data.lengths[s] >= 2]
    slots: list[list[int] | None] = [None] * batch_size  # [event index, end] per slot
    fresh = [False] * batch_size
    steps = []
    for i in range(batch_size):
        if queue:
            s = queue.pop(0)
            slots[i], fresh[i] = [int(data.offsets[s]), int(data.offsets[s + 1])], True
    while any(walker is not None for walker in slots):
        inputs = [int(data.item_idx[walker[0]]) if walker else 0 for walker in slots]
        targets = [int(data.item_idx[walker[0] + 1]) if walker else 0 for walker in slots]
        steps.append((inputs, targets, [walker is not None for walker in slots], fresh))
        fresh = [False] * batch_size
        for i, walker in enumerate(slots):
            if walker is not None:
                walker[0] += 1
                if walker[0] + 1 >= walker[1]:
                    slots[i] = None
                    if queue:
                        s = queue.pop(0)
                        slots[i], fresh[i] = [int(data.offsets[s]), int(data.offsets[s + 1])], True
    return steps


def test_two_slots_walk_sessions_in_order_and_flag_resets() -> None:
    data, index = _sessions([3, 2, 4, 1, 2])  # session 3 has one click: no pair, skipped
    batches = session_parallel_batches(data, batch_size=2)
    pairs = [
        [
            (int(index.ids[i]), int(index.ids[t]), bool(v), bool(st)) if v else (None, None, False, bool(st))
            for i, t, v, st in zip(inputs, targets, valid, starts, strict=True)
        ]
        for inputs, targets, valid, starts in zip(
            batches.inputs, batches.targets, batches.valid, batches.starts, strict=True
        )
    ]
    assert pairs == [
        [(0, 1, True, True), (10, 11, True, True)],
        [(1, 2, True, False), (20, 21, True, True)],  # slot 1: session 1 ended, session 2 starts (reset)
        [(40, 41, True, True), (21, 22, True, False)],  # slot 0: session 3 skipped (1 click), session 4 starts
        [(None, None, False, False), (22, 23, True, False)],  # slot 0 has no session left
    ]


def test_batches_match_the_step_by_step_walk() -> None:
    rng = np.random.default_rng(3)
    data, _ = _sessions(rng.integers(1, 9, size=57).tolist())
    for batch_size in (1, 5, 80):
        batches = session_parallel_batches(data, batch_size)
        walk = _walk(data, batch_size)
        assert batches.n_steps == len(walk)
        for t, (inputs, targets, valid, starts) in enumerate(walk):
            assert batches.inputs[t].tolist() == inputs and batches.targets[t].tolist() == targets
            assert batches.valid[t].tolist() == valid and batches.starts[t].tolist() == starts


def test_every_training_pair_appears_once() -> None:
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 9, size=57).tolist()
    data, _ = _sessions(lengths)
    batches = session_parallel_batches(data, batch_size=5)
    seen = list(zip(batches.inputs[batches.valid].tolist(), batches.targets[batches.valid].tolist(), strict=True))
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


def test_negatives_follow_popularity_power() -> None:
    counts = np.array([1, 0, 9, 90])
    samples = NegativeSampler(counts, n_sample=100, alpha=1.0, rng=np.random.default_rng(0)).take(500)
    assert samples.shape == (500, 100)
    freq = np.bincount(samples.ravel(), minlength=4) / samples.size
    assert freq[1] == 0  # never-clicked items are never drawn
    np.testing.assert_allclose(freq, counts / counts.sum(), atol=0.01)
    half = NegativeSampler(counts, n_sample=1000, alpha=0.5, rng=np.random.default_rng(0)).take(50)
    expected = np.sqrt(counts) / np.sqrt(counts).sum()
    np.testing.assert_allclose(np.bincount(half.ravel(), minlength=4) / half.size, expected, atol=0.01)


def test_step_items_hold_each_touched_item_once() -> None:
    batches = SessionParallelBatches(
        inputs=np.array([[5, 7, 0], [6, 6, 9]], np.int32),
        targets=np.array([[6, 8, 0], [7, 3, 4]], np.int32),
        valid=np.array([[True, True, False], [True, True, True]]),
        starts=np.array([[True, True, False], [False, False, True]]),
    )
    samples = np.array([[8, 2, 8, 6, 2], [1, 1, 1, 1, 1]])
    touched = step_items(samples, batches)
    assert touched.items.shape[1] == WIDTH_MULTIPLE
    # Step 0: samples {2: 2, 6: 1, 8: 2}, then targets not sampled (none), then inputs not sampled (5, 7).
    assert touched.items[0, :5].tolist() == [2, 6, 8, 5, 7]
    assert touched.counts[0, :5].tolist() == [2, 1, 2, 0, 0]
    assert touched.n_candidates[0] == 3 and touched.n_rows[0] == 5
    assert touched.target_columns[0].tolist() == [1, 2, 0]  # the empty slot points at column 0
    assert touched.input_columns[0].tolist() == [3, 4, 0]
    # Step 1: sample {1: 5}, then targets 3, 4, 7 (ascending), then inputs 6 (twice in the batch) and 9.
    assert touched.items[1, :6].tolist() == [1, 3, 4, 7, 6, 9]
    assert touched.counts[1, :6].tolist() == [5, 0, 0, 0, 0, 0]
    assert touched.n_candidates[1] == 4 and touched.n_rows[1] == 6
    assert touched.target_columns[1].tolist() == [3, 1, 2]
    assert touched.input_columns[1].tolist() == [4, 4, 5]
    assert not touched.counts[:, 6:].any() and not touched.items[:, 6:].any()  # padding


def test_step_items_on_real_batches() -> None:
    rng = np.random.default_rng(5)
    data, _ = _sessions(rng.integers(1, 9, size=80).tolist())
    batches = session_parallel_batches(data, batch_size=7)
    n_items = int(data.item_idx.max()) + 1
    samples = rng.integers(0, n_items, size=(batches.n_steps, 30))
    touched = step_items(samples, batches)
    for t in range(batches.n_steps):
        valid = batches.valid[t]
        rows = touched.items[t, : touched.n_rows[t]]
        assert len(set(rows.tolist())) == len(rows)
        expected_rows = set(samples[t]) | set(batches.targets[t][valid]) | set(batches.inputs[t][valid])
        assert set(rows.tolist()) == expected_rows
        assert set(touched.items[t, : touched.n_candidates[t]].tolist()) == set(samples[t]) | set(
            batches.targets[t][valid]
        )
        drawn = dict(zip(*np.unique(samples[t], return_counts=True), strict=True))
        assert [touched.counts[t, c] for c in range(len(rows))] == [drawn.get(item, 0) for item in rows]
        assert (touched.items[t, touched.target_columns[t][valid]] == batches.targets[t][valid]).all()
        assert (touched.items[t, touched.input_columns[t][valid]] == batches.inputs[t][valid]).all()
