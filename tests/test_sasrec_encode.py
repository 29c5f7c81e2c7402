"""SASRec's fast encode (windows grouped by length, empty leading slots left out) against the full-window pass:
the speed-up must not change the results beyond float32 rounding."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from modelkit.sasrec import LENGTH_GROUPS, SASRecNumpy, initial_weights, layer_norm

N_ITEMS, MAX_LEN = 300, 50


def _model(hidden: int, blocks: int, heads: int, seed: int = 0, noise: float = 0.05) -> SASRecNumpy:
    rng = np.random.default_rng(seed)
    weights = initial_weights(N_ITEMS, hidden, blocks, MAX_LEN, seed=seed)
    return SASRecNumpy({k: (v + rng.normal(0, noise, v.shape)).astype(np.float32) for k, v in weights.items()}, heads)


def _windows(lengths: np.ndarray, seed: int = 1) -> np.ndarray:
    """(len(lengths), MAX_LEN) windows of item index + 1, the last ``lengths[i]`` slots of row i filled."""
    rng = np.random.default_rng(seed)
    windows = rng.integers(1, N_ITEMS + 1, size=(len(lengths), MAX_LEN))
    windows[np.arange(MAX_LEN)[None, :] < MAX_LEN - lengths[:, None]] = 0
    return windows


def _full_window(model: SASRecNumpy, windows: np.ndarray) -> np.ndarray:
    """The encoder over all ``max_len`` slots of every row at once (what encode computed before the grouping)."""
    return model._encode_columns(windows, windows > 0, model.max_len)


def _float64_twin(model: SASRecNumpy) -> SASRecNumpy:
    twin = copy.copy(model)
    twin.items, twin.positions = model.items.astype(np.float64), model.positions.astype(np.float64)
    twin.final_norm = tuple(a.astype(np.float64) for a in model.final_norm)
    twin.blocks = [{role: a.astype(np.float64) for role, a in block.items()} for block in model.blocks]
    return twin


def test_layer_norm_in_place_is_the_textbook_formula_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (7, 5, 64)).astype(np.float32)
    gamma, beta = rng.normal(1, 0.2, 64).astype(np.float32), rng.normal(0, 0.2, 64).astype(np.float32)
    mean = x.mean(axis=-1, keepdims=True)
    textbook = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + 1e-8) * gamma + beta
    before = x.copy()
    np.testing.assert_array_equal(layer_norm(x, gamma, beta), textbook)
    np.testing.assert_array_equal(x, before)  # the input is left alone


def test_full_windows_take_the_unchanged_path_bit_for_bit() -> None:
    model = _model(64, 2, 1)
    windows = _windows(np.full(70, MAX_LEN))
    np.testing.assert_array_equal(model.encode(windows), _full_window(model, windows))


@pytest.mark.parametrize(("hidden", "blocks", "heads"), [(64, 2, 1), (32, 1, 2), (16, 3, 4)])
def test_grouped_encode_equals_the_full_window_pass_up_to_float32_rounding(hidden: int, blocks: int,
                                                                          heads: int) -> None:
    model = _model(hidden, blocks, heads)
    rng = np.random.default_rng(2)
    lengths = np.concatenate([rng.integers(0, MAX_LEN + 1, 200), [0, 1, *LENGTH_GROUPS, MAX_LEN]])
    windows = _windows(lengths)
    windows[0, MAX_LEN - 3] = 0  # a gap inside a window: a masked key within the kept columns
    grouped = model.encode(windows)
    current = _full_window(model, windows)
    assert grouped.shape == (len(lengths), hidden) and grouped.dtype == np.float32
    np.testing.assert_allclose(grouped, current, rtol=0, atol=1e-5)
    # Both are float32 evaluations of the same math: the grouped one is no further from a float64 evaluation
    # than the full-window pass is (float32 rounding of either is ~1e-6 here, matrix products of other shapes
    # round differently).
    exact = _full_window(_float64_twin(model), windows)
    assert np.abs(grouped - exact).max() <= 2 * np.abs(current - exact).max() + 1e-6
    # Row by row, one session at a time (as a worker batch of one), and the scores the worker ranks by.
    for row in (0, 1, len(lengths) - 1):
        np.testing.assert_allclose(model.encode(windows[row : row + 1])[0], current[row], rtol=0, atol=1e-5)
    np.testing.assert_allclose(model.scores(windows.astype(np.float32)), current @ model.items.T, rtol=0, atol=2e-5)
    assert model.encode(windows[:0]).shape == (0, hidden)
