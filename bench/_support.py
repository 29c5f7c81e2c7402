"""What the benchmark scripts share: the repository root on sys.path (for tests.support) and a model to serve."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def given_or_trained(models_dir: Path | None, work: Path) -> Path:
    """``--models-dir`` when given, else a model trained on train_tr under ``work``."""
    from tests.support.artifacts import train_model

    if models_dir is None:
        models_dir = work / "models"
        train_model(models_dir)
    return models_dir
