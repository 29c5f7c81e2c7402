"""Shared contract base class, constrained field types and the ClickEvent input model."""

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION: Final = 1
"""Layout version carried by every contract model in its ``schema_version`` field."""

MAX_TIMESTAMP: Final = 7258118400.0
"""2200-01-01T00:00:00Z in seconds since the Unix epoch; later timestamps are rejected as absurd."""

MAX_ID_LENGTH: Final = 256

Timestamp = Annotated[
    float,
    Field(ge=0.0, le=MAX_TIMESTAMP, description="Seconds since the Unix epoch (UTC), finite, before 2200."),
]
"""Epoch seconds; NaN/inf are rejected by the model config (``allow_inf_nan=False``)."""

SessionId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"\S"),
    Field(description="Session identifier: 1-256 characters, not all whitespace."),
]

ItemId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"\S"),
    Field(description="Item identifier, always a JSON string (numbers are rejected): 1-256 characters."),
]


class ContractModel(BaseModel):
    """Base of every data contract: immutable, strict types, no unknown fields, no NaN/inf."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class VersionedModel(ContractModel):
    """Contract model carrying a ``schema_version`` so consumers can detect layout changes."""

    schema_version: Literal[1] = Field(
        default=SCHEMA_VERSION, description="Layout version of this message; bumped on breaking changes."
    )


class ClickEvent(VersionedModel):
    """One user interaction (click) within a session, as read from the input topic."""

    session_id: SessionId
    item_id: ItemId
    timestamp: Timestamp
    event_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH, description="Producer event id.")
    user_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH, description="Optional user id.")
    event_type: str = Field(default="click", min_length=1, max_length=64, description="Kind of interaction.")
    rating: float | None = Field(default=None, description="Optional explicit rating (finite).")
