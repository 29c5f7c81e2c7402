"""Evaluation protocols: which events are targets, seen-item exclusion, sampled negatives, last-item test sets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offline.session_arrays import SessionArrays

TARGETS = ("next-click", "last-item")


@dataclass(frozen=True)
class EvalProtocol:
    """How the targets of test sequences are chosen and ranked; the default is the session-based protocol.

    ``targets``: "next-click" ranks every event of a session but the first, given its prefix; "last-item"
    ranks only each sequence's last event, given everything before it (leave-one-out test sets).
    ``exclude_seen``: items already in the prefix cannot be recommended (their scores become -inf before
    ranking, so a target that repeats an earlier item ranks last). ``sampled_negatives`` > 0: each target is
    ranked against that many distinct items drawn uniformly from the catalogue minus every item of its
    sequence (its future ones included), seeded by ``seed`` and the sequence's position in the test set;
    0: against the whole catalogue.
    """

    targets: str = "next-click"
    exclude_seen: bool = False
    sampled_negatives: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.targets not in TARGETS:
            raise ValueError(f"unknown protocol {self.targets!r}; expected one of {', '.join(TARGETS)}")
        if self.sampled_negatives < 0:
            raise ValueError(f"sampled_negatives must be >= 0 (0 = full ranking), got {self.sampled_negatives}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @property
    def sampled(self) -> bool:
        """Whether targets are ranked against sampled negatives rather than the whole catalogue."""
        return self.sampled_negatives > 0

    def describe(self) -> str:
        """One line, e.g. "last-item targets, seen items excluded, full ranking"."""
        parts = [f"{self.targets} targets"]
        if self.exclude_seen:
            parts.append("seen items excluded")
        if self.sampled:
            parts.append(f"SAMPLED ranking against {self.sampled_negatives} negatives, seed {self.seed}")
        else:
            parts.append("full ranking")
        return ", ".join(parts)

    def sampled_header(self) -> str:
        """The line printed above sampled metrics, so nobody mistakes them for full-ranking figures."""
        return (
            f"sampled metrics: target vs {self.sampled_negatives} random unseen items "
            "(not comparable with full ranking)"
        )

    def as_dict(self) -> dict[str, str | int | bool]:
        """JSON-ready description: targets, exclude_seen, ranking ("full" or "sampled"), negatives and seed."""
        result: dict[str, str | int | bool] = {
            "targets": self.targets,
            "exclude_seen": self.exclude_seen,
            "ranking": "sampled" if self.sampled else "full",
        }
        if self.sampled:
            result.update(sampled_negatives=self.sampled_negatives, seed=self.seed)
        return result


NEXT_CLICK = EvalProtocol()


def last_item_sessions(sessions: SessionArrays, allowed: np.ndarray | None = None) -> SessionArrays:
    """The sequences whose last event can be ranked, with unknown prefix events removed.

    An event is known when its item index is >= 0 (not UNKNOWN_ITEM) and, with ``allowed`` ((n_items,)
    bool), ``allowed[item]``. A sequence whose last event is unknown is dropped whole (ranking the event
    before it instead would change the protocol); so are sequences left without a prefix (< 2 events).
    Sequences keep their order.
    """
    items = sessions.item_idx
    known = items >= 0
    if allowed is not None:
        known &= np.asarray(allowed, dtype=bool)[np.where(known, items, 0)]
    lengths = sessions.lengths
    of_event = sessions.event_sessions
    last_known = np.zeros(sessions.n_sessions, dtype=bool)
    non_empty = lengths > 0
    last_known[non_empty] = known[sessions.offsets[1:][non_empty] - 1]
    keep = known & last_known[of_event]
    kept_lengths = np.bincount(of_event[keep], minlength=sessions.n_sessions)
    keep &= kept_lengths[of_event] >= 2
    kept_lengths = np.where(kept_lengths >= 2, kept_lengths, 0)
    kept_sessions = kept_lengths > 0
    offsets = np.concatenate([[0], np.cumsum(kept_lengths[kept_sessions])]).astype(np.int64)
    return SessionArrays(items[keep], sessions.timestamps[keep], offsets, sessions.session_ids[kept_sessions])


def draw_negatives(rng: np.random.Generator, excluded: np.ndarray, n: int) -> np.ndarray:
    """``min(n, allowed)`` distinct item indices drawn uniformly from those not ``excluded`` ((n_items,) bool).

    Few exclusions: the first ``n`` distinct values of uniform draws, rejecting excluded items (O(n));
    otherwise the ``n`` smallest of uniform random keys over the allowed items. Both give every subset of
    ``n`` allowed items the same probability.
    """
    n_items = len(excluded)
    allowed = n_items - int(np.count_nonzero(excluded))
    if allowed <= 2 * n:
        if allowed == 0:
            return np.zeros(0, dtype=np.int64)
        keys = rng.random(n_items)
        keys[excluded] = np.inf
        k = min(n, allowed)
        return np.argpartition(keys, k - 1)[:k].astype(np.int64)
    picked = np.zeros(0, dtype=np.int64)
    while len(picked) < n:
        candidates = rng.integers(0, n_items, size=2 * n)
        merged = np.concatenate([picked, candidates[~excluded[candidates]]])
        _, first = np.unique(merged, return_index=True)
        picked = merged[np.sort(first)]  # distinct, in order of first draw
    return picked[:n]


class NegativeSampler:
    """Sampled negatives for the sequences ``first``..``stop - 1`` of a test set, one seeded stream each.

    Sequence ``s`` draws from ``default_rng([seed, s])``, one draw per ranked target in position order, so
    the negatives do not depend on how sequences are batched. Its own items are never drawn.
    """

    def __init__(self, test: SessionArrays, first: int, stop: int, n_items: int, n: int, seed: int) -> None:
        self.n = n
        lengths = test.lengths[first:stop]
        events = slice(int(test.offsets[first]), int(test.offsets[stop]))
        self.excluded = np.zeros((stop - first, n_items), dtype=bool)  # (chunk, n_items): the sequence's items
        self.excluded[np.repeat(np.arange(stop - first), lengths), test.item_idx[events]] = True
        self.generators = [np.random.default_rng([seed, s]) for s in range(first, stop)]

    def draw(self, rows: np.ndarray) -> np.ndarray:
        """Negatives for one target of each of ``rows`` (chunk-local), (len(rows), n) int64, -1 padded."""
        negatives = np.full((len(rows), self.n), -1, dtype=np.int64)
        for i, row in enumerate(np.asarray(rows).tolist()):
            drawn = draw_negatives(self.generators[row], self.excluded[row], self.n)
            negatives[i, : len(drawn)] = drawn
        return negatives
