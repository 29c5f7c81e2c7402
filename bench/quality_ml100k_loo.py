"""Quality on MovieLens-100k users, leave-one-out: each user's last rating is the target, full ranking with the
user's earlier items excluded (the published protocol), then the seed notebook's sampled protocol (100 random
unseen items, labelled sampled); popularity, sequential rules, V-SKNN, GRU4REC, SASRec (seed recipe and default)."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _quality import run_protocols  # noqa: E402

from offline.loaders import load_events  # noqa: E402
from offline.prepare import prepare  # noqa: E402
from offline.protocols import EvalProtocol  # noqa: E402

COLUMNS = ("recall@10", "ndcg@10", "recall@20", "mrr@20")  # recall@k = HR@k with one target per user


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--negatives", type=int, default=100, help="sampled protocol: random unseen items")
    parser.add_argument("--seed", type=int, default=0, help="sampled protocol: seed of the negatives")
    args = parser.parse_args()
    full = EvalProtocol(targets="last-item", exclude_seen=True)
    sampled = EvalProtocol(targets="last-item", exclude_seen=True, sampled_negatives=args.negatives, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ml-100k-loo"
        # One sequence per user, nothing filtered (ml-100k users have >= 20 ratings), as the published setups.
        report = prepare("ml-100k", "movielens", out, session_gap_s=math.inf, min_session_length=0,
                         min_item_support=0, split="leave-one-out")
        train = load_events(out / "train_full.tsv", "session-tsv")  # every sequence without its last item
        test = load_events(out / "test.tsv", "session-tsv")  # whole sequences: the last item is the target
        print(f"prepared: splits {report['splits']}")
        rows, sampled_rows = run_protocols(train, test, "ml-100k users, leave-one-out", (full, sampled),
                                           columns=COLUMNS)
    figures = []
    for name in ("pop", "gru4rec-bprmax", "sasrec-bce", "sasrec"):
        key = name.replace("-", "_")
        figures += [f"{key}_hr10={rows[name]['recall@10']:.4f}", f"{key}_ndcg10={rows[name]['ndcg@10']:.4f}",
                    f"{key}_sampled_hr10={sampled_rows[name]['recall@10']:.4f}",
                    f"{key}_sampled_ndcg10={sampled_rows[name]['ndcg@10']:.4f}"]
    print(" ".join(figures))


if __name__ == "__main__":
    main()
