"""JSON schemas of an app: per function input and output, and the setup config.

The result is what inference.sh stores as `functions_schema.json`, shaped like the
official AppVersion: `{"functions": {name: {...}}, "default_function": ..., "setup_schema": ...}`.
"""

from __future__ import annotations

import types
import typing
from typing import TYPE_CHECKING, Any, Optional

import pydantic

if TYPE_CHECKING:  # discovery checks models with schema_problem, so it imports this module
    from .discovery import AppFunction, Discovery

_SCHEMA_ADVICE = "give it a JSON type, or annotate it with pydantic's WithJsonSchema"


def model_schema(model: type) -> dict[str, Any]:
    """JSON schema of a pydantic v2 or v1 model, properties in declaration order."""
    if issubclass(model, pydantic.BaseModel):
        # pydantic's own generator, not an override: the official package's override reads
        # the class source and fails when there is none (a REPL, exec, .pyc-only apps).
        return pydantic.BaseModel.model_json_schema.__func__(model)
    return model.schema()


def schema_problem(model: type) -> Optional[str]:
    """Why `model` has no JSON schema, naming the field that has none; None when it has one.

    A model may validate yet have no schema (a field of an arbitrary type, such as an
    array, allowed by `arbitrary_types_allowed`), and an app's schemas are published.
    """
    error = _schema_error(model)
    if error is None:
        return None
    field = _field_without_schema(model)
    if field is None:  # a pydantic v1 message names the field itself
        return f"{model.__name__} has no JSON schema: {error}"
    path, hint = field
    return f"{model.__name__} has no JSON schema: field {path!r} ({_type_name(hint)}) has none; {_SCHEMA_ADVICE}"


def _schema_error(model: type) -> Optional[str]:
    try:
        model_schema(model)
    except Exception as exc:  # pydantic's errors for undescribable types vary by version and by v1/v2
        return str(exc).partition("\n")[0]
    return None


def _field_without_schema(model: type, seen: frozenset[type] = frozenset()) -> Optional[tuple[str, Any]]:
    """`(dotted path, type hint)` of a field of a v2 model, nested models' included, with no schema."""
    fields = getattr(model, "model_fields", None) if issubclass(model, pydantic.BaseModel) else None
    if not fields or model in seen:  # a recursive model is searched once
        return None
    failing = [(name, info.annotation) for name, info in fields.items() if _fails_alone(model, name, info)]
    # A field failing for its own type is the culprit; one holding models only may fail for theirs.
    failing.sort(key=lambda field: bool(_models_in(field[1])))
    for name, hint in failing:
        if not _models_in(hint):
            return name, hint
        for nested in _models_in(hint):
            inner = _field_without_schema(nested, seen | {model})
            if inner is not None:
                return f"{name}.{inner[0]}", inner[1]
    return failing[0] if failing else None


def _fails_alone(model: type, name: str, info: Any) -> bool:
    """Whether the field, alone in a model of the same config, has no JSON schema."""
    try:
        alone = pydantic.create_model(model.__name__, __config__=model.model_config, **{name: (info.annotation, info)})
    except Exception:  # it cannot stand alone (say, a validator needs its siblings): not the one to name
        return False
    return _schema_error(alone) is not None


def _models_in(hint: Any) -> list[type]:
    """The pydantic models a hint holds: `Inner`, `list[Inner]`, `Optional[Inner]`, ..."""
    if isinstance(hint, type) and issubclass(hint, pydantic.BaseModel):
        return [hint]
    return [model for arg in typing.get_args(hint) for model in _models_in(arg)]


def _type_name(hint: Any) -> str:
    """A hint as its author wrote it: `Tensor | None`, `list[Tensor]`."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(map(_type_name, args))
    if args:
        return f"{_type_name(typing.get_origin(hint))}[{', '.join(map(_type_name, args))}]"
    return "None" if hint is type(None) else getattr(hint, "__name__", None) or repr(hint)


def function_schema(function: AppFunction) -> dict[str, Any]:
    return {
        "name": function.name,
        "description": function.description,
        "kind": "run",
        "input_schema": model_schema(function.input_model),
        "output_schema": model_schema(function.output_model),
    }


def functions_schema(discovery: Discovery) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "functions": {name: function_schema(fn) for name, fn in discovery.functions.items()},
        "default_function": discovery.default_function,
    }
    if discovery.setup.model is not None:
        schema["setup_schema"] = model_schema(discovery.setup.model)
    return schema
