"""JSON schemas of an app: per function input and output, and the setup config.

The result is what inference.sh stores as `functions_schema.json`, shaped like the
official AppVersion: `{"functions": {name: {...}}, "default_function": ..., "setup_schema": ...}`.
"""

from __future__ import annotations

from typing import Any

import pydantic

from .discovery import AppFunction, Discovery


def model_schema(model: type) -> dict[str, Any]:
    """JSON schema of a pydantic v2 or v1 model, properties in declaration order."""
    if issubclass(model, pydantic.BaseModel):
        # pydantic's own generator, not an override: the official package's override reads
        # the class source and fails when there is none (a REPL, exec, .pyc-only apps).
        return pydantic.BaseModel.model_json_schema.__func__(model)
    return model.schema()


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
