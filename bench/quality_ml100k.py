"""Quality on MovieLens-100k (from the installed recbole package): users cut into sessions at a 1-hour gap,
the last 30 days as test; baselines vs GRU4REC through the same pipeline as YOOCHOOSE."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _quality import run  # noqa: E402

from offline.loaders import load_events  # noqa: E402
from offline.prepare import prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--session-gap", type=float, default=3600.0, help="seconds")
    parser.add_argument("--test-days", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ml-100k"
        report = prepare("ml-100k", "movielens", out, session_gap_s=args.session_gap, test_days=args.test_days,
                         valid_days=args.test_days)
        train = load_events(out / "train_full.tsv", "session-tsv")
        test = load_events(out / "test.tsv", "session-tsv")
        print(f"prepared: splits {report['splits']}, dropped {report['dropped']}")
        rows = run(train, test, f"ml-100k ({args.session_gap:.0f} s gap, last {args.test_days:.0f} days as test)")
    gru, knn = rows["gru4rec-bprmax"], rows["vsknn"]
    print(
        f"gru4rec_recall20={gru['recall@20']:.4f} gru4rec_mrr20={gru['mrr@20']:.4f} "
        f"vsknn_recall20={knn['recall@20']:.4f} vsknn_mrr20={knn['mrr@20']:.4f} "
        f"train_events_per_s={gru['train_events_per_s']:.0f}"
    )


if __name__ == "__main__":
    main()
