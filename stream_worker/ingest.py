"""Ingest stage: a raw clicks message (value bytes and key) -> a valid ClickEvent, or why it is dead-lettered."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from schemas import ClickEvent


def session_key(session_id: str) -> bytes:
    """The message key of a session (and its key in the sessions table)."""
    return session_id.encode("utf-8", "surrogatepass")


def parse_click(raw: Any, key: bytes | None, max_bytes: int) -> tuple[ClickEvent | None, str, str]:
    """(event, error_type, reason): the event when valid, else why it goes to the dead-letter topic."""
    if not isinstance(raw, bytes | bytearray):
        return None, "invalid_payload", "message value is empty"
    if len(raw) > max_bytes:
        return None, "payload_too_large", f"message of {len(raw)} bytes exceeds the limit of {max_bytes}"
    try:
        click = ClickEvent.model_validate_json(raw)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        if len(where) > 80 or not where.isprintable():  # unknown field names come from the message itself
            where = ascii(where[:80])
        kind = "invalid_json" if first["type"] == "json_invalid" else "validation"
        return None, kind, f"{where}: {first['msg']} ({error.error_count()} error(s))"
    if key is None or key != session_key(click.session_id):
        return None, "key_mismatch", "message key must be the session id (co-partitioning with the sessions table)"
    return click, "", ""
