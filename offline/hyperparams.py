"""GRU4REC hyperparameters, with the official implementation's reference settings for both losses."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class GRU4RecParams(BaseModel):
    """Everything that defines one GRU4REC training run (stored in the model manifest).

    Defaults: the official BPR-max reference with hidden dropout 0.2, the best of a small search on the
    YOOCHOOSE sample (docs/benchmarks.md).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    loss: Literal["cross-entropy", "bpr-max"] = "bpr-max"
    layers: tuple[int, ...] = Field(default=(100,), min_length=1)
    batch_size: int = Field(default=80, ge=1, le=65536)
    n_epochs: int = Field(default=10, ge=1, le=1000)
    learning_rate: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.4, ge=0, lt=1)
    dropout_p_embed: float = Field(default=0.5, ge=0, lt=1)
    dropout_p_hidden: float = Field(default=0.2, ge=0, lt=1)
    n_sample: int = Field(default=2048, ge=0)
    sample_alpha: float = Field(default=0.4, ge=0, le=1)
    bpreg: float = Field(default=1.95, ge=0)
    elu_param: float = Field(default=0.5, ge=0)
    logq: float = Field(default=0.0, ge=0)
    seed: int = 42
    steps_per_call: int = Field(default=64, ge=1, description="training steps compiled into one TF call")

    @model_validator(mode="after")
    def _check_layers(self) -> GRU4RecParams:
        if any(size < 1 for size in self.layers):
            raise ValueError("layer sizes must be >= 1")
        return self

    @property
    def hidden_size(self) -> int:
        return self.layers[-1]

    def flat(self) -> dict[str, int | float | str | bool | list[int]]:
        """JSON-friendly dict for the manifest."""
        values = self.model_dump()
        values["layers"] = list(self.layers)
        return values


# Reference settings of the official GRU4Rec implementation (RSC15, shared embedding, 100 units).
XE_REFERENCE = GRU4RecParams(
    loss="cross-entropy",
    batch_size=32,
    dropout_p_embed=0.0,
    dropout_p_hidden=0.4,
    learning_rate=0.2,
    momentum=0.2,
    n_sample=2048,
    sample_alpha=0.5,
    logq=1.0,
    bpreg=0.0,
    elu_param=0.0,
)
BPRMAX_REFERENCE = GRU4RecParams(
    loss="bpr-max",
    batch_size=80,
    dropout_p_embed=0.5,
    dropout_p_hidden=0.05,
    learning_rate=0.05,
    momentum=0.4,
    n_sample=2048,
    sample_alpha=0.4,
    bpreg=1.95,
    elu_param=0.5,
    logq=0.0,
)
