"""Ranks with ties counted against the model, and Recall/MRR/NDCG@k from ranks."""

from __future__ import annotations

import math

import numpy as np

from modelkit.item_index import ItemIndex
from offline.evaluate import evaluation_ranks
from offline.metrics import metrics_from_ranks, sampled_ranks, target_ranks
from offline.session_arrays import SessionArrays


def test_ties_count_against_the_target() -> None:
    scores = np.array([
        [0.5, 0.9, 0.1, 0.5],  # target 0 ties with item 3, item 1 above: rank 3
        [1.0, 1.0, 1.0, 1.0],  # all tied: rank = n_items
        [0.0, 0.2, 0.7, 0.1],  # target 2 strictly best: rank 1
    ])
    np.testing.assert_array_equal(target_ranks(scores, np.array([0, 1, 2])), [3, 4, 1])


def test_nan_target_ranks_last() -> None:
    assert target_ranks(np.array([[np.nan, 0.1, 0.2]]), np.array([0]))[0] == 3


def test_sampled_ranks_by_hand() -> None:
    scores = np.array([
        [0.5, 0.9, 0.1, 0.5, 0.7],  # target 0 vs 1, 3, 2: 1 above, 3 tied -> rank 3 (item 4 not sampled)
        [0.5, 0.9, 0.1, 0.5, 0.7],  # target 2 vs 4 and padding: rank 2 among 2 candidates
        [np.nan, 0.9, 0.1, 0.5, 0.7],  # NaN target ranks last among its 3 candidates + itself
    ])
    negatives = np.array([[1, 3, 2], [4, -1, -1], [2, 3, 4]])
    np.testing.assert_array_equal(sampled_ranks(scores, np.array([0, 2, 0]), negatives), [3, 2, 4])


def test_metrics_by_hand() -> None:
    metrics = metrics_from_ranks(np.array([1, 3, 25]), cutoffs=(1, 5, 20))
    assert metrics["recall@1"] == 1 / 3
    assert math.isclose(metrics["recall@5"], 2 / 3)
    assert math.isclose(metrics["mrr@5"], (1 + 1 / 3) / 3)
    assert math.isclose(metrics["ndcg@5"], (1 + 1 / math.log2(4)) / 3)
    assert math.isclose(metrics["recall@20"], 2 / 3)  # rank 25 is outside every cutoff
    assert metrics["n_predictions"] == 3


class _FixedScorer:
    """Scores item (last item + 1) highest, every other item 0: a chain predictor."""

    name = "chain"
    n_items = 5

    def reset(self, n_sessions: int) -> None:
        self.calls: list[tuple[list[int], list[int]]] = []

    def step(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        self.calls.append((rows.tolist(), items.tolist()))
        scores = np.zeros((len(rows), self.n_items))
        scores[np.arange(len(rows)), (items + 1) % self.n_items] = 1.0
        return scores


def test_every_next_click_is_ranked_from_its_prefix() -> None:
    index = ItemIndex([str(i) for i in range(5)])
    # session a: 0 1 2 (chain, both hits); session b: 3 1 (miss: item 4 above, 4 items tie at 0 -> rank 5)
    data = SessionArrays.from_columns(
        np.array(["a", "a", "a", "b", "b"]), np.array(["0", "1", "2", "3", "1"]),
        np.array([1.0, 2.0, 3.0, 1.5, 2.5]), index,
    )
    scorer = _FixedScorer()
    ranks = evaluation_ranks(scorer, data)
    np.testing.assert_array_equal(ranks, [-1, 1, 1, -1, 5])
    assert scorer.calls == [([0, 1], [0, 3]), ([0], [1])]  # batched across sessions, position by position
