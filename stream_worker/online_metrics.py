"""Online evaluation: hit@k and reciprocal rank of each click in the prediction that preceded it, per model version."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from schemas import RankingCounts

CUTOFFS = (1, 5, 10, 20)


@dataclass
class _Totals:
    n: int = 0
    hits: dict[int, int] = field(default_factory=lambda: dict.fromkeys(CUTOFFS, 0))
    reciprocal_rank_sum: float = 0.0

    def add(self, rank: int, sign: int = 1) -> None:
        self.n += sign
        if rank > 0:
            for k in CUTOFFS:
                if rank <= k:
                    self.hits[k] += sign
            if rank <= CUTOFFS[-1]:
                self.reciprocal_rank_sum += sign / rank

    def counts(self) -> RankingCounts:
        return RankingCounts(
            n=self.n, hits_at_1=self.hits[1], hits_at_5=self.hits[5], hits_at_10=self.hits[10],
            hits_at_20=self.hits[20], reciprocal_rank_sum=max(self.reciprocal_rank_sum, 0.0),
        )


@dataclass
class _VersionMetrics:
    window_size: int
    since_start: _Totals = field(default_factory=_Totals)
    window: _Totals = field(default_factory=_Totals)
    recent: deque[int] = field(default_factory=deque)

    def add(self, rank: int) -> None:
        self.since_start.add(rank)
        self.window.add(rank)
        self.recent.append(rank)
        if len(self.recent) > self.window_size:
            self.window.add(self.recent.popleft(), sign=-1)


class OnlineEvaluator:
    """Rolling (last ``window_size``) and since-start ranking counts for every model version seen."""

    def __init__(self, window_size: int = 10_000) -> None:
        self.window_size = window_size
        self._versions: dict[str, _VersionMetrics] = {}

    def add(self, version: str, rank: int) -> None:
        """Record one evaluated prediction: ``rank`` of the clicked item in it (0 = not in the top-k)."""
        metrics = self._versions.get(version)
        if metrics is None:
            metrics = self._versions[version] = _VersionMetrics(self.window_size)
        metrics.add(rank)

    def versions(self) -> list[str]:
        return list(self._versions)

    def counts(self, version: str) -> tuple[RankingCounts, RankingCounts]:
        """(since start, last window) counts of one version."""
        metrics = self._versions[version]
        return metrics.since_start.counts(), metrics.window.counts()


def summary(counts: RankingCounts) -> dict[str, float]:
    """Recall@k (hit rate) and MRR@20 from counts."""
    n = max(counts.n, 1)
    return {
        "n": counts.n,
        **{f"recall@{k}": getattr(counts, f"hits_at_{k}") / n for k in CUTOFFS},
        "mrr@20": counts.reciprocal_rank_sum / n,
    }
