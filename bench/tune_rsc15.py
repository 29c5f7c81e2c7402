"""The small GRU4REC-BPR-max search behind the defaults: one change at a time from the official reference,
trained on YOOCHOOSE train_tr and scored on train_valid (Recall/MRR@20, training events/s)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modelkit.gru4rec import GRU4RecNumpy  # noqa: E402
from modelkit.item_index import ItemIndex  # noqa: E402
from offline.evaluate import ModelScorer, evaluate  # noqa: E402
from offline.hyperparams import BPRMAX_REFERENCE  # noqa: E402
from offline.loaders import load_events  # noqa: E402
from offline.pipeline import restrict_to_catalogue, to_sessions  # noqa: E402
from offline.train import GRU4RecTrainer, item_counts  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15-100k"
GRID: list[dict[str, Any]] = [
    {}, {"n_epochs": 20}, {"learning_rate": 0.1}, {"layers": (200,)}, {"n_epochs": 20, "layers": (200,)},
    {"dropout_p_embed": 0.3}, {"dropout_p_hidden": 0.2}, {"batch_size": 64}, {"momentum": 0.2}, {"seed": 1},
    {"seed": 2}, {"n_epochs": 5}, {"sample_alpha": 0.6}, {"bpreg": 1.0}, {"dropout_p_hidden": 0.2, "seed": 1},
    {"dropout_p_hidden": 0.3}, {"dropout_p_hidden": 0.2, "learning_rate": 0.08},
    {"dropout_p_hidden": 0.2, "dropout_p_embed": 0.4},
]


def main() -> None:
    train_frame = load_events(DATA / "yoochoose-clicks-100k_train_tr.txt", "session-tsv")
    valid_frame = load_events(DATA / "yoochoose-clicks-100k_train_valid.txt", "session-tsv")
    index = ItemIndex.from_events(train_frame["item_id"])
    train = to_sessions(train_frame, index)
    valid = restrict_to_catalogue(valid_frame, index).sessions
    for change in GRID:
        params = BPRMAX_REFERENCE.model_copy(update=change)
        started = time.perf_counter()
        trainer = GRU4RecTrainer(params, item_counts(train, len(index)))
        report = trainer.fit(train, progress=False)
        metrics = evaluate(ModelScorer(GRU4RecNumpy(trainer.weights())), valid)
        print(json.dumps({"change": {k: list(v) if isinstance(v, tuple) else v for k, v in change.items()},
                          "recall@20": round(metrics["recall@20"], 4), "mrr@20": round(metrics["mrr@20"], 4),
                          "train_events_per_s": round(report.events_per_s),
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
