"""Training speed: the whole training call of `streamrec train --preset bpr-max`, `--preset xe` and of the default
(`streamrec train` without a model flag: the blend) on the YOOCHOOSE sample's train_full, each in a fresh process,
optionally against another checkout (the old code); then the default's time over bpr-max's."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "rsc15-100k" / "yoochoose-clicks-100k_train_full.txt"
PRESETS = ("bpr-max", "xe", "default")


def measure(data: Path, preset: str) -> dict[str, float]:
    """Time one training call (sessions, trainer, every epoch) of ``preset`` with the code on sys.path."""
    from modelkit.item_index import ItemIndex
    from offline.blend_params import BlendParams
    from offline.hyperparams import BPRMAX_REFERENCE, XE_REFERENCE
    from offline.loaders import load_events
    from offline.pipeline import TrainingParams, train_model

    frame = load_events(data, "session-tsv")
    presets: dict[str, TrainingParams] = {"bpr-max": BPRMAX_REFERENCE, "xe": XE_REFERENCE, "default": BlendParams()}
    params = presets[preset]
    started = time.perf_counter()
    model = train_model(frame, params, ItemIndex.from_events(frame["item_id"]), progress=False)
    return {"seconds": time.perf_counter() - started, "fit_seconds": model.report.seconds,
            "events_per_s": model.report.events_per_s,
            "final_loss": model.report.epoch_losses[-1] if model.report.epoch_losses else float("nan")}


def run_in(root: Path, data: Path, preset: str) -> dict[str, float]:
    """``measure`` in a fresh process that imports the code of the checkout at ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", preset, "--data", str(data)]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--preset", choices=PRESETS, action="append", help="default: all three")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per preset and checkout (median)")
    parser.add_argument("--old", type=Path, help="another checkout to time the same way (e.g. a git worktree)")
    parser.add_argument("--worker", choices=PRESETS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.data, args.worker)))
        return
    checkouts = {"new": ROOT, **({"old": args.old.resolve()} if args.old else {})}
    print(f"{'preset':<9}{'code':<5}{'train s':>9}{'fit s':>8}{'events/s':>10}{'loss':>9}  runs (train s)")
    new_seconds: dict[str, float] = {}
    for preset in args.preset or PRESETS:
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
        for _ in range(args.repeats):  # old and new back to back: a shared machine's load hits both alike
            for name, root in checkouts.items():
                runs[name].append(run_in(root, args.data, preset))
        medians = {name: {key: statistics.median(r[key] for r in results) for key in results[0]}
                   for name, results in runs.items()}
        for name, m in medians.items():
            seconds = " ".join(f"{r['seconds']:.1f}" for r in runs[name])
            print(f"{preset:<9}{name:<5}{m['seconds']:>9.1f}{m['fit_seconds']:>8.1f}{m['events_per_s']:>10.0f}"
                  f"{m['final_loss']:>9.4f}  {seconds}")
        if "old" in medians:
            ratio = medians["old"]["seconds"] / medians["new"]["seconds"]
            print(f"{preset:<9}speed-up (old / new train s): {ratio:.2f}x")
        new_seconds[preset] = medians["new"]["seconds"]
    if {"default", "bpr-max"} <= new_seconds.keys():
        print(f"default_train_s={new_seconds['default']:.1f} bprmax_train_s={new_seconds['bpr-max']:.1f} "
              f"default_over_bprmax={new_seconds['default'] / new_seconds['bpr-max']:.2f}")


if __name__ == "__main__":
    main()
