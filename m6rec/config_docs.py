"""``docs/config.md`` and ``docs/config.schema.json``, generated from the configuration models.

Run ``python -m m6rec.config_docs`` (or ``make docs``) after changing :mod:`m6rec.config`; a test fails
while the committed files differ from what this writes.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from m6rec.config import RunConfig

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"
MARKDOWN_FILE = "config.md"
SCHEMA_FILE = "config.schema.json"
PIPE = "\\|"  # a | inside a Markdown table cell

INTRODUCTION = """# Configuration reference

`m6rec run --config run.yaml` (and `embed`, `flows run`, the deployments' `M6REC_CONFIG`) reads one YAML
file whose keys mirror the tables below; every key is optional and has the default shown. The whole file
is checked before any data is read: an unknown or mistyped key anywhere, a value of the wrong type or out
of range gives one line naming the key path, the bad value and what is allowed, and exit code 2.

Values are strict: `3` is not `"3"`, `true` is not `1`; a float key takes an integer. Editors that
understand JSON Schema can check a file as you type with [`config.schema.json`](config.schema.json)
(for the YAML language server: `# yaml-language-server: $schema=docs/config.schema.json`).

Generated from `m6rec/config.py` by `python -m m6rec.config_docs`; do not edit by hand.
"""


def render_markdown() -> str:
    """Every key of the configuration: its path, type, default and meaning, one table per section."""
    sections: list[str] = [INTRODUCTION]
    for path, model in _sections(RunConfig, ()):
        title = ".".join(path) or "top level"
        doc = " ".join((model.__doc__ or "").split("\n\n")[0].split())
        rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if _nested_model(field.annotation) is not None:
                key_path = ".".join((*path, name))
                rows.append(f"| `{name}` | section | | see [`{key_path}`](#{_anchor(key_path)}) |")
                continue
            meaning = (field.description or "").replace("|", PIPE)
            kind = _type_text(field.annotation) + _bounds_text(field.metadata)
            rows.append(f"| `{name}` | {kind} | {_default_text(field)} | {meaning} |")
        sections.append(f"## {title}\n\n{doc}\n\n" + "\n".join(rows) + "\n")
    return "\n".join(sections)


def render_schema() -> str:
    """JSON Schema (draft 2020-12) of the configuration file, for editors."""
    schema = RunConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "m6rec run configuration"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def generated_files() -> dict[str, str]:
    """File name in ``docs/`` → its generated content."""
    return {MARKDOWN_FILE: render_markdown(), SCHEMA_FILE: render_schema()}


def _sections(model: type[BaseModel], path: tuple[str, ...]):
    yield path, model
    for name, field in model.model_fields.items():
        nested = _nested_model(field.annotation)
        if nested is not None:
            yield from _sections(nested, (*path, name))


def _nested_model(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _anchor(key_path: str) -> str:
    """GitHub's anchor of a heading: lower case, dots dropped."""
    return key_path.replace(".", "").lower()


def _type_text(annotation) -> str:
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(arguments[0])
    if origin is typing.Literal:
        return f" {PIPE} ".join(f"`{value}`" for value in arguments)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_text(argument) for argument in arguments if argument is not type(None)]
        return f" {PIPE} ".join(parts) + (" or empty" if type(None) in arguments else "")
    if origin is list:
        return f"list of {_type_text(arguments[0])}"
    if origin is dict:
        return f"map {_type_text(arguments[0])} → {_type_text(arguments[1])}"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


BOUND_SYMBOLS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥"}


def _bounds_text(metadata: list) -> str:
    bounds = [
        f"{symbol} {getattr(item, name)}"
        for item in metadata
        for name, symbol in BOUND_SYMBOLS.items()
        if getattr(item, name, None) is not None
    ]
    return f", {', '.join(bounds)}" if bounds else ""


def _default_text(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "empty"
    return f"`{json.dumps(value, default=str)}`".replace("|", PIPE)


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check``, compare) the generated files in ``docs/``."""
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for name, content in generated_files().items():
        path = DOCS_DIR / name
        if check:
            if not path.exists() or path.read_text() != content:
                stale.append(name)
        else:
            path.write_text(content)
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python -m m6rec.config_docs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
