"""The apps a server serves, resolved from app references and validated by JSON schema.

The ingress never imports app code: it knows each app by the `functions_schema.json`
the builder computed, resolves `[namespace/]name[@version][:function]`, and checks a
task's input and setup against the schemas before anything runs.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from jsonschema import Draft202012Validator

from .discovery import DEFAULT_FUNCTION
from .host import config_key
from .problems import ApiProblem, invalid_fields, not_found
from .refs import parse_ref

LATEST = "latest"
_MESSAGE_LIMIT = 240
_FILE_MARK = "x-infsh-file"
_FILE_MESSAGE = "expected a file: a URI string (from POST /files, a task output, or data:) or an object with a `uri`"


@dataclass(frozen=True)
class AppInfo:
    name: str
    schema: dict[str, Any]
    version: str = LATEST
    path: str = ""
    """Where the app's code is (app directory, .py file or module), for session workers."""
    batching: dict[str, Any] = field(default_factory=dict)
    """The deployment's settings of @batched functions, for session workers too."""
    setup_takes_config: bool = True
    """False when the app's setup takes no config: a request giving one is refused up front."""

    @property
    def functions(self) -> dict[str, dict[str, Any]]:
        return self.schema["functions"]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "default_function": self.schema.get("default_function"),
            "functions": list(self.functions),
        }


class AppCatalog:
    def __init__(self, apps: list[AppInfo]) -> None:
        self._apps = {app.name: app for app in apps}
        self._validators: dict[tuple[str, str], Draft202012Validator] = {}

    def listing(self) -> list[dict[str, Any]]:
        return [app.describe() for app in self._apps.values()]

    def app(self, name: str) -> AppInfo:
        if name not in self._apps:
            raise not_found(f"unknown app {name!r}; this server serves: {', '.join(self._apps) or 'none'}",
                            apps=list(self._apps))
        return self._apps[name]

    def versioned(self, name: str, version: Optional[str]) -> AppInfo:
        """The app `name` if it serves `version` (None: any)."""
        app = self.app(name)
        if version not in (None, LATEST, app.version):
            raise not_found(f"app {app.name!r} has no version {version!r}; versions: {app.version}",
                            versions=[app.version])
        return app

    def schema_of(self, task: dict[str, Any], side: str) -> Optional[dict]:
        """The JSON schema of a task's `input` or `output`, as its app serves it now; None if it serves it no more."""
        app = self._apps.get(task.get("app_id") or "")
        function = app.functions.get(task.get("function") or "") if app is not None else None
        return function[f"{side}_schema"] if function is not None else None

    def resolve(self, ref: Optional[str], function: Optional[str], version: Optional[str] = None) -> tuple[AppInfo, str]:
        """The app and function a run request names; the `function` field wins over `:function`,
        and `@version` over the `version_id` field."""
        if not ref:
            raise ApiProblem(400, "invalid_request", "name the app to run: `app` (name[@version][:function]) or `app_id`")
        parsed = parse_ref(ref)
        app = self.versioned(parsed.name, parsed.version or version)
        chosen = function or parsed.function or DEFAULT_FUNCTION
        if chosen not in app.functions:
            hint = "" if function or parsed.function else " (no function was named, and it has no `run`)"
            if function and parsed.function and parsed.function != function:
                hint = f" (the `function` field wins over `:{parsed.function}` in `app`)"
            raise not_found(f"app {app.name!r} has no function {chosen!r}{hint}; functions: {', '.join(app.functions)}",
                            functions=list(app.functions))
        return app, chosen

    def validate(self, app: AppInfo, function: str, data: Any, setup: Any) -> tuple[Any, dict[str, Any], str]:
        """(input, setup with defaults filled, setup key); ApiProblem(422) naming every bad field."""
        errors = self._errors(app, f"input:{function}", app.functions[function]["input_schema"], data, "input")
        setup_schema = app.schema.get("setup_schema")
        if setup is None:
            setup = {}
        if setup_schema is not None:
            errors += self._errors(app, "setup", setup_schema, setup, "setup")
        elif not isinstance(setup, dict):
            errors.append({"loc": "setup", "message": "setup must be an object"})
        elif setup and not app.setup_takes_config:
            errors.append({"loc": "setup", "message": "this app's setup takes no config"})
        if errors:
            raise invalid_fields(errors)
        if setup_schema is not None:
            setup = {**_defaults(setup_schema), **setup}
        return data, setup, config_key(setup)

    def _errors(self, app: AppInfo, key: str, schema: dict, value: Any, root: str) -> list[dict[str, str]]:
        validator = self._validators.get((app.name, key))
        if validator is None:
            validator = Draft202012Validator(_accept_file_objects(schema))
            self._validators[(app.name, key)] = validator
        found = []
        for error in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path))):
            path = [root, *map(str, error.absolute_path)]
            message = _FILE_MESSAGE if error.schema.get(_FILE_MARK) else error.message
            missing = re.match(r"'(.+)' is a required property", message) if error.validator == "required" else None
            if missing:
                path.append(missing.group(1))
                message = "field required"
            if len(message) > _MESSAGE_LIMIT:
                message = message[: _MESSAGE_LIMIT - 3] + "..."
            found.append({"loc": ".".join(path), "message": message})
        return found


def _accept_file_objects(schema: dict) -> dict:
    """File fields are strings in the schema, but inputs may also give `{uri, ...}` objects."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("format") == "file":
                node.pop("type", None)
                node.pop("format", None)
                node["anyOf"] = [{"type": "string", "minLength": 1}, {"type": "object"}]
                node[_FILE_MARK] = True
            for child in node.values():
                visit(child)
        elif isinstance(node, list):
            for child in node:
                visit(child)

    visit(schema)
    return schema


def _defaults(schema: dict) -> dict[str, Any]:
    return {name: prop["default"] for name, prop in schema.get("properties", {}).items() if "default" in prop}
