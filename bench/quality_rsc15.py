"""Quality on the real YOOCHOOSE sample: train on train_tr, evaluate on train_valid; baselines, GRU4REC, SASRec and
the served default."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _quality import run  # noqa: E402

from offline.loaders import load_events  # noqa: E402

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15-100k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args()
    train = load_events(args.data_dir / "yoochoose-clicks-100k_train_tr.txt", "session-tsv")
    test = load_events(args.data_dir / "yoochoose-clicks-100k_train_valid.txt", "session-tsv")
    rows = run(train, test, "rsc15-100k train_tr -> train_valid")
    gru, knn, sasrec, default = rows["gru4rec-bprmax"], rows["vsknn"], rows["sasrec"], rows["default"]
    print(
        f"gru4rec_recall20={gru['recall@20']:.4f} gru4rec_mrr20={gru['mrr@20']:.4f} "
        f"vsknn_recall20={knn['recall@20']:.4f} vsknn_mrr20={knn['mrr@20']:.4f} "
        f"train_events_per_s={gru['train_events_per_s']:.0f} "
        f"recall20_ratio={gru['recall@20'] / knn['recall@20']:.3f} mrr20_ratio={gru['mrr@20'] / knn['mrr@20']:.3f} "
        f"sasrec_recall20={sasrec['recall@20']:.4f} sasrec_mrr20={sasrec['mrr@20']:.4f} "
        f"sasrec_train_s={sasrec['train_seconds']:.0f} "
        f"default_recall20={default['recall@20']:.4f} default_mrr20={default['mrr@20']:.4f} "
        f"default_train_s={default['train_seconds']:.0f} gru4rec_train_s={gru['train_seconds']:.0f} "
        f"default_serve_us={default['serve_us']:.1f} gru4rec_serve_us={gru['serve_us']:.1f}"
    )


if __name__ == "__main__":
    main()
