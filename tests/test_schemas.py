"""Tests for the schemas package: contract validation, hostile input and JSON Schema sync."""

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import schemas
from schemas import SCHEMA_VERSION, ClickEvent, DeadLetter, ModelManifest, Prediction
from schemas.export import MODELS, export_json_schemas, main

SCHEMAS_DIR = Path(schemas.__file__).resolve().parent
TS = 1_700_000_000.5


def click(**overrides: Any) -> bytes:
    data: dict[str, Any] = {"session_id": "s1", "item_id": "214536502", "timestamp": TS}
    data.update(overrides)
    return json.dumps(data).encode()


def prediction_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "session_id": "s1",
        "event_id": "e1",
        "partition": 0,
        "offset": 42,
        "items": ["a", "b", "c"],
        "scores": [0.5, 0.3, 0.2],
        "model_version": "v20240101-1",
        "path": "model",
        "event_timestamp": TS,
        "produced_at": TS + 0.01,
        "latency_ms": 3.2,
    }
    data.update(overrides)
    return data


def manifest_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": "v2024.01.01_1",
        "created_at": TS,
        "training_window": {"start": TS - 86400, "end": TS},
        "data_digest": "0" * 64,
        "hyperparameters": {"lr": 0.001, "epochs": 3, "loss": "bpr", "dropout_on": True, "sizes": [100, 50]},
        "n_items": 1000,
        "hidden_size": 100,
        "n_layers": 1,
        "metrics": {"recall@20": 0.5},
        "files": {"weights": "model.weights.h5", "items": "item_index.json"},
        "parent_version": None,
        "gate": {"passed": True, "recall_delta": 0.01, "reason": "ok", "n_sessions": 10, "note": None},
    }
    data.update(overrides)
    return data


# --- JSON Schema files -------------------------------------------------------------------------------


def test_committed_json_schemas_are_in_sync(tmp_path: Path) -> None:
    written = export_json_schemas(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{name}.schema.json" for name in MODELS)
    for path in written:
        committed = SCHEMAS_DIR / path.name
        assert committed.exists(), f"{committed} missing: run `python -m schemas.export`"
        assert committed.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (
            f"{committed.name} is stale: run `python -m schemas.export`"
        )


def test_export_main_writes_stable_files(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 0
    text = (tmp_path / "click_event.schema.json").read_text(encoding="utf-8")
    assert text.endswith("}\n")
    schema = json.loads(text)
    assert text == json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert schema["additionalProperties"] is False
    assert schema["properties"]["item_id"]["type"] == "string"
    assert main([str(tmp_path), "extra"]) == 2


def test_every_model_has_schema_version() -> None:
    for model in MODELS.values():
        prop = model.model_json_schema()["properties"]["schema_version"]
        assert prop["const"] == SCHEMA_VERSION == 1


# --- ClickEvent --------------------------------------------------------------------------------------


def test_click_event_round_trip() -> None:
    event = ClickEvent.model_validate_json(click(event_id="e1", user_id="u1", rating=4.5))
    assert event.item_id == "214536502"
    assert event.timestamp == TS
    assert event.event_type == "click"
    assert event.schema_version == 1
    assert ClickEvent.model_validate_json(event.model_dump_json()) == event


def test_click_event_accepts_integer_timestamp() -> None:
    assert ClickEvent.model_validate_json(click(timestamp=1_700_000_000)).timestamp == 1_700_000_000.0


def test_click_event_is_frozen() -> None:
    event = ClickEvent.model_validate_json(click())
    with pytest.raises(ValidationError, match="frozen"):
        event.item_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "error_type"),
    [
        (b"", "json_invalid"),
        (b"not json", "json_invalid"),
        (b'{"session_id": "s1", "item_id": "a", "timestamp": 1', "json_invalid"),
        (b'{"session_id": "\xff\xfe", "item_id": "a", "timestamp": 1}', "json_invalid"),
        (b"[" * 10_000, "json_invalid"),
        (b"[]", "model_type"),
        (b'"text"', "model_type"),
        (b"null", "model_type"),
        (b'{"session_id": "s1", "item_id": "a", "timestamp": NaN}', "finite_number"),
        (b'{"session_id": "s1", "item_id": "a", "timestamp": Infinity}', "finite_number"),
        (b'{"session_id": "s1", "item_id": "a", "timestamp": 1e400}', "finite_number"),
        (b'{"session_id": "s1", "item_id": "a", "timestamp": 1, "rating": NaN}', "finite_number"),
        (click(timestamp=-1.0), "greater_than_equal"),
        (click(timestamp=32_503_680_000.0), "less_than_equal"),  # year 3000
        (click(timestamp="1700000000"), "float_type"),
        (click(timestamp=True), "float_type"),
        (click(timestamp=None), "float_type"),
        (click(item_id=214536502), "string_type"),
        (click(session_id=12), "string_type"),
        (click(item_id=""), "string_too_short"),
        (click(session_id=""), "string_too_short"),
        (click(session_id="   \t"), "string_pattern_mismatch"),
        (click(item_id="x" * 257), "string_too_long"),
        (click(event_id="x" * 257), "string_too_long"),
        (click(event_type=""), "string_too_short"),
        (click(unexpected="field"), "extra_forbidden"),
        (click(schema_version=2), "literal_error"),
        (b'{"item_id": "a", "timestamp": 1}', "missing"),
    ],
)
def test_click_event_rejects_hostile_input(raw: bytes, error_type: str) -> None:
    with pytest.raises(ValidationError) as info:
        ClickEvent.model_validate_json(raw)
    assert error_type in {err["type"] for err in info.value.errors()}


# --- Prediction --------------------------------------------------------------------------------------


