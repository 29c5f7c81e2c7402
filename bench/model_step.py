"""Microbenchmark of the serving model step: µs per event for the model step + full scoring + top-k, by batch size,
for GRU4REC, SASRec (random weights) and the served default blend (random neural members, the V-SKNN index of
the YOOCHOOSE sample), written and loaded as real artifacts."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _support import per_event_us

from modelkit.artifact import load_artifact
from modelkit.item_index import ItemIndex
from stream_worker.serving import ServingModel
from tests.support.artifacts import random_artifact, random_rsc15_blend_artifact
from tests.support.workloads import RSC15_DIR

N_ITEMS, BATCHES = (3_000, 40_000), (1, 64, 512)


def serving_model(n_items: int, hidden: int, models_dir: Path, family: str = "gru4rec", n_layers: int = 1,
                  max_len: int = 50, n_heads: int = 1) -> ServingModel:
    """A random model of the given size, written and loaded as a real artifact."""
    path = random_artifact(models_dir, f"bench-{family}-{n_items}", family=family,
                           items=[str(i) for i in range(n_items)], layers=(hidden,) * n_layers, max_len=max_len,
                           n_heads=n_heads, popularity=np.ones(n_items, np.int64), window=(0.0, 0.0),
                           make_current=False)
    return ServingModel(load_artifact(path))


def gru4rec_us(n_items: int, batch: int, hidden: int, k: int, seconds: float, repeats: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as models_dir:
        model = serving_model(n_items, hidden, Path(models_dir))
    return per_event_us(model, batch, k, seconds, repeats=repeats)


def window_lengths(max_len: int) -> np.ndarray | None:
    """Clicks in a session's window at each click of the YOOCHOOSE sample (train_full), or None without it."""
    path = RSC15_DIR / "yoochoose-clicks-100k_train_full.txt"
    if not path.is_file():
        return None
    from offline.loaders import load_events

    frame = load_events(path, "session-tsv")
    return np.minimum(frame.groupby("session_id").cumcount().to_numpy() + 1, max_len)


def windows_before(model: ServingModel, batch: int, lengths: np.ndarray, n_batches: int = 64) -> np.ndarray:
    """SASRec windows (n_batches, batch, max_len) holding ``length - 1`` clicks each, lengths drawn from ``lengths``:
    the states before clicks whose windows then hold ``length`` clicks."""
    rng = np.random.default_rng(1)
    max_len = model.network.state_size
    drawn = rng.choice(lengths, size=(n_batches, batch)) - 1
    windows = rng.integers(1, len(model.item_ids) + 1, size=(n_batches, batch, max_len)).astype(np.float32)
    windows[np.arange(max_len) < max_len - drawn[..., None]] = 0.0
    return windows


def sasrec_table(args: argparse.Namespace, gru: dict[tuple[int, int], float]) -> None:
    """SASRec beside GRU4REC: full windows (every session >= max_len clicks) and YOOCHOOSE window lengths."""
    lengths = window_lengths(args.max_len)
    print(f"\nSASRec: max_len {args.max_len}, hidden {args.sasrec_hidden}, {args.blocks} blocks, {args.heads} "
          f"head(s); us per event (step + score + top-{args.k}); GRU4REC ({args.hidden} units) from above")
    if lengths is not None:
        print(f"YOOCHOOSE windows: clicks in the window at each click of train_full (mean {lengths.mean():.1f})")
    print(f"{'items':>7}{'batch':>7}{'full win':>11}{'YOOCHOOSE':>11}{'GRU4REC':>11}{'full/GRU':>10}{'YC/GRU':>9}")
    figures = []
    for n_items in N_ITEMS:
        with tempfile.TemporaryDirectory() as models_dir:
            model = serving_model(n_items, args.sasrec_hidden, Path(models_dir), "sasrec", args.blocks,
                                  args.max_len, args.heads)
        for batch in BATCHES:
            full_windows = windows_before(model, batch, np.full(1, args.max_len + 1))  # full after the click too
            full, _ = per_event_us(model, batch, args.k, args.seconds, full_windows, args.repeats)
            real = (per_event_us(model, batch, args.k, args.seconds, windows_before(model, batch, lengths),
                                 args.repeats)[0] if lengths is not None else float("nan"))
            base = gru[(n_items, batch)]
            print(f"{n_items:>7}{batch:>7}{full:>11.1f}{real:>11.1f}{base:>11.1f}{full / base:>10.1f}"
                  f"{real / base:>9.1f}")
            figures.append(f"sasrec_us_{n_items // 1000}k_b{batch}_full={full:.1f}")
            figures.append(f"sasrec_us_{n_items // 1000}k_b{batch}_yoochoose={real:.1f}")
    print(" ".join(figures))


