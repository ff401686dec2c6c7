"""The config reference (docs/config-reference.md), generated from the pydantic models.

A test compares the file with this output, so the reference cannot drift from the code:
regenerate it with ``python -m mqi.configdoc > docs/config-reference.md``.
"""

from __future__ import annotations

import json
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from mqi.config import Config


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "(required)"
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, dict):
        value = {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in value.items()}
    return f"`{json.dumps(value, default=str)}`"


def _type(field: FieldInfo) -> str:
    text = str(field.annotation).replace("typing.", "").replace("pathlib.", "")
    text = text.replace("<class '", "").replace("'>", "")
    return text.replace("mqi.config.", "").replace("|", "or")


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The model a key holds, also when optional or a list of them: it gets its own section."""
    wrapped = get_origin(annotation) in (UnionType, Union, list)
    for candidate in (annotation, *(get_args(annotation) if wrapped else ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _section(model: type[BaseModel], prefix: str, lines: list[str]) -> None:
    nested = []
    rows = []
    for name, field in model.model_fields.items():
        if name == "source":
            continue
        annotation = _section_model(field.annotation)
        if annotation is not None:
            nested.append((name, annotation))
            continue
        rows.append(f"| `{prefix}{name}` | {_type(field)} | {_default(field)} | {field.description or ''} |")
    if rows:
        title = prefix.rstrip(".") or "top level"
        doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        lines += [f"## `{title}`", "", doc, "", "| key | type | default | meaning |", "|---|---|---|---|"]
        lines += rows
        lines.append("")
    for name, sub in nested:
        _section(sub, f"{prefix}{name}.", lines)


def render_reference() -> str:
    lines = [
        "# mqi.yaml reference",
        "",
        "Generated from `mqi/config.py` by `python -m mqi.configdoc`; a test keeps it in step.",
        "Every key is optional. Unknown keys are errors. Local paths expand `~` and `$VARS` and are",
        "relative to the config file's folder. `mqi init` writes a commented example.",
        "",
    ]
    _section(Config, "", lines)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")
