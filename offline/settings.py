"""Settings of the offline CLI process (environment variables prefixed STREAMREC_)."""

from __future__ import annotations

from pathlib import Path

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
