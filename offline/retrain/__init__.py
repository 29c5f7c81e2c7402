"""Windowed retraining: source -> prepare -> train -> gate -> publish (cycle), on a schedule (loop)."""

from modelkit.registry import RetrainError
from offline.retrain.cycle import RetrainReport, retrain_cycle
from offline.retrain.gate import GATE_METRICS, GateMetrics, gate_decision, gate_metrics, gate_record
from offline.retrain.loop import CycleLoop
from offline.retrain.prepare import PreparedWindow, prepare_window
from offline.retrain.source import FileSource, ReadSummary, Source, TopicSource, WindowReader

__all__ = [
    "GATE_METRICS",
    "CycleLoop",
    "FileSource",
    "GateMetrics",
    "PreparedWindow",
    "ReadSummary",
    "RetrainError",
    "RetrainReport",
    "Source",
    "TopicSource",
    "WindowReader",
    "gate_decision",
    "gate_metrics",
    "gate_record",
    "prepare_window",
    "retrain_cycle",
]
