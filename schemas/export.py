"""Export the contract models as JSON Schema files (``python -m schemas.export [DIR]``)."""

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.dead_letter import DeadLetter
from schemas.events import ClickEvent
from schemas.manifest import ModelManifest
from schemas.metrics import OnlineMetrics
from schemas.predictions import Prediction

MODELS: dict[str, type[BaseModel]] = {
    "click_event": ClickEvent,
    "prediction": Prediction,
    "dead_letter": DeadLetter,
    "model_manifest": ModelManifest,
    "online_metrics": OnlineMetrics,
}

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def render_json_schema(model: type[BaseModel]) -> str:
    """Return the model's validation JSON Schema with stable formatting (sorted keys, indent 2, newline)."""
    schema = {"$schema": JSON_SCHEMA_DIALECT, **model.model_json_schema(mode="validation")}
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export_json_schemas(out_dir: Path) -> list[Path]:
    """Write ``<name>.schema.json`` for every contract model into ``out_dir``; return the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in MODELS.items():
        path = out_dir / f"{name}.schema.json"
        path.write_text(render_json_schema(model), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: regenerate the schema files into DIR (default: the schemas package directory)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1:
        sys.stderr.write("usage: python -m schemas.export [DIR]\n")
        return 2
    export_json_schemas(Path(args[0]) if args else Path(__file__).resolve().parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
