"""Negative samples shared by a mini-batch, drawn proportional to popularity^alpha from a pre-generated cache."""

from __future__ import annotations

import numpy as np


class SampleCache:
    """Pre-generates ``n_sample`` negatives per step for many steps at once, refilling when used up."""

    def __init__(
        self,
        item_counts: np.ndarray,  # (n_items,) training clicks per item
        n_sample: int,
        alpha: float,
        rng: np.random.Generator,
        cache_size: int = 10_000_000,
    ) -> None:
        if n_sample < 0:
            raise ValueError("n_sample must be >= 0")
        weights = np.asarray(item_counts, dtype=np.float64) ** alpha
        if weights.sum() <= 0:
            raise ValueError("item counts must not all be zero")
        self.cumulative = np.cumsum(weights) / weights.sum()  # (n_items,)
        self.cumulative[-1] = 1.0
        self.n_sample = n_sample
        self.steps_per_refill = max(cache_size // max(n_sample, 1), 1)
        self._rng = rng
        self._cache = np.zeros((0, n_sample), np.int64)
        self._pointer = 0

    def _refill(self) -> None:
        uniform = self._rng.random(self.steps_per_refill * self.n_sample)
        samples = np.searchsorted(self.cumulative, uniform, side="right")
        self._cache = np.minimum(samples, len(self.cumulative) - 1).reshape(self.steps_per_refill, self.n_sample)
        self._pointer = 0

    def take(self, n_steps: int) -> np.ndarray:
        """Negatives for the next ``n_steps`` steps: (n_steps, n_sample) item indices."""
        rows = []
        needed = n_steps
        while needed > 0:
            if self._pointer >= len(self._cache):
                self._refill()
            got = self._cache[self._pointer : self._pointer + needed]
            self._pointer += len(got)
            needed -= len(got)
            rows.append(got)
        return np.concatenate(rows) if rows else np.zeros((0, self.n_sample), np.int64)
