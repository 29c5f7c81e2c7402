"""SASRec hyperparameters: the tuned default and the seed notebook's BCE recipe."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.manifest import HyperValue

SASRecLoss = Literal["bce", "cross-entropy", "sampled-cross-entropy"]
StopMetric = Literal["recall@20", "mrr@20", "ndcg@10", "ndcg@20"]


class SASRecParams(BaseModel):
    """Everything that defines one SASRec training run (stored in the model manifest).

    Defaults: the best recipe of a small search on the YOOCHOOSE sample (tuned on train_tr without its last
    day): full softmax cross-entropy as in "SASRec+" (Klenitskiy & Vasilev, RecSys 2023), but one block and
    dropout 0.3 (the sample is small), Adam 2e-3, early stopping on the newest 10% of the sessions, then a
    refit on all of them. ``BCE_RECIPE`` is the original one-negative binary cross-entropy recipe. Full
    cross-entropy scores every item at every position: for catalogues of many thousand items, prefer
    ``sampled-cross-entropy``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # model
    max_len: int = Field(default=50, ge=1, le=1024, description="items per window; the newest sits last")
    hidden_size: int = Field(default=64, ge=1, le=4096)
    n_blocks: int = Field(default=1, ge=1, le=32)
    n_heads: int = Field(default=1, ge=1)
    dropout: float = Field(default=0.3, ge=0, lt=1, description="after the embedding, on attention, in the ffn")
    # loss
    loss: SASRecLoss = "cross-entropy"
    n_negatives: int = Field(default=256, ge=1, description="sampled-cross-entropy: uniform negatives per batch")
    in_batch_negatives: bool = Field(default=False, description="sampled-cross-entropy: the batch's targets too")
    # optimisation (Adam)
    learning_rate: float = Field(default=2e-3, gt=0)
    adam_beta1: float = Field(default=0.9, ge=0, lt=1)
    adam_beta2: float = Field(default=0.98, ge=0, lt=1)
    batch_size: int = Field(default=128, ge=1, le=65536)
    n_epochs: int = Field(default=50, ge=1, le=1000, description="at most; early stopping may end sooner")
    # early stopping on the newest sessions, held out from training
    valid_fraction: float = Field(default=0.1, ge=0, lt=1, description="0 = no early stopping")
    patience: int = Field(default=3, ge=1, description="epochs without a better stop_metric before stopping")
    stop_metric: StopMetric = "ndcg@20"
    refit: bool = Field(default=True, description="after early stopping, train again on all sessions for the "
                        "best epoch count (twice the time, but the newest sessions are learnt too)")
    seed: int = 42
    steps_per_call: int = Field(default=8, ge=1, description="training steps compiled into one TF call")

    @model_validator(mode="after")
    def _check_heads(self) -> SASRecParams:
        if self.hidden_size % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide hidden_size ({self.hidden_size})")
        return self

    def flat(self) -> dict[str, HyperValue]:
        """JSON-friendly dict for the manifest (modelkit.sasrec reads max_len and n_heads from it)."""
        return self.model_dump()


# The original SASRec recipe as in the seed notebook (and the PyTorch port): BCE with one random negative
# per position, 50 units, 2 blocks, 1 head, dropout 0.5, Adam 1e-3, batch 128, 10 epochs, no early stopping.
BCE_RECIPE = SASRecParams(
    max_len=50, hidden_size=50, n_blocks=2, n_heads=1, dropout=0.5, loss="bce", learning_rate=1e-3,
    batch_size=128, n_epochs=10, valid_fraction=0.0,
)
