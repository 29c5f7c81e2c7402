"""Prediction: the recommendation the stream worker emits for one click."""

from typing import Literal, Self

from pydantic import Field, model_validator

from schemas.events import MAX_ID_LENGTH, ItemId, SessionId, Timestamp, VersionedModel
from schemas.manifest import ModelVersion


class Prediction(VersionedModel):
    """Top-k next-item recommendation for a session, produced in response to one click."""

    session_id: SessionId
    event_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH, description="event_id of the click.")
    partition: int | None = Field(default=None, ge=0, description="Source partition of the click.")
    offset: int | None = Field(default=None, ge=0, description="Source offset of the click.")
    items: list[ItemId] = Field(description="Recommended item ids, best first.")
    scores: list[float] = Field(description="Score of each recommended item; same length as items.")
    model_version: ModelVersion
    path: Literal["model", "popularity"] = Field(
        description="'model': GRU scores; 'popularity': fallback for a session with no known item."
    )
    event_timestamp: Timestamp
    produced_at: Timestamp
    latency_ms: float | None = Field(default=None, ge=0.0, description="Processing latency in milliseconds.")

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        if len(self.items) != len(self.scores):
            raise ValueError(f"items and scores differ in length ({len(self.items)} != {len(self.scores)})")
        if (self.partition is None) != (self.offset is None):
            raise ValueError("partition and offset must be given together")
        return self
