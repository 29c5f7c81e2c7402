"""Hand-computed checks of the popularity, sequential-rules and V-SKNN baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from offline.baselines import PopularityScorer, SequentialRulesScorer, VSKNNScorer
from offline.evaluate import evaluate, evaluation_ranks
from offline.metrics import target_ranks
from offline.session_arrays import SessionArrays


def make_sessions(sessions: list[list[int]], last_times: list[float] | None = None) -> SessionArrays:
    """Sessions with one click per second; session s ends at ``last_times[s]`` (default: 100 * (s + 1))."""
    if last_times is None:
        last_times = [100.0 * (s + 1) for s in range(len(sessions))]
    items = np.array([i for session in sessions for i in session], dtype=np.int64)
    times = np.array(
        [
            t - (len(session) - 1 - p)
            for session, t in zip(sessions, last_times, strict=True)
            for p in range(len(session))
        ],
        dtype=np.float64,
    )
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sessions])]).astype(np.int64)
    ids = np.array([f"s{s}" for s in range(len(sessions))], dtype=object)
    return SessionArrays(items, times, offsets, ids)


# ---------------------------------------------------------------- popularity


def test_popularity_counts_clicks_and_keeps_ties() -> None:
    train = make_sessions([[0, 1, 1], [2, 1], [0, 3]])
    scorer = PopularityScorer(train, n_items=5)
    scorer.reset(2)
    scores = scorer.step(np.array([0, 1]), np.array([4, 2]))
    assert scores.shape == (2, 5)
    np.testing.assert_array_equal(scores, [[2, 3, 1, 1, 0], [2, 3, 1, 1, 0]])
    # Items 2 and 3 are equally popular: both rank 4 (ties count against the model), item 4 ranks last.
    np.testing.assert_array_equal(target_ranks(scores, np.array([2, 3])), [4, 4])
    np.testing.assert_array_equal(target_ranks(scores, np.array([1, 4])), [1, 5])


# ---------------------------------------------------------------- sequential rules


def test_sr_rule_weights_div_with_step_limit() -> None:
    train = make_sessions([[0, 1, 2, 3], [1, 2], [4, 4]])
    rules = SequentialRulesScorer(train, 5, steps=2, weighting="div", pruning=0).rules.toarray()
    expected = np.zeros((5, 5))
    expected[0, 1] = 1.0  # gap 1
    expected[0, 2] = 0.5  # gap 2; 0 -> 3 is 3 apart, beyond steps=2
    expected[1, 2] = 1.0 + 1.0  # both sessions
    expected[1, 3] = 0.5
    expected[2, 3] = 1.0
    expected[4, 4] = 1.0  # repeated click
    np.testing.assert_allclose(rules, expected)

    rules_1 = SequentialRulesScorer(train, 5, steps=1, weighting="div", pruning=0).rules.toarray()
    assert rules_1[0, 2] == 0.0 and rules_1[1, 3] == 0.0 and rules_1[1, 2] == 2.0


def test_sr_linear_and_same_weightings() -> None:
    train = make_sessions([[0, 1, 2, 3]])
    linear = SequentialRulesScorer(train, 4, steps=3, weighting="linear", pruning=0).rules.toarray()
    np.testing.assert_allclose(linear[0], [0.0, 1.0, 0.9, 0.8])
    same = SequentialRulesScorer(train, 4, steps=3, weighting="same", pruning=0).rules.toarray()
    np.testing.assert_allclose(same[0], [0.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError):
        SequentialRulesScorer(train, 4, weighting="log")


def test_sr_pruning_keeps_top_rules_and_ties_at_the_cut() -> None:
    train = make_sessions([[0, 1, 2, 3], [0, 1]])  # "same": 0->1 = 2, 0->2 = 1, 0->3 = 1
    full = SequentialRulesScorer(train, 4, steps=3, weighting="same", pruning=0).rules.toarray()
    np.testing.assert_allclose(full[0], [0, 2, 1, 1])
    top1 = SequentialRulesScorer(train, 4, steps=3, weighting="same", pruning=1).rules.toarray()
    np.testing.assert_allclose(top1[0], [0, 2, 0, 0])
    np.testing.assert_allclose(top1[1], [0, 0, 1, 1])  # 1->2 and 1->3 tie at the cut: both kept
    top2 = SequentialRulesScorer(train, 4, steps=3, weighting="same", pruning=2).rules.toarray()
    np.testing.assert_allclose(top2[0], [0, 2, 1, 1])  # 0->2 and 0->3 tie for 2nd place: both kept


def test_sr_step_scores_from_last_item() -> None:
    train = make_sessions([[0, 1, 2, 3], [1, 2]])
    scorer = SequentialRulesScorer(train, 4, steps=2, weighting="div", pruning=0)
    scorer.reset(2)
    np.testing.assert_allclose(
        scorer.step(np.array([0, 1]), np.array([0, 1])), [[0, 1, 0.5, 0], [0, 0, 2, 0.5]]
    )
    np.testing.assert_allclose(scorer.step(np.array([0]), np.array([2])), [[0, 0, 0, 1]])
    np.testing.assert_allclose(scorer.step(np.array([1]), np.array([3])), [[0, 0, 0, 0]])


# ---------------------------------------------------------------- V-SKNN

# Toy training set: s0 = [0, 1, 2] (ends t=12), s1 = [1, 3] (t=20), s2 = [2, 3, 4] (t=30), s3 = [5, 0] (t=40).
VSKNN_TRAIN = make_sessions([[0, 1, 2], [1, 3], [2, 3, 4], [5, 0]], [12.0, 20.0, 30.0, 40.0])


def vsknn(**kwargs: object) -> VSKNNScorer:
    params: dict = {"k": 100, "sample_size": 0, "weighting": "div", "similarity": "dot", "idf": False}
    params.update(kwargs)
    return VSKNNScorer(VSKNN_TRAIN, 6, **params)


def neighbour_row(scorer: VSKNNScorer, prefix: list[int]) -> np.ndarray:
    return scorer.neighbours([prefix]).toarray()[0]


def test_vsknn_dot_similarities_and_item_scores() -> None:
    scorer = vsknn()
    # Prefix [0, 1, 2] weighs 2 -> 1, 1 -> 1/2, 0 -> 1/3.
    np.testing.assert_allclose(neighbour_row(scorer, [0, 1, 2]), [11 / 6, 1 / 2, 1, 1 / 3])
    scores = scorer.score_prefixes([[0, 1, 2]])[0]
    np.testing.assert_allclose(scores, [13 / 6, 14 / 6, 17 / 6, 9 / 6, 1, 1 / 3])


def test_vsknn_repeated_item_keeps_its_most_recent_weight() -> None:
    # Prefix [2, 0, 2]: item 2 weighs 1 (last click), item 0 weighs 1/2.
    np.testing.assert_allclose(neighbour_row(vsknn(), [2, 0, 2]), [1.5, 0, 1, 0.5])


def test_vsknn_linear_weighting_and_cosine() -> None:
    np.testing.assert_allclose(neighbour_row(vsknn(weighting="linear"), [0, 1, 2]), [2.7, 0.9, 1.0, 0.8])
    # Prefix [3, 0]: item 0 weighs 1, item 3 weighs 0.9.
    np.testing.assert_allclose(neighbour_row(vsknn(weighting="linear"), [3, 0]), [1.0, 0.9, 0.9, 1.0])
    cosine = neighbour_row(vsknn(similarity="cosine"), [0, 1, 2])
    np.testing.assert_allclose(cosine, [11 / 6 / 3, 0.5 / math.sqrt(6), 1 / 3, 1 / 3 / math.sqrt(6)])


def test_vsknn_linear_weight_floor() -> None:
    # Item 0 is 12 clicks before the last one: 1 - 1.2 < 0.1, so it weighs 0.1.
    prefix = [0] + [4] * 12
    np.testing.assert_allclose(neighbour_row(vsknn(weighting="linear"), prefix), [0.1, 0, 1.0, 0.1])


def test_vsknn_k_restricts_neighbours() -> None:
    scorer = vsknn(k=2)
    np.testing.assert_allclose(neighbour_row(scorer, [0, 1, 2]), [11 / 6, 0, 1, 0])
    np.testing.assert_allclose(scorer.score_prefixes([[0, 1, 2]])[0], [11 / 6, 11 / 6, 17 / 6, 1, 1, 0])


def test_vsknn_k_tie_prefers_recent_session() -> None:
    # Prefix [3]: s1 and s2 both have similarity 1; s2 ended later, so k=1 keeps s2.
    np.testing.assert_allclose(neighbour_row(vsknn(k=1), [3]), [0, 0, 1, 0])


def test_vsknn_recency_sample_restricts_candidates() -> None:
    # All four sessions are candidates; the two most recent are s3 (t=40) and s2 (t=30).
    scorer = vsknn(sample_size=2)
    np.testing.assert_allclose(neighbour_row(scorer, [0, 1, 2]), [0, 0, 1, 1 / 3])
    np.testing.assert_allclose(scorer.score_prefixes([[0, 1, 2]])[0], [1 / 3, 0, 1, 1, 1, 1 / 3])
    # Sample first, then k: of {s3, s2}, k=1 keeps s2 (similarity 1 > 1/3), not s0 (the most similar overall).
    np.testing.assert_allclose(neighbour_row(vsknn(sample_size=2, k=1), [0, 1, 2]), [0, 0, 1, 0])


def test_vsknn_recency_uses_last_click_not_start() -> None:
    # s0 starts first but its last click (t=1000) is the most recent; s1 and s2 end at t=50 and t=60.
    train = SessionArrays(
        item_idx=np.array([0, 1, 0, 2, 0, 3]),
        timestamps=np.array([0.0, 1000.0, 40.0, 50.0, 45.0, 60.0]),
        offsets=np.array([0, 2, 4, 6]),
        session_ids=np.array(["a", "b", "c"], dtype=object),
    )
    scorer = VSKNNScorer(train, 4, k=10, sample_size=1, weighting="div", similarity="dot", idf=False)
    np.testing.assert_allclose(scorer.neighbours([[0]]).toarray()[0], [1, 0, 0])
    np.testing.assert_allclose(scorer.score_prefixes([[0]])[0], [1, 1, 0, 0])


def test_vsknn_idf_weights_items() -> None:
    scores = vsknn(idf=True).score_prefixes([[0, 1, 2]])[0]
    # Sessions containing each item: 0..3 -> 2 of 4, 4 and 5 -> 1 of 4.
    factor = np.array([1 + math.log(2)] * 4 + [1 + math.log(4)] * 2)
    np.testing.assert_allclose(scores, np.array([13 / 6, 14 / 6, 17 / 6, 9 / 6, 1, 1 / 3]) * factor)


def test_vsknn_no_shared_item_scores_zero() -> None:
    train = make_sessions([[0, 1], [1, 2]])
    scorer = VSKNNScorer(train, 4)
    scorer.reset(1)
    np.testing.assert_array_equal(scorer.step(np.array([0]), np.array([3])), np.zeros((1, 4)))


def test_vsknn_interleaved_sessions_match_each_alone() -> None:
    seq_a, seq_b = [0, 1, 2, 3], [3, 5, 0]
    batched = vsknn(k=2, sample_size=3)
    batched.reset(2)
    got_a: list[np.ndarray] = []
    got_b: list[np.ndarray] = []
    # Steps: both rows (b first), only a, both (a first), only a.
    for rows, items in [([1, 0], [seq_b[0], seq_a[0]]), ([0], [seq_a[1]]), ([0, 1], [seq_a[2], seq_b[1]])]:
        scores = batched.step(np.array(rows), np.array(items))
        for r, s in zip(rows, scores, strict=True):
            (got_a if r == 0 else got_b).append(s)
    got_a.append(batched.step(np.array([0]), np.array([seq_a[3]]))[0])
    got_b.append(batched.step(np.array([1]), np.array([seq_b[2]]))[0])

    for seq, got in [(seq_a, got_a), (seq_b, got_b)]:
        alone = vsknn(k=2, sample_size=3)
        alone.reset(1)
        expected = [alone.step(np.array([0]), np.array([i]))[0] for i in seq]
        np.testing.assert_allclose(np.array(got), np.array(expected))
        reference = [alone.score_prefixes([seq[: n + 1]])[0] for n in range(len(seq))]
        np.testing.assert_allclose(np.array(got), np.array(reference))

    # reset() forgets the prefixes: row 0 now starts afresh.
    batched.reset(1)
    np.testing.assert_allclose(
        batched.step(np.array([0]), np.array([2]))[0], vsknn(k=2, sample_size=3).score_prefixes([[2]])[0]
    )


def test_sr_state_across_reset_and_rows_checked() -> None:
    scorer = SequentialRulesScorer(make_sessions([[0, 1], [1, 2]]), 3)
    scorer.reset(1)
    with pytest.raises(IndexError):
        scorer.step(np.array([1]), np.array([0]))
    with pytest.raises(ValueError):
        scorer.step(np.array([0]), np.array([3]))


# ---------------------------------------------------------------- brute-force reference


def reference_vsknn(
    train: list[list[int]],
    last_times: list[float],
    prefix: list[int],
    n_items: int,
    k: int,
    sample: int,
    weighting: str,
    similarity: str,
) -> np.ndarray:
    weights: dict[int, float] = {}
    for d, item in enumerate(reversed(prefix)):
        w = 1 / (d + 1) if weighting == "div" else max(1 - 0.1 * d, 0.1)
        weights[item] = max(weights.get(item, 0.0), w)
    candidates = [s for s, items in enumerate(train) if set(items) & set(weights)]
    recency = sorted(range(len(train)), key=lambda s: (last_times[s], s))
    rank = {s: r for r, s in enumerate(recency)}
    if sample and len(candidates) > sample:
        candidates = sorted(candidates, key=lambda s: rank[s])[-sample:]
    sims = {}
    for s in candidates:
        items = set(train[s])
        sim = sum(w for i, w in weights.items() if i in items)
        if similarity == "cosine":
            sim /= math.sqrt(len(weights) * len(items))
        sims[s] = sim
    chosen = sorted(sims, key=lambda s: (sims[s], rank[s]))[-k:]
    scores = np.zeros(n_items)
    for s in chosen:
        for i in set(train[s]):
            scores[i] += sims[s]
    return scores


@pytest.mark.parametrize(
    ("k", "sample", "weighting", "similarity"),
    [(3, 5, "div", "dot"), (5, 0, "linear", "cosine"), (2, 8, "div", "cosine"), (50, 50, "linear", "dot")],
)
def test_vsknn_matches_brute_force(k: int, sample: int, weighting: str, similarity: str) -> None:
    rng = np.random.default_rng(7)
    n_items = 12
    sessions = [rng.integers(0, n_items, size=int(rng.integers(1, 7))).tolist() for _ in range(40)]
    # Integer last-click times with collisions, so recency ties are exercised too.
    last_times = sorted(float(t) for t in rng.integers(100, 130, size=40))
    train = make_sessions(sessions, last_times)
    scorer = VSKNNScorer(
        train, n_items, k=k, sample_size=sample, weighting=weighting, similarity=similarity, idf=False
    )
    prefixes = [rng.integers(0, n_items, size=int(rng.integers(1, 6))).tolist() for _ in range(25)]
    got = scorer.score_prefixes(prefixes)
    for prefix, row in zip(prefixes, got, strict=True):
        expected = reference_vsknn(sessions, last_times, prefix, n_items, k, sample, weighting, similarity)
        np.testing.assert_allclose(row, expected, rtol=1e-12, atol=1e-12)


def test_sr_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    n_items = 9
    sessions = [rng.integers(0, n_items, size=int(rng.integers(1, 9))).tolist() for _ in range(30)]
    expected = np.zeros((n_items, n_items))
    for items in sessions:
        for i in range(len(items)):
            for j in range(i + 1, min(i + 4, len(items))):
                expected[items[i], items[j]] += 1 / (j - i)
    rules = SequentialRulesScorer(make_sessions(sessions), n_items, steps=3, pruning=0).rules.toarray()
    np.testing.assert_allclose(rules, expected)


# ---------------------------------------------------------------- through the evaluation loop


def test_evaluate_ranks_for_sr_and_popularity() -> None:
    train = make_sessions([[0, 1], [0, 1], [1, 2]])
    test = make_sessions([[0, 1, 2], [0, 2]])
    sr = SequentialRulesScorer(train, 3)  # rules: 0->1 = 2, 1->2 = 1
    # [0,1,2]: after 0 item 1 ranks 1, after 1 item 2 ranks 1; [0,2]: item 2 scores 0, tied with item 0 -> 3.
    np.testing.assert_array_equal(evaluation_ranks(sr, test), [-1, 1, 1, -1, 3])
    result = evaluate(sr, test, cutoffs=(1, 5))
    assert result["n_predictions"] == 3
    assert result["recall@1"] == pytest.approx(2 / 3)
    assert result["mrr@5"] == pytest.approx((1 + 1 + 1 / 3) / 3)

    pop = PopularityScorer(train, 3)  # counts [2, 3, 1]
    np.testing.assert_array_equal(evaluation_ranks(pop, test), [-1, 1, 3, -1, 3])


def test_evaluate_ranks_for_vsknn() -> None:
    test = make_sessions([[0, 1, 2], [3, 4]])
    scorer = vsknn()
    # [0]: s0 = s3 = 1 -> item scores [2, 1, 1, 0, 0, 1]; item 1 ties with items 2 and 5 -> rank 4.
    # [0, 1]: s0 = 3/2, s1 = 1, s3 = 1/2 -> [2, 5/2, 3/2, 1, 0, 1/2]; item 2 ranks 3.
    # [3]: s1 = s2 = 1 -> [0, 1, 1, 2, 1, 0]; item 4 ties with items 1 and 2 -> rank 4.
    np.testing.assert_array_equal(evaluation_ranks(scorer, test), [-1, 4, 3, -1, 4])
