"""JSON Schemas for the config file and the five memory types, generated from the pydantic models.

`python -m alma_mcp.schemas [DIR]` writes them (default: ./schemas); a test fails when the
checked-in files drift from the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .config import AlmaConfig
from .models import MODEL_BY_TYPE


def generate() -> dict[str, dict[str, Any]]:
    """File name -> schema."""
    schemas: dict[str, dict[str, Any]] = {}
    config = AlmaConfig.model_json_schema()
    config["title"] = "alma-mcp configuration (.alma/config.yaml)"
    schemas["config.schema.json"] = config
    for memory_type, model in MODEL_BY_TYPE.items():
        schema = model.model_json_schema()
        schema["title"] = f"alma-mcp memory: {memory_type}"
        schemas[f"{memory_type}.schema.json"] = schema
    for name, schema in schemas.items():
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"alma-mcp/{name}"
    return schemas


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in generate().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")
    for path in write(target):
        print(path, file=sys.stderr)
