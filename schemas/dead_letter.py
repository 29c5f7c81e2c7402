"""DeadLetter: a rejected input message with the reason it was rejected."""

import base64
from typing import Final, Self

from pydantic import Field

from schemas.events import Timestamp, VersionedModel

MAX_ERROR_LENGTH: Final = 4096
DEFAULT_MAX_PAYLOAD_BYTES: Final = 65536


def _utf8_prefix_ok(data: bytes, truncated: bool) -> tuple[bytes, bool]:
    """Return (data, is_utf8); a multi-byte character cut by truncation is dropped, not counted as invalid."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if truncated and exc.reason == "unexpected end of data" and exc.end == len(data):
            return _utf8_prefix_ok(data[: exc.start], truncated=False)
        return data, False
    return data, True


class DeadLetter(VersionedModel):
    """A message the worker could not process, kept for inspection and replay."""

    payload: str = Field(
        description="Payload (possibly truncated) decoded as UTF-8; invalid bytes appear as \\xNN escapes."
    )
    payload_base64: str | None = Field(
        default=None, description="Base64 of the exact (possibly truncated) payload bytes; only if not UTF-8."
    )
    payload_size: int = Field(ge=0, description="Size in bytes of the original payload, before truncation.")
    truncated: bool = Field(description="Whether payload holds only a prefix of the original bytes.")
    error: str = Field(max_length=MAX_ERROR_LENGTH, description="Human-readable rejection reason.")
    error_type: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,63}$", description="Short code, e.g. invalid_json, validation."
    )
    topic: str = Field(pattern=r"^[A-Za-z0-9._-]{1,249}$", description="Source Kafka topic.")
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    received_at: Timestamp

    @classmethod
    def from_raw(
        cls,
        raw: bytes,
        error: str,
        error_type: str,
        topic: str,
        partition: int,
        offset: int,
        received_at: float,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> Self:
        """Build a dead letter from raw message bytes, keeping at most ``max_payload_bytes`` of them."""
        if max_payload_bytes < 0:
            raise ValueError("max_payload_bytes must be >= 0")
        truncated = len(raw) > max_payload_bytes
        kept, is_utf8 = _utf8_prefix_ok(raw[:max_payload_bytes], truncated)
        if len(error) > MAX_ERROR_LENGTH:
            error = error[: MAX_ERROR_LENGTH - 3] + "..."
        return cls(
            payload=kept.decode("utf-8", errors="backslashreplace"),
            payload_base64=None if is_utf8 else base64.b64encode(kept).decode("ascii"),
            payload_size=len(raw),
            truncated=truncated,
            error=error,
            error_type=error_type,
            topic=topic,
            partition=partition,
            offset=offset,
            received_at=received_at,
        )
