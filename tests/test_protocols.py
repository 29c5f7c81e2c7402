"""Evaluation protocols: last-item targets, seen-item exclusion, sampled negatives, over models and baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelkit.artifact import load_artifact
from modelkit.item_index import UNKNOWN_ITEM, ItemIndex
from offline.evaluate import ModelScorer, evaluate, evaluation_ranks
from offline.pipeline import evaluate_artifact, evaluate_baselines
from offline.protocols import NEXT_CLICK, EvalProtocol, NegativeSampler, draw_negatives, last_item_sessions
from offline.session_arrays import SessionArrays
from tests.support.artifacts import random_artifact
from tests.support.workloads import synthetic_sessions

LAST_ITEM = EvalProtocol(targets="last-item")


def sessions_of(sequences: list[list[int]], n_items: int) -> SessionArrays:
    """Sequences of item indices as SessionArrays, in the given order (session ids s0, s1, ...)."""
    index = ItemIndex([str(i) for i in range(n_items)])
    sids = [f"s{s:03d}" for s, seq in enumerate(sequences) for _ in seq]
    items = [str(i) for seq in sequences for i in seq]
    times = [1000.0 * s + position for s, seq in enumerate(sequences) for position in range(len(seq))]
    return SessionArrays.from_columns(np.array(sids), np.array(items), np.array(times), index)


class FixedScorer:
    """Every prefix gets the same scores (``table``), like popularity; records what it is fed."""

    name = "fixed"

    def __init__(self, table: np.ndarray) -> None:
        self.table = np.asarray(table, dtype=np.float64)
        self.n_items = len(self.table)
        self.fed: list[tuple[list[int], list[int]]] = []

    def reset(self, n_sessions: int) -> None:
        self.fed = []

    def step(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        self.fed.append((rows.tolist(), items.tolist()))
        return np.tile(self.table, (len(rows), 1))


class ChainScorer:
    """Scores item (last item + 1) highest: a perfect scorer on chain sequences."""

    name = "chain"

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items

    def reset(self, n_sessions: int) -> None:
        pass

    def step(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        scores = np.zeros((len(rows), self.n_items))
        scores[np.arange(len(rows)), (items + 1) % self.n_items] = 1.0
        return scores


class RandomTableScorer:
    """Scores depend on the last item only, through a fixed random table: deterministic, not trivial."""

    name = "random"

    def __init__(self, n_items: int, seed: int = 0) -> None:
        self.n_items = n_items
        self.table = np.random.default_rng(seed).random((n_items, n_items))

    def reset(self, n_sessions: int) -> None:
        pass

    def step(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.table[items]


# ------------------------------------------------------------------------------------------------ the protocol


def test_protocol_validation_and_description() -> None:
    assert EvalProtocol("next-click", exclude_seen=False, sampled_negatives=0) == NEXT_CLICK
    assert NEXT_CLICK.as_dict() == {"targets": "next-click", "exclude_seen": False, "ranking": "full"}
    sampled = EvalProtocol("last-item", exclude_seen=True, sampled_negatives=100, seed=7)
    assert sampled.as_dict() == {"targets": "last-item", "exclude_seen": True, "ranking": "sampled",
                                 "sampled_negatives": 100, "seed": 7}  # fmt: skip
    assert "SAMPLED" in sampled.describe() and "seen items excluded" in sampled.describe()
    assert sampled.sampled_header() == (
        "sampled metrics: target vs 100 random unseen items (not comparable with full ranking)"
    )
    for bad in ({"targets": "first-item"}, {"sampled_negatives": -1}, {"seed": -1}):
        with pytest.raises(ValueError):
            EvalProtocol(**bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ last item


def test_last_item_ranks_only_each_sequences_last_item() -> None:
    data = sessions_of([[0, 1, 2, 4], [3, 1], [2, 3, 4]], n_items=5)
    scorer = FixedScorer(np.array([5.0, 4.0, 3.0, 2.0, 1.0]))  # rank of item i = i + 1
    np.testing.assert_array_equal(evaluation_ranks(scorer, data), [-1, 2, 3, 5, -1, 2, -1, 4, 5])
    ranks = evaluation_ranks(scorer, data, protocol=LAST_ITEM)
    np.testing.assert_array_equal(ranks, [-1, -1, -1, 5, -1, 2, -1, -1, 5])
    # the whole prefix is still fed to the scorer, position by position
    assert scorer.fed == [([0, 1, 2], [0, 3, 2]), ([0, 2], [1, 3]), ([0], [2])]
    result = evaluate(scorer, data, cutoffs=(2, 5), protocol=LAST_ITEM)
    assert result["n_predictions"] == 3
    assert result["recall@2"] == pytest.approx(1 / 3) and result["recall@5"] == 1.0
    assert result["mrr@5"] == pytest.approx((1 / 5 + 1 / 2 + 1 / 5) / 3)


def test_last_item_sessions_drop_sequences_whose_target_is_unknown() -> None:
    index = ItemIndex(["a", "b", "c", "d"])
    sids = np.array(["s1", "s1", "s1", "s2", "s2", "s2", "s3", "s3", "s4", "s4", "s4"])
    items = np.array(["a", "x", "b", "a", "b", "x", "x", "c", "d", "a", "c"])
    times = np.arange(len(sids), dtype=np.float64)
    sessions = SessionArrays.from_columns(sids, items, times, index)
    assert (sessions.item_idx == UNKNOWN_ITEM).sum() == 3
    kept = last_item_sessions(sessions)
    # s1: unknown prefix event removed; s2: unknown target -> dropped whole (b is not its last item);
    # s3: nothing left before its target -> dropped; s4 unchanged
    assert kept.session_ids.tolist() == ["s1", "s4"]
    assert [kept.session(s).tolist() for s in range(kept.n_sessions)] == [[0, 1], [3, 0, 2]]
    np.testing.assert_array_equal(kept.timestamps, [0.0, 2.0, 8.0, 9.0, 10.0])
    allowed = np.array([True, True, False, True])  # c is not allowed: s4's target is dropped with it
    assert last_item_sessions(sessions, allowed).session_ids.tolist() == ["s1"]


# ------------------------------------------------------------------------------------------------ seen items


def test_exclude_seen_by_hand() -> None:
    scorer = FixedScorer(np.array([5.0, 4.0, 3.0, 2.0, 1.0]))
    data = sessions_of([[0, 1, 3], [2, 2]], n_items=5)
    # [0] -> 1: item 0 above (rank 2); seen 0 excluded -> rank 1. [0, 1] -> 3: 0, 1, 2 above (rank 4);
    # 0 and 1 excluded -> rank 2. [2] -> 2 repeats a seen item: rank 3, excluded -> -inf, ranks last (5).
    np.testing.assert_array_equal(evaluation_ranks(scorer, data), [-1, 2, 4, -1, 3])
    excluded = EvalProtocol(exclude_seen=True)
    np.testing.assert_array_equal(evaluation_ranks(scorer, data, protocol=excluded), [-1, 1, 2, -1, 5])
    last = EvalProtocol(targets="last-item", exclude_seen=True)
    np.testing.assert_array_equal(evaluation_ranks(scorer, data, protocol=last), [-1, -1, 2, -1, 5])


# ------------------------------------------------------------------------------------------------ sampled negatives


def test_draw_negatives_are_distinct_unseen_and_cover_the_rest() -> None:
    rng = np.random.default_rng(0)
    excluded = np.zeros(60, dtype=bool)
    excluded[[0, 5, 7, 30, 59]] = True
    drawn = np.concatenate([draw_negatives(rng, excluded, 10) for _ in range(400)])
    assert not excluded[drawn].any()
    assert set(drawn.tolist()) == set(np.flatnonzero(~excluded).tolist())  # every allowed item comes up
    counts = np.bincount(drawn, minlength=60)[~excluded]
    assert counts.min() > 0.5 * counts.mean()  # roughly uniform: 4000 draws over 55 items
    for _ in range(50):
        once = draw_negatives(rng, excluded, 10)
        assert len(once) == 10 == len(set(once.tolist()))
    mostly = np.ones(60, dtype=bool)
    mostly[[3, 4, 9]] = False  # fewer allowed items than asked for: all of them, each once
    assert sorted(draw_negatives(rng, mostly, 10).tolist()) == [3, 4, 9]
    assert len(draw_negatives(rng, np.ones(60, dtype=bool), 10)) == 0


def test_sampler_excludes_the_whole_sequence_and_pads() -> None:
    data = sessions_of([[0, 1, 2], [3, 4, 5, 6]], n_items=8)
    sampler = NegativeSampler(data, 0, 2, n_items=8, n=5, seed=0)
    for _ in range(5):
        first, second = sampler.draw(np.array([0, 1]))
        assert sorted(first.tolist()) == [3, 4, 5, 6, 7]
        assert sorted(second.tolist()) == [-1, 0, 1, 2, 7]  # only 4 items lie outside the sequence
        small = sampler.draw(np.array([1]))
        assert small.shape == (1, 5) and not set(small[0].tolist()) & {3, 4, 5, 6}
    alone = NegativeSampler(data, 1, 2, n_items=8, n=5, seed=0)  # a chunk starting at sequence 1
    assert sorted(alone.draw(np.array([0]))[0].tolist()) == [-1, 0, 1, 2, 7]


def test_sampled_negatives_never_include_items_of_the_sequence() -> None:
    # The sequence's own items (future ones included) score above the target; a sampled rank is still 1
    # because negatives are never items of the sequence, while the full ranking puts them above.
    n_items = 50
    table = np.zeros(n_items)
    table[[10, 11, 12, 13]] = [100.0, 60.0, 100.0, 50.0]
    scorer = FixedScorer(table)
    data = sessions_of([[10, 11, 12, 13]], n_items)
    assert evaluation_ranks(scorer, data, protocol=LAST_ITEM)[-1] == 4  # 10, 11 and 12 above 13
    for seed in range(10):
        sampled = EvalProtocol(targets="last-item", sampled_negatives=20, seed=seed)
        assert evaluation_ranks(scorer, data, protocol=sampled)[-1] == 1
        every = EvalProtocol(sampled_negatives=20, seed=seed)
        # next click 11 given [10]: full ranking puts 10 and the future 12 above it; sampled never does
        assert evaluation_ranks(scorer, data, protocol=every)[1] == 1
    assert evaluation_ranks(scorer, data)[1] == 3  # 10 and 12 above 11


def test_sampled_ranks_are_seeded_and_independent_of_batching() -> None:
    sids, items, times = synthetic_sessions(60, n_items=40, seed=3)
    data = SessionArrays.from_columns(sids, items, times, ItemIndex([str(i) for i in range(40)]))
    scorer = RandomTableScorer(40)
    protocol = EvalProtocol(sampled_negatives=10, seed=5)
    first = evaluation_ranks(scorer, data, protocol=protocol)
    np.testing.assert_array_equal(first, evaluation_ranks(scorer, data, protocol=protocol))
    np.testing.assert_array_equal(first, evaluation_ranks(scorer, data, sessions_per_chunk=7, protocol=protocol))
    other = evaluation_ranks(scorer, data, protocol=EvalProtocol(sampled_negatives=10, seed=6))
    assert not np.array_equal(first, other)
    assert (first[first > 0] <= 11).all() and ((first > 0) == (other > 0)).all()
    full = evaluation_ranks(scorer, data)
    assert (first[first > 0] <= full[full > 0]).all()  # fewer competitors can only improve a rank


def test_a_perfect_scorer_gets_hr_at_1_of_one() -> None:
    data = sessions_of([[0, 1, 2, 3], [5, 6], [7, 8, 9, 0, 1]], n_items=10)
    for protocol in (NEXT_CLICK, LAST_ITEM, EvalProtocol(sampled_negatives=5), EvalProtocol("last-item", True, 3, 1)):
        result = evaluate(ChainScorer(10), data, protocol=protocol)
        assert result["recall@1"] == result["ndcg@1"] == result["mrr@20"] == 1.0
    assert evaluate(ChainScorer(10), data, protocol=LAST_ITEM)["n_predictions"] == 3


# ------------------------------------------------------------------------------------------------ models, baselines


def frame_of(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["session_id", "item_id", "timestamp"])
    return frame.astype({"session_id": "str", "item_id": "str", "timestamp": np.float64})


def test_evaluate_artifact_and_baselines_take_the_protocol(tmp_path: Path) -> None:
    artifact = load_artifact(random_artifact(tmp_path, items=12, noise=0.3))
    test = frame_of([("u1", "i1", 1.0), ("u1", "i2", 2.0), ("u1", "i3", 3.0), ("u2", "i4", 1.0),
                     ("u2", "i5", 2.0), ("u2", "zz", 3.0), ("u3", "i6", 1.0), ("u3", "i7", 2.0)])  # fmt: skip
    full, kept = evaluate_artifact(artifact, test)
    assert full["n_predictions"] == 4 and kept.dropped_events == 1  # u2 keeps i4 -> i5
    last, kept = evaluate_artifact(artifact, test, protocol=LAST_ITEM)
    assert last["n_predictions"] == 2 and kept.dropped_sessions == 1 and kept.dropped_events == 3  # u2's target
    # the same ranks as the model scorer gives under the protocol directly
    assert last == evaluate(ModelScorer(artifact.model()), kept.sessions, protocol=LAST_ITEM)
    sampled, _ = evaluate_artifact(artifact, test, protocol=EvalProtocol("last-item", sampled_negatives=4, seed=2))
    assert sampled["n_predictions"] == 2 and sampled == evaluate_artifact(
        artifact, test, protocol=EvalProtocol("last-item", sampled_negatives=4, seed=2)
    )[0]

    train = frame_of([(f"t{s}", f"i{(s + k) % 8}", float(k)) for s in range(20) for k in range(4)])
    results, kept = evaluate_baselines(train, test, protocol=EvalProtocol("last-item", exclude_seen=True))
    assert set(results) == {"pop", "sr", "vsknn"} and kept.sessions.n_sessions == 2
    assert all(metrics["n_predictions"] == 2 for metrics in results.values())
    default, _ = evaluate_baselines(train, test)
    assert all(metrics["n_predictions"] == 4 for metrics in default.values())
