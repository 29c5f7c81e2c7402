"""Settings of the offline CLI process (environment variables prefixed STREAMREC_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OfflineSettings(BaseSettings):
    """Defaults for the offline commands; every CLI flag still overrides them."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_", extra="ignore")

    models_dir: Path = Path("models")
    work_dir: Path = Path("runs")
    demo_data: Path = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15-100k" / (
        "yoochoose-clicks-100k_train_full.txt"
    )
    log_level: str = "INFO"
    progress: bool = True

    # --- streamrec retrain (docs: README "Retraining")
    retrain_window_days: float = Field(default=7.0, gt=0, description="days of clicks per cycle, gate days included")
    retrain_gate_days: float = Field(default=1.0, gt=0, description="newest days held out to gate the candidate")
    retrain_margin: float = Field(default=0.02, ge=0, description="how much worse (absolute MRR@20/Recall@20) is ok")
    retrain_keep_versions: int = Field(default=5, ge=1, description="model versions kept (plus current and previous)")
