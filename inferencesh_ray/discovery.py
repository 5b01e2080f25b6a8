"""Which methods of an app class are functions, by the rules of inference.sh apps.

A method is a function when it is public, not `setup`/`unload`, takes exactly one
input parameter besides `self` (plus an optional trailing `metadata`), and has type
hints on that input and on its return that are both pydantic models (v2 or
`pydantic.v1`). Async generators return `AsyncGenerator[Output, None]`. Every rule is
checked for every method, so `infsh-ray app validate --verbose` can say why a method
was skipped.
"""

from __future__ import annotations

import collections.abc
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

import pydantic

try:
    from pydantic import v1 as pydantic_v1
except ImportError:  # pragma: no cover - pydantic v2 always ships v1
    pydantic_v1 = None

RESERVED = frozenset({"setup", "unload"})
DEFAULT_FUNCTION = "run"
# Methods of these modules belong to the framework or to pydantic, never to the app.
_FRAMEWORK_MODULES = ("builtins", "pydantic", "inferencesh.", "inferencesh_ray.")

CallKind = Literal["sync", "async", "generator"]


def is_model(obj: Any) -> bool:
    """A pydantic v2 or v1 model class."""
    if not isinstance(obj, type):
        return False
    if issubclass(obj, pydantic.BaseModel):
        return True
    return pydantic_v1 is not None and issubclass(obj, pydantic_v1.BaseModel)


@dataclass(frozen=True)
class AppFunction:
    """One routable function of an app."""

    name: str
    input_model: type
    output_model: type
    call_kind: CallKind
    takes_metadata: bool
    description: str = ""


@dataclass(frozen=True)
class Rule:
    text: str
    passed: bool


@dataclass
class MethodReport:
    """Each rule checked for one method, for `validate --verbose`."""

    name: str
    rules: list[Rule] = field(default_factory=list)
    function: Optional[AppFunction] = None

    @property
    def discovered(self) -> bool:
        return self.function is not None

    def check(self, passed: bool, ok: str, failed: str) -> bool:
        self.rules.append(Rule(ok if passed else failed, passed))
        return passed


@dataclass(frozen=True)
class SetupSpec:
    """How `setup` is called: with a config (validated by `model` when there is one) and/or metadata."""

    takes_config: bool
    takes_metadata: bool
    model: Optional[type]


@dataclass
class Discovery:
    functions: dict[str, AppFunction]
    reports: list[MethodReport]
    setup: SetupSpec

    @property
    def default_function(self) -> Optional[str]:
        return DEFAULT_FUNCTION if DEFAULT_FUNCTION in self.functions else None


def discover(app_cls: type) -> Discovery:
    reports = [_inspect_method(app_cls, name) for name in _app_method_names(app_cls)]
    functions = {r.function.name: r.function for r in reports if r.function is not None}
    return Discovery(functions=functions, reports=reports, setup=inspect_setup(app_cls))


def _is_framework(cls: type) -> bool:
    return cls is object or cls.__module__.startswith(_FRAMEWORK_MODULES)


def _app_method_names(app_cls: type) -> list[str]:
    """Names of callables the app's own classes define, base classes first, in source order."""
    names: list[str] = []
    for cls in reversed(app_cls.__mro__):
        if _is_framework(cls):
            continue
        for name, value in vars(cls).items():
            if name.startswith("__") or name in names:
                continue
            if callable(value) or isinstance(value, (staticmethod, classmethod)):
                names.append(name)
    return names


def _inspect_method(app_cls: type, name: str) -> MethodReport:
    report = MethodReport(name)
    public = report.check(not name.startswith("_"), "public", "private (leading underscore)")
    free = report.check(name not in RESERVED, "not reserved", "reserved lifecycle method")
    raw = inspect.getattr_static(app_cls, name)
    if isinstance(raw, (staticmethod, classmethod)):
        report.check(False, "", "not an instance method (staticmethod/classmethod)")
        return report
    func: Callable = getattr(app_cls, name)
    if inspect.isgeneratorfunction(func):
        report.check(False, "", "sync generators are not supported: make it `async def ... -> AsyncGenerator[Output, None]`")
        return report

    params = list(inspect.signature(func).parameters.values())[1:]
    takes_metadata = len(params) == 2 and params[1].name == "metadata"
    inputs = params[:1] if takes_metadata else params
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    one_input = report.check(
        len(inputs) == 1 and inputs[0].kind in positional,
        "one input parameter" + (" (+ metadata)" if takes_metadata else ""),
        f"takes {len(params)} parameters besides self; expected one input (and optionally `metadata`)",
    )
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:  # NameError, TypeError from unresolvable forward refs
        report.check(False, "", f"type hints could not be resolved: {exc}")
        return report

    input_hint = hints.get(inputs[0].name) if one_input else None
    has_input_hint = one_input and report.check(input_hint is not None, "input type hint", "missing input type hint")
    has_return_hint = report.check("return" in hints, "return type hint", "missing return type hint")
    input_ok = has_input_hint and report.check(
        is_model(input_hint), f"input is a pydantic model ({_name(input_hint)})",
        f"input type {_name(input_hint)} is not a pydantic model",
    )
    is_generator = inspect.isasyncgenfunction(func)
    output_model = _output_model(hints.get("return"), is_generator) if has_return_hint else None
    output_ok = has_return_hint and report.check(
        output_model is not None,
        f"output is a pydantic model ({_name(output_model)})" + (", yielded as progress" if is_generator else ""),
        f"return type {_name(hints.get('return'))} is not a pydantic model"
        + (" (async generators return AsyncGenerator[Model, None])" if is_generator else ""),
    )
    if public and free and one_input and input_ok and output_ok:
        kind: CallKind = "generator" if is_generator else "async" if inspect.iscoroutinefunction(func) else "sync"
        report.function = AppFunction(
            name=name,
            input_model=input_hint,
            output_model=output_model,
            call_kind=kind,
            takes_metadata=takes_metadata,
            description=inspect.getdoc(func) or "",
        )
    return report


def _output_model(hint: Any, is_generator: bool) -> Optional[type]:
    if is_model(hint):
        return hint
    origin = typing.get_origin(hint)
    iterators = (collections.abc.AsyncGenerator, collections.abc.AsyncIterator, collections.abc.AsyncIterable)
    if is_generator and origin in iterators:
        args = typing.get_args(hint)
        if args and is_model(args[0]):
            return args[0]
    return None


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or repr(hint)


def inspect_setup(app_cls: type) -> SetupSpec:
    """Read `setup`'s signature: `setup()`, `setup(metadata)`, `setup(config)` or `setup(config, metadata)`."""
    setup = getattr(app_cls, "setup", None)
    if setup is None:
        return SetupSpec(takes_config=False, takes_metadata=False, model=None)
    params = list(inspect.signature(setup).parameters.values())[1:]
    try:
        hints = typing.get_type_hints(setup)
    except Exception:
        hints = {}
    if not params:
        return SetupSpec(takes_config=False, takes_metadata=False, model=None)
    first = params[0]
    if len(params) == 1 and (first.name == "metadata" or _name(hints.get(first.name)) == "Metadata"):
        return SetupSpec(takes_config=False, takes_metadata=True, model=None)
    model = hints.get(first.name)
    if not is_model(model):
        # An untyped config parameter takes the module's `AppSetup`, as inference.sh does.
        model = getattr(inspect.getmodule(app_cls), "AppSetup", None)
        model = model if is_model(model) else None
    return SetupSpec(takes_config=True, takes_metadata=len(params) >= 2, model=model)
