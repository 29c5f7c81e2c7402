"""Data contracts of streamrec: pydantic v2 models, also exported as JSON Schema files."""

from schemas.dead_letter import DeadLetter
from schemas.events import SCHEMA_VERSION, ClickEvent
from schemas.manifest import ModelManifest, TrainingWindow
from schemas.metrics import OnlineMetrics, RankingCounts
from schemas.predictions import Prediction

__all__ = [
    "SCHEMA_VERSION", "ClickEvent", "DeadLetter", "ModelManifest", "OnlineMetrics", "Prediction", "RankingCounts",
    "TrainingWindow",
]
