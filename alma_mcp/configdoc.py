"""docs/configuration.md, generated from the pydantic models of `alma_mcp.config`.

`python -m alma_mcp.configdoc [FILE]` writes it (default: docs/configuration.md); a test fails when
the checked-in file differs from what the models say, so a new field, default or description
reaches the reference by regenerating it.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .config import CONFIG_ENV, DATA_DIR_ENV, AlmaSettings

HEADER = f"""\
# Configuration reference

<!-- Generated from alma_mcp/config.py by `python -m alma_mcp.configdoc`; edit the models, not this file. -->

The configuration is a YAML file, `.alma/config.yaml` by default (else `--config PATH`, else
`${CONFIG_ENV}`). Every key is optional; `alma-mcp init` writes a commented starter and
`alma-mcp config check` validates a file and prints what each agent may learn and read. An
unknown key or a value out of range stops the server at start with the field and its line.
Relative paths are relative to the folder that holds `.alma/`. With no `data_dir`, the embedded
store is in `${DATA_DIR_ENV}` if set, else `data/` beside the config file, else (no config file)
`~/.alma-mcp/data`.

The JSON Schema of the file is `schemas/config.schema.json`. Sections below follow the file's
nesting; a map section (`agents.NAME`) has one entry per name you choose.
"""

_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path", type(None): "null"}


def _anchor(path: str) -> str:
    return path.replace(".", "").replace("<", "").replace(">", "").lower()


def _type_name(annotation: Any, nested: dict[type[BaseModel], str]) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0], nested)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a, nested) for a in args)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_name(args[0], nested)}"
    if origin is dict:
        return f"map of {_type_name(args[0], nested)} to {_type_name(args[1], nested)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        path = nested[annotation]
        return f"[{path}](#{_anchor(path)})"
    return _SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(field: FieldInfo) -> str:
    found = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            found.append(f"≥ {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            found.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            found.append(f"≤ {item.le}")
        elif isinstance(item, annotated_types.Lt):
            found.append(f"< {item.lt}")
    return ", ".join(found)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, Path):
        value = str(value)
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _what(field: FieldInfo, nested: dict[type[BaseModel], str]) -> str:
    if field.description:
        return field.description
    inner = _models_in(field.annotation)
    return f"See {nested[inner[0]]}." if inner else ""


def _sections() -> list[tuple[str, type[BaseModel]]]:
    """Every settings model with the path it has in the file, in the order of the file."""
    found: list[tuple[str, type[BaseModel]]] = []

    def visit(path: str, model: type[BaseModel]) -> None:
        if any(m is model for _, m in found):
            return
        found.append((path, model))
        for name, field in model.model_fields.items():
            for inner in _models_in(field.annotation):
                key = f"{path}.{name}" + (".<name>" if get_origin(field.annotation) is dict else "")
                visit(key, inner)

    visit("alma", AlmaSettings)
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def render() -> str:
    sections = _sections()
    nested = {model: path for path, model in sections}
    out = [HEADER]
    for path, model in sections:
        out.append(f"## {path}\n")
        doc = (model.__doc__ or "").strip()
        if doc and not doc.startswith(("Usage docs", "!!!")):
            out.append(" ".join(doc.split("\n\n")[0].split()) + "\n")
        out.append("| key | type | default | range | what it does |")
        out.append("|---|---|---|---|---|")
        for name, field in model.model_fields.items():
            out.append(
                f"| `{name}` | {_type_name(field.annotation, nested)} | {_default(field)} | {_bounds(field)} "
                f"| {_cell(_what(field, nested))} |"
            )
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def write(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/configuration.md")), file=sys.stderr)
