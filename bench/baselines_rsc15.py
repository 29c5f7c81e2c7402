"""Evaluate the popularity, SR and V-SKNN baselines on the rsc15-100k split (optionally a parameter grid).

Usage:
    .venv/bin/python bench/baselines_rsc15.py                 # the three baselines with class defaults
    .venv/bin/python bench/baselines_rsc15.py --grid          # + SR and V-SKNN grids on the test split
    .venv/bin/python bench/baselines_rsc15.py --grid --inner  # grids on an inner split of train (last day)
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modelkit.item_index import ItemIndex  # noqa: E402
from offline.baselines import SR_WEIGHTINGS, PopularityScorer, SequentialRulesScorer, VSKNNScorer  # noqa: E402
from offline.evaluate import SessionScorer, evaluate  # noqa: E402
from offline.session_arrays import SessionArrays  # noqa: E402

DATA = Path("/work/shared/data/rsc15-100k")
TRAIN = DATA / "yoochoose-clicks-100k_train_tr.txt"
TEST = DATA / "yoochoose-clicks-100k_train_valid.txt"
CUTOFFS = (10, 20)
DAY = 86400.0


def load(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"SessionId": str, "ItemId": str, "Time": float})


def to_arrays(frame: pd.DataFrame, index: ItemIndex) -> SessionArrays:
    return SessionArrays.from_columns(
        frame["SessionId"].to_numpy(), frame["ItemId"].to_numpy(), frame["Time"].to_numpy(), index
    )


def build_split(train_df: pd.DataFrame, test_df: pd.DataFrame) -> tuple[SessionArrays, SessionArrays, int]:
    """Item index from train; test keeps known items and then sessions with >= 2 events."""
    index = ItemIndex.from_events(train_df["ItemId"])
    test_df = test_df[test_df["ItemId"].isin(set(index.ids.tolist()))]
    test_df = test_df[test_df.groupby("SessionId")["SessionId"].transform("size") >= 2]
    return to_arrays(train_df, index), to_arrays(test_df, index), len(index)


def inner_split(train_df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sessions whose last click falls in the last day of ``train_df`` become the inner test set."""
    last = train_df.groupby("SessionId")["Time"].transform("max")
    cut = train_df["Time"].max() - DAY
    return train_df[last < cut], train_df[last >= cut]


def run(make: Callable[[], SessionScorer], test: SessionArrays) -> dict[str, float]:
    start = time.perf_counter()
    scorer = make()
    built = time.perf_counter()
    result = evaluate(scorer, test, CUTOFFS)
    result["fit_s"] = built - start
    result["eval_s"] = time.perf_counter() - built
    return result


def row(label: str, result: dict[str, float]) -> str:
    metrics = " ".join(f"{result[f'{m}@{k}']:9.4f}" for m in ("recall", "mrr") for k in CUTOFFS)
    return f"{label:<58} {metrics} {result['fit_s']:7.2f} {result['eval_s']:7.2f}"


def header() -> str:
    names = " ".join(f"{f'{m}@{k}':>9}" for m in ("Recall", "MRR") for k in CUTOFFS)
    return f"{'model':<58} {names} {'fit_s':>7} {'eval_s':>7}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid", action="store_true", help="also run the SR and V-SKNN grids")
    parser.add_argument("--inner", action="store_true", help="tune on an inner time split of train")
    args = parser.parse_args()

    train_df, test_df = load(TRAIN), load(TEST)
    if args.inner:
        train_df, test_df = inner_split(train_df)
    train, test, n_items = build_split(train_df, test_df)
    print(
        f"train: {train.n_sessions} sessions, {train.n_events} events, {n_items} items; "
        f"test: {test.n_sessions} sessions, {test.n_events - test.n_sessions} predictions"
        + (" (inner split)" if args.inner else "")
    )
    print(header())
    print(row("pop", run(partial(PopularityScorer, train, n_items), test)))
    print(row("sr (defaults)", run(partial(SequentialRulesScorer, train, n_items), test)))
    print(row("vsknn (defaults)", run(partial(VSKNNScorer, train, n_items), test)), flush=True)
    if not args.grid:
        return

    print("\nSR grid")
    print(header())
    for steps, pruning, weighting in itertools.product((1, 2, 3, 5, 10, 15), (0, 10, 20, 50), SR_WEIGHTINGS):
        label = f"sr steps={steps} pruning={pruning} weighting={weighting}"
        sr = partial(SequentialRulesScorer, train, n_items, steps=steps, weighting=weighting, pruning=pruning)
        print(row(label, run(sr, test)), flush=True)

    print("\nV-SKNN grid")
    print(header())
    for k, sample, weighting, similarity, idf in itertools.product(
        (50, 100, 200), (500, 1000, 2000), ("div", "linear"), ("dot", "cosine"), (False, True)
    ):
        label = f"vsknn k={k} sample={sample} w={weighting} sim={similarity} idf={int(idf)}"
        knn = partial(VSKNNScorer, train, n_items, k, sample, weighting, similarity, idf)
        print(row(label, run(knn, test)), flush=True)


if __name__ == "__main__":
    main()
