"""Negative samples shared by a mini-batch (popularity^alpha, drawn in bulk) and the item rows each step touches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offline.batching import SessionParallelBatches


class NegativeSampler:
    """Draws ``n_sample`` negatives per step for many steps at once, in O(1) per sample (Walker's alias method)."""

    def __init__(
        self,
        item_counts: np.ndarray,  # (n_items,) training clicks per item
        n_sample: int,
        alpha: float,
        rng: np.random.Generator,
    ) -> None:
        if n_sample < 0:
            raise ValueError("n_sample must be >= 0")
        weights = np.asarray(item_counts, dtype=np.float64) ** alpha
        if weights.sum() <= 0:
            raise ValueError("item counts must not all be zero")
        self.n_sample = n_sample
        self.keep, self.alias = _alias_table(weights / weights.sum())
        self._rng = rng

    def take(self, n_steps: int) -> np.ndarray:
        """Negatives for the next ``n_steps`` steps: (n_steps, n_sample) int32 item indices."""
        size = (n_steps, self.n_sample)
        column = self._rng.integers(0, len(self.keep), size=size, dtype=np.int32)
        kept = self._rng.random(size, dtype=np.float32) < self.keep[column]
        return np.where(kept, column, self.alias[column])


def _alias_table(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table of a distribution over n outcomes: column ``i`` (drawn uniformly) yields ``i`` with
    probability ``keep[i]``, else ``alias[i]``; keep (n,) float32, alias (n,) int32."""
    n = len(probabilities)
    scaled = probabilities * n  # (n,) mean 1
    keep = np.ones(n, np.float64)
    alias = np.arange(n, dtype=np.int32)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        low, high = small.pop(), large[-1]
        keep[low], alias[low] = scaled[low], high
        scaled[high] -= 1.0 - scaled[low]
        if scaled[high] < 1.0:
            small.append(large.pop())
    return keep.astype(np.float32), alias  # leftovers (rounding) keep themselves with probability 1


@dataclass(frozen=True)
class StepItems:
    """The item rows each training step touches, each once: the step's distinct samples (ascending), then its
    targets and then its inputs that were not sampled, then padding (item 0), to one width for all steps.

    A step's candidates are its targets, then these items weighted by ``counts``: the sampled losses count an
    item drawn w times as w copies, so duplicates cost nothing and the item gradients need no summing up.
    ``width`` is rounded up to a multiple of ``WIDTH_MULTIPLE`` so that few shapes get compiled.
    """

    items: np.ndarray  # (n_steps, width) int32
    counts: np.ndarray  # (n_steps, width) float32 how often each item was drawn (0.0 if not sampled, padding)
    target_columns: np.ndarray  # (n_steps, batch) int32 column of each slot's target in items (0: empty slot)
    input_columns: np.ndarray  # (n_steps, batch) int32 column of each slot's input in items (0: empty slot)
    n_candidates: np.ndarray  # (n_steps,) int32 leading items that are samples or targets (their bias is trained)
    n_rows: np.ndarray  # (n_steps,) int32 leading items that are not padding


WIDTH_MULTIPLE = 64


def step_items(samples: np.ndarray, batches: SessionParallelBatches) -> StepItems:
    """The items of every step from its (n_steps, n_sample) samples and its batch (empty slots left out)."""
    n_steps, n_sample = samples.shape
    batch = batches.inputs.shape[1]
    n_keys = int(max(samples.max(initial=0), batches.inputs.max(initial=0), batches.targets.max(initial=0))) + 1
    # The distinct samples of each step, ascending, with their counts.
    ordered = np.sort(samples, axis=1)
    first = np.ones(ordered.shape, bool)  # (n_steps, n_sample) first occurrence of an item in its step
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    starts = np.flatnonzero(first)  # flat positions of first occurrences (every row starts with one)
    sample_step, sample_column = starts // max(n_sample, 1), (np.cumsum(first, axis=1) - 1).ravel()[starts]
    sample_keys = sample_step * n_keys + ordered.ravel()[starts]  # (n_distinct_total,) ascending
    n_sampled = first.sum(axis=1)  # (n_steps,)
    # Targets (kind 0) and inputs (kind 1) of occupied slots: found among the samples, or extra items.
    step = np.repeat(np.arange(n_steps), 2 * batch)
    item = np.concatenate([batches.targets, batches.inputs], axis=1).ravel().astype(np.int64)
    kind = np.tile(np.repeat([0, 1], batch), n_steps)
    keys = step * n_keys + item  # (n_steps * 2 * batch,)
    found = np.minimum(np.searchsorted(sample_keys, keys), max(len(sample_keys) - 1, 0))
    occupied = np.concatenate([batches.valid, batches.valid], axis=1).ravel()
    sampled = occupied & (sample_keys[found] == keys) if len(sample_keys) else np.zeros(len(keys), bool)
    column = np.zeros(len(keys), np.int64)
    column[sampled] = sample_column[found[sampled]]
    extra = occupied & ~sampled
    # Each extra item once per step, as a target if it is one; ordered by (step, kind, item) after the samples.
    by_item = np.lexsort((kind[extra], keys[extra]))
    extra_keys, extra_kind = keys[extra][by_item], kind[extra][by_item]
    once = np.ones(len(extra_keys), bool)
    once[1:] = extra_keys[1:] != extra_keys[:-1]
    unique_keys, unique_kind = extra_keys[once], extra_kind[once]  # ascending keys
    unique_step = unique_keys // n_keys
    placed = np.lexsort((unique_keys, unique_kind, unique_step))  # (step, kind, item) order
    rank = np.empty(len(placed), np.int64)
    step_first = np.searchsorted(unique_step[placed], unique_step[placed])  # first extra of the same step
    rank[placed] = np.arange(len(placed)) - step_first
    unique_column = n_sampled[unique_step] + rank
    column[extra] = unique_column[np.searchsorted(unique_keys, keys[extra])]
    n_extra = np.bincount(unique_step, minlength=n_steps)
    n_extra_targets = np.bincount(unique_step[unique_kind == 0], minlength=n_steps)
    n_rows = n_sampled + n_extra
    width = -(-int(n_rows.max(initial=0)) // WIDTH_MULTIPLE) * WIDTH_MULTIPLE
    items = np.zeros((n_steps, width), np.int32)
    counts = np.zeros((n_steps, width), np.float32)
    items[sample_step, sample_column] = ordered.ravel()[starts]
    counts[sample_step, sample_column] = np.diff(np.append(starts, ordered.size))
    items[unique_step, unique_column] = unique_keys % n_keys
    columns = column.reshape(n_steps, 2 * batch).astype(np.int32)
    return StepItems(
        items, counts, columns[:, :batch], columns[:, batch:],
        (n_sampled + n_extra_targets).astype(np.int32), n_rows.astype(np.int32),
    )