def test_prediction_round_trip() -> None:
    pred = Prediction(**prediction_data())
    assert Prediction.model_validate_json(pred.model_dump_json()) == pred
    fallback = Prediction(**prediction_data(path="popularity", partition=None, offset=None, latency_ms=None))
    assert fallback.path == "popularity"


def test_prediction_is_frozen() -> None:
    pred = Prediction(**prediction_data())
    with pytest.raises(ValidationError):
        pred.path = "popularity"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"scores": [0.5, 0.3]}, "differ in length"),
        ({"items": [], "scores": [1.0]}, "differ in length"),
        ({"offset": None}, "together"),
        ({"path": "gru"}, "literal_error"),
        ({"latency_ms": -1.0}, "greater_than_equal"),
        ({"scores": [0.5, float("nan"), 0.2]}, "finite_number"),
        ({"items": ["a", 2, "c"]}, "string_type"),
        ({"model_version": "../etc"}, "string_pattern_mismatch"),
        ({"extra": 1}, "extra_forbidden"),
    ],
)
def test_prediction_rejects_invalid(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        Prediction(**prediction_data(**overrides))
    text = str(info.value)
    assert message in text


# --- ModelManifest -----------------------------------------------------------------------------------


def test_manifest_round_trip() -> None:
    manifest = ModelManifest.model_validate(manifest_data())
    assert manifest.artifact_format_version == 1
    assert manifest.hyperparameters["epochs"] == 3 and isinstance(manifest.hyperparameters["epochs"], int)
    assert manifest.hyperparameters["dropout_on"] is True
    assert ModelManifest.model_validate_json(manifest.model_dump_json()) == manifest


@pytest.mark.parametrize("version", ["..", ".", "../x", "a/b", "a\\b", "", ".hidden", "x" * 65, "v 1", "v\n"])
def test_manifest_rejects_bad_version(version: str) -> None:
    with pytest.raises(ValidationError):
        ModelManifest.model_validate(manifest_data(version=version))
    with pytest.raises(ValidationError):
        ModelManifest.model_validate(manifest_data(parent_version=version))


@pytest.mark.parametrize("file_name", ["..", ".", "../x", "a/b", "a\\b", "/abs", "", "x\x00y"])
def test_manifest_rejects_bad_file_names(file_name: str) -> None:
    with pytest.raises(ValidationError):
        ModelManifest.model_validate(manifest_data(files={"weights": file_name}))


@pytest.mark.parametrize(
    "overrides",
    [
        {"data_digest": "abc"},
        {"data_digest": "G" * 64},
        {"n_items": 0},
        {"hidden_size": -1},
        {"n_layers": 0},
        {"training_window": {"start": TS, "end": TS - 1}},
        {"metrics": {"recall@20": float("inf")}},
        {"hyperparameters": {"opt": {"nested": 1}}},
        {"created_at": 32_503_680_000.0},
    ],
)
def test_manifest_rejects_invalid_fields(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ModelManifest.model_validate(manifest_data(**overrides))


# --- DeadLetter --------------------------------------------------------------------------------------


def dead(raw: bytes, **kwargs: Any) -> DeadLetter:
    return DeadLetter.from_raw(raw, "bad", "validation", "clicks", 3, 99, TS, **kwargs)


def test_dead_letter_utf8_payload() -> None:
    letter = dead(b'{"x": "h\xc3\xa9"}')
    assert letter.payload == '{"x": "hé"}'
    assert letter.payload_base64 is None
    assert letter.payload_size == len(b'{"x": "h\xc3\xa9"}')
    assert not letter.truncated
    assert DeadLetter.model_validate_json(letter.model_dump_json()) == letter


def test_dead_letter_non_utf8_payload() -> None:
    raw = b"ab\xffcd\x00"
    letter = dead(raw)
    assert letter.payload == "ab\\xffcd\x00"
    assert letter.payload_base64 is not None
    assert base64.b64decode(letter.payload_base64) == raw
    assert not letter.truncated
    assert DeadLetter.model_validate_json(letter.model_dump_json()) == letter


def test_dead_letter_truncates_oversized_payload() -> None:
    raw = b"x" * 100_000
    letter = dead(raw)
    assert letter.truncated
    assert letter.payload_size == 100_000
    assert len(letter.payload) == 65536
    assert letter.payload_base64 is None


def test_dead_letter_truncation_inside_multibyte_char_stays_utf8() -> None:
    letter = dead("é".encode() * 10, max_payload_bytes=5)
    assert letter.truncated
    assert letter.payload == "éé"
    assert letter.payload_base64 is None


def test_dead_letter_truncated_non_utf8_keeps_exact_prefix() -> None:
    raw = b"\xff" * 1000
    letter = dead(raw, max_payload_bytes=10)
    assert letter.truncated and letter.payload_size == 1000
    assert letter.payload_base64 is not None
    assert base64.b64decode(letter.payload_base64) == raw[:10]


def test_dead_letter_bounds_error_and_validates_fields() -> None:
    letter = DeadLetter.from_raw(b"x", "e" * 10_000, "validation", "clicks", 0, 0, TS)
    assert len(letter.error) == 4096
    with pytest.raises(ValidationError):
        DeadLetter.from_raw(b"x", "bad", "Not A Code", "clicks", 0, 0, TS)
    with pytest.raises(ValidationError):
        DeadLetter.from_raw(b"x", "bad", "validation", "bad/topic", 0, 0, TS)
    with pytest.raises(ValidationError):
        DeadLetter.from_raw(b"x", "bad", "validation", "clicks", -1, 0, TS)
    with pytest.raises(ValueError, match="max_payload_bytes"):
        DeadLetter.from_raw(b"x", "bad", "validation", "clicks", 0, 0, TS, max_payload_bytes=-1)
    with pytest.raises(ValidationError, match="frozen"):
        letter.error = "other"  # type: ignore[misc]
