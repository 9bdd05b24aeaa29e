"""The pipeline YAML reference (docs/pipeline_reference.md), generated from the code so it cannot drift.

Every key comes from the pydantic models in :mod:`medtl.pipeline.config` (type, default), its
meaning from the comment written beside (or just above) the field there, and the strategy list with
each strategy's hyper-parameter defaults from the strategy registry. A test compares the file with
this output; regenerate it with::

    python -m medtl.pipeline.reference > docs/pipeline_reference.md
"""

from __future__ import annotations

import inspect
import io
import json
import tokenize
import types
import typing
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

DOC_PATH = "docs/pipeline_reference.md"


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the class source: the comment after a field, else the comment lines above it."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    trailing: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            trailing[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    for i, line in enumerate(lines, start=1):
        stripped = line.strip()
        name = stripped.split(":", 1)[0].strip()
        if ":" not in stripped or not name.isidentifier() or stripped.startswith(("def ", "class ", "#", "@")):
            continue
        if line[: len(line) - len(line.lstrip())] != " " * 4:  # class-level fields only
            continue
        above, j = [], i - 1
        while j >= 1 and lines[j - 1].strip().startswith("#"):
            above.insert(0, lines[j - 1].strip().lstrip("#").strip())
            j -= 1
        text = " ".join(above + ([trailing[i]] if i in trailing and not stripped.startswith("#") else []))
        if text:
            out[name] = text
    return out


def _models(annotation) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (``X``, ``list[X]``, ``X | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _models(a)]


def type_name(annotation) -> str:
    """A YAML reader's name for an annotation."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"mapping {type_name(args[0])} -> {type_name(args[1])}"
    if origin is tuple:
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"mapping ([{annotation.__name__}](#{annotation.__name__.lower()}))"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "its fields' defaults"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [v.model_dump(exclude_defaults=True) for v in value]
    return "`" + json.dumps(value) + "`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _model_section(model: type[BaseModel], path: str) -> list[str]:
    comments = field_comments(model)
    lines = [f"### {model.__name__}", "", f"Key: `{path}`." if path else "The top level of the file.", ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        meaning = field.description or comments.get(name, "")
        lines.append(f"| `{name}` | {type_name(field.annotation)} | {_default(field)} | {_cell(meaning)} |")
    return lines + [""]


def _walk(model: type[BaseModel], path: str, seen: dict[type, str]) -> None:
    seen.setdefault(model, path)
    for name, field in model.model_fields.items():
        for sub in _models(field.annotation):
            if sub not in seen:
                child = f"{path}.{name}" if path else name
                if get_origin(field.annotation) is list:
                    child += "[]"
                _walk(sub, child, seen)


def _strategies() -> list[str]:
    from medtl.strategies.registry import STRATEGIES

    lines = ["## Strategies", "",
             "Names accepted in `strategies[].name`, and the `hparams` each takes with its default (a config "
             "overrides single keys; unknown keys are refused). *needs target*: the method also trains on "
             "(unlabelled) target images.", "",
             "| name | what it does | needs target | hparams (defaults) |", "|---|---|---|---|"]
    for name in sorted(STRATEGIES):
        cls = STRATEGIES[name]
        doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
        defaults = ", ".join(f"`{k}: {json.dumps(v)}`" for k, v in cls.DEFAULTS.items())
        lines.append(f"| `{name}` | {_cell(doc)} | {'yes' if cls.needs_target else ''} | {defaults} |")
    return lines + [""]


def pipeline_reference() -> str:
    """The Markdown text of docs/pipeline_reference.md."""
    from medtl.pipeline import config

    seen: dict[type, str] = {}
    _walk(config.PipelineConfig, "", seen)
    intro = (inspect.getdoc(config) or "").strip()
    lines = ["# Pipeline YAML reference", "",
             "<!-- Generated by `python -m medtl.pipeline.reference > docs/pipeline_reference.md` from "
             "medtl/pipeline/config.py and the strategy registry; do not edit by hand (a test compares). -->", "",
             "Every key a pipeline file (`medtl run PIPELINE.yaml`, examples in [pipelines/](../pipelines/)) "
             "may hold. Keys not listed here are refused, naming the key.", "", intro, "", "## Keys", ""]
    for model, path in seen.items():
        lines += _model_section(model, path)
    lines += _strategies()
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(pipeline_reference(), end="")