def session_states(model: ServingModel, index: ItemIndex, path: Path) -> np.ndarray:
    """The state of every session of the log at ``path`` before each of its clicks (items the model does not know
    left out): (n_clicks, state_size), real prefixes as the worker holds them."""
    from offline.loaders import load_events
    from offline.pipeline import to_sessions

    frame = load_events(path, "session-tsv")
    sessions = to_sessions(frame[frame["item_id"].isin(set(index.ids.tolist()))], index)
    states = np.repeat(model.initial_state()[None, :], sessions.n_sessions, axis=0)  # (n_sessions, state_size)
    before = []
    for position in range(int(sessions.lengths.max())):
        rows = np.flatnonzero(sessions.lengths > position)
        before.append(states[rows])
        states[rows] = model.step(states[rows], sessions.item_idx[sessions.offsets[rows] + position])
    return np.concatenate(before)


def blend_table(args: argparse.Namespace, gru: dict[tuple[int, int], float]) -> None:
    """The served default (GRU4REC + SASRec + V-SKNN blend) over the YOOCHOOSE catalogue, states of real prefixes."""
    with tempfile.TemporaryDirectory() as models_dir:
        path = random_rsc15_blend_artifact(Path(models_dir), "bench-blend", make_current=False)
        artifact = load_artifact(path)
        model = ServingModel(artifact)
    states = session_states(model, artifact.item_index, RSC15_DIR / "yoochoose-clicks-100k_train_valid.txt")
    rng = np.random.default_rng(2)
    print(f"\nServed default blend ({artifact.manifest.n_layers} members, {artifact.manifest.n_items} items, states "
          f"before the clicks of train_valid); us per event (step + score + top-{args.k})")
    print(f"{'batch':>7}{'blend':>11}{'GRU4REC 3k':>12}{'blend/GRU':>11}")
    figures = []
    for batch in BATCHES:
        before = states[rng.integers(0, len(states), size=(64, batch))]  # (64, batch, state_size)
        cost, _ = per_event_us(model, batch, args.k, args.seconds, before, args.repeats)
        base = gru[(3000, batch)]
        print(f"{batch:>7}{cost:>11.1f}{base:>12.1f}{cost / base:>11.1f}")
        figures.append(f"blend_us_b{batch}={cost:.1f}")
    print(" ".join(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=100, help="GRU4REC units")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--repeats", type=int, default=1, help="report the best of this many measurements")
    parser.add_argument("--sasrec-hidden", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=2, help="SASRec blocks")
    parser.add_argument("--heads", type=int, default=1, help="SASRec attention heads")
    parser.add_argument("--max-len", type=int, default=50, help="SASRec window")
    parser.add_argument("--no-sasrec", action="store_true", help="no SASRec table")
    parser.add_argument("--no-blend", action="store_true", help="no table of the served default blend")
    args = parser.parse_args()
    print(f"{'items':>7}{'batch':>7}{'us/event':>11}{'step only':>11}{'events/s':>11}")
    results = {}
    for n_items in N_ITEMS:
        for batch in BATCHES:
            full, step = gru4rec_us(n_items, batch, args.hidden, args.k, args.seconds, args.repeats)
            results[(n_items, batch)] = full
            print(f"{n_items:>7}{batch:>7}{full:>11.1f}{step:>11.1f}{1e6 / full:>11.0f}")
    # Baseline in the same run: batch 1 (one event at a time) against batching at 64 and 512.
    print(" ".join(
        f"us_per_event_{n // 1000}k_b{b}={results[(n, b)]:.1f}" for n, b in sorted(results)
    ) + f" speedup_3k_b64_vs_b1={results[(3000, 1)] / results[(3000, 64)]:.1f}")
    if not args.no_sasrec:
        sasrec_table(args, results)
    if not args.no_blend and (RSC15_DIR / "yoochoose-clicks-100k_train_tr.txt").is_file():
        blend_table(args, results)


if __name__ == "__main__":
    main()
