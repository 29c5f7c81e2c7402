"""Rolling and since-start online ranking counts per model version."""

from __future__ import annotations

import pytest

from stream_worker.online_metrics import OnlineEvaluator, summary


def test_window_rolls_and_versions_are_kept_apart() -> None:
    evaluator = OnlineEvaluator(window_size=3)
    for rank in (1, 0, 7, 25, 2):  # 25 is outside the top 20: a miss that still counts in n
        evaluator.add("v1", rank)
    evaluator.add("v2", 5)
    total, window = evaluator.counts("v1")
    assert (total.n, total.hits_at_1, total.hits_at_5, total.hits_at_10, total.hits_at_20) == (5, 1, 2, 3, 3)
    assert total.reciprocal_rank_sum == pytest.approx(1 + 1 / 7 + 1 / 2)
    assert (window.n, window.hits_at_10) == (3, 2)  # ranks 7, 25, 2
    assert window.reciprocal_rank_sum == pytest.approx(1 / 7 + 1 / 2)
    assert summary(window)["recall@10"] == pytest.approx(2 / 3)
    assert evaluator.versions() == ["v1", "v2"] and evaluator.counts("v2")[0].hits_at_5 == 1
