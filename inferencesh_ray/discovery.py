"""Which methods of an app class are functions, by the rules of inference.sh apps.

A method is a function when it is public, not `setup`/`unload`, takes exactly one
input parameter besides `self` (plus an optional trailing `metadata`), and has type
hints on that input and on its return that are both pydantic models (v2 or
`pydantic.v1`) with a JSON schema. Async generators return `AsyncGenerator[Output, None]`;
a `@batched` function takes `list[Input]` and returns `list[Output]`, and its input and
output models are the elements'. Every rule is checked for every method, so
`infsh-ray app validate --verbose` can say why a method was skipped.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Optional

import pydantic

from .batching import BatchSpec, batch_spec
from .errors import AppError
from .schema import schema_problem

try:
    from pydantic import v1 as pydantic_v1
except ImportError:  # pragma: no cover - pydantic v2 always ships v1
    pydantic_v1 = None

RESERVED = frozenset({"setup", "unload"})
DEFAULT_FUNCTION = "run"
# Methods of these modules belong to the framework or to pydantic, never to the app.
_FRAMEWORK_MODULES = ("builtins", "pydantic", "inferencesh.", "inferencesh_ray.")
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_NOT_POSITIONAL = {
    inspect.Parameter.KEYWORD_ONLY: "keyword-only",
    inspect.Parameter.VAR_POSITIONAL: "a *args parameter",
    inspect.Parameter.VAR_KEYWORD: "a **kwargs parameter",
}

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
    batch: Optional[BatchSpec] = None
    """How calls are grouped when the function is `@batched`; it then takes and returns lists."""


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

    @property
    def why_skipped(self) -> Optional[str]:
        """Why a public method that is not setup or unload is not a function; None for the others."""
        if self.discovered or self.name.startswith("_") or self.name in RESERVED:
            return None
        return next(rule.text for rule in self.rules if not rule.passed)

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

    @property
    def skipped(self) -> dict[str, str]:
        """Public methods that are not functions, and why: an author's mistake, or a helper to make private."""
        return {report.name: why for report in self.reports if (why := report.why_skipped) is not None}

    def with_batching(self, overrides: Mapping[str, Mapping[str, Any]]) -> "Discovery":
        """These functions with batch sizes and wait times overridden, e.g. `{"embed": {"max_batch_size": 64}}`."""
        functions = dict(self.functions)
        for name, settings in overrides.items():
            functions[name] = _override_batching(functions, name, settings)
        return dataclasses.replace(self, functions=functions)


def _override_batching(functions: dict[str, AppFunction], name: str, settings: Any) -> AppFunction:
    function = functions.get(name)
    if function is None or function.batch is None:
        what = "an unknown function" if function is None else "a function that is not @batched"
        batched_names = ", ".join(n for n, fn in functions.items() if fn.batch) or "none"
        raise AppError(f"batching: {name!r} is {what}; this app's batched functions are: {batched_names}")
    if not isinstance(settings, Mapping):
        raise AppError(f"batching of {name!r}: give a mapping like {{max_batch_size: 64, max_wait_ms: 10}}, not {settings!r}")
    try:
        return dataclasses.replace(function, batch=function.batch.override(settings))
    except ValueError as exc:
        raise AppError(f"batching of {name!r}: {exc}") from exc


def discover(app_cls: type) -> Discovery:
    """The app's functions and setup; an AppError when its setup config has no JSON schema."""
    reports = [_inspect_method(app_cls, name) for name in _app_method_names(app_cls)]
    functions = {r.function.name: r.function for r in reports if r.function is not None}
    setup = inspect_setup(app_cls)
    # Unlike a function, setup cannot be skipped: the app is served with its config's schema.
    if setup.model is not None and (problem := schema_problem(setup.model)):
        raise AppError(f"setup config {problem}")
    return Discovery(functions=functions, reports=reports, setup=setup)


def _is_framework(cls: type) -> bool:
    return cls is object or cls.__module__.startswith(_FRAMEWORK_MODULES)


def _app_method_names(app_cls: type) -> list[str]:
    """Names of callables the app's own classes define, base classes first, in source order.

    Classes are callable but never functions: a nested model, `Input = In`, `_factory = dict`.
    """
    names: list[str] = []
    for cls in reversed(app_cls.__mro__):
        if _is_framework(cls):
            continue
        for name, value in vars(cls).items():
            if name.startswith("__") or name in names or isinstance(value, type):
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
    batch = batch_spec(func)
    is_generator = inspect.isasyncgenfunction(func)
    if batch is not None and not report.check(
        not is_generator, batch.describe(), "@batched, but an async generator: a batched function returns a list"
    ):
        return report

    try:
        params = list(inspect.signature(func).parameters.values())[1:]
    except (ValueError, TypeError) as exc:  # a callable attribute such as operator.itemgetter(0)
        report.check(False, "", f"not a method with a readable signature ({exc})")
        return report
    takes_metadata = len(params) == 2 and params[1].name == "metadata"
    inputs = params[:1] if takes_metadata else params
    one_input = report.check(
        len(inputs) == 1 and inputs[0].kind in _POSITIONAL,
        "one input parameter" + (" (+ metadata)" if takes_metadata else ""),
        _inputs_problem(params, inputs),
    )
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:  # NameError, TypeError from unresolvable forward refs
        report.check(False, "", f"type hints could not be resolved: {exc}")
        return report

    input_hint = hints.get(inputs[0].name) if one_input else None
    return_hint = hints.get("return")
    has_input_hint = one_input and report.check(input_hint is not None, "input type hint", "missing input type hint")
    has_return_hint = report.check("return" in hints, "return type hint", "missing return type hint")
    input_model = _list_element(input_hint) if batch else input_hint if is_model(input_hint) else None
    input_ok = has_input_hint and report.check(input_model is not None, *_input_rule(input_hint, batch))
    output_model = _output_model(return_hint, is_generator, batch) if has_return_hint else None
    output_ok = has_return_hint and report.check(
        output_model is not None, *_output_rule(return_hint, output_model, is_generator, batch)
    )
    schemas_ok = input_ok and output_ok and report.check(*_schema_rule(input_model, output_model))
    if public and free and one_input and schemas_ok:
        kind: CallKind = "generator" if is_generator else "async" if inspect.iscoroutinefunction(func) else "sync"
        report.function = AppFunction(
            name=name,
            input_model=input_model,
            output_model=output_model,
            call_kind=kind,
            takes_metadata=takes_metadata,
            description=inspect.getdoc(func) or "",
            batch=batch,
        )
    return report


def _inputs_problem(params: list[inspect.Parameter], inputs: list[inspect.Parameter]) -> str:
    """The failed text of the rule on the parameters besides self."""
    if len(inputs) == 1 and inputs[0].kind not in _POSITIONAL:
        # The host passes the input positionally: `def run(self, *, data)` could never be called.
        return f"the input parameter must be positional, and {inputs[0].name!r} is {_NOT_POSITIONAL[inputs[0].kind]}"
    if len(params) == 2 and params[0].name == "metadata":
        return "takes `metadata` before the input; put it last: `(self, input_data, metadata)`"
    if len(params) == 2 and "Metadata" in str(params[1].annotation):
        return f"names its metadata parameter {params[1].name!r}; name it `metadata`, which is how it is passed"
    return f"takes {len(params)} parameters besides self; expected one input (and optionally `metadata`)"


def _schema_rule(input_model: type, output_model: type) -> tuple[bool, str, str]:
    """The rule that both models have a JSON schema: (passed, passed text, failed text)."""
    problems = [f"{what} model {problem}" for what, model in (("input", input_model), ("output", output_model))
                if (problem := schema_problem(model))]
    return not problems, "input and output have JSON schemas", "; ".join(problems)


def _input_rule(hint: Any, batch: Optional[BatchSpec]) -> tuple[str, str]:
    """The (passed, failed) texts of the rule on the input's type."""
    if batch is not None:
        return (
            f"input is a list of pydantic models ({_name(hint)}), one element per task",
            f"input type {_name(hint)} is not a list of pydantic models; a @batched function takes list[Model]",
        )
    return (
        f"input is a pydantic model ({_name(hint)})",
        f"input type {_name(hint)} is not a pydantic model" + _unbatched_list_hint(hint),
    )


def _output_rule(hint: Any, model: Optional[type], is_generator: bool, batch: Optional[BatchSpec]) -> tuple[str, str]:
    """The (passed, failed) texts of the rule on the return type."""
    if batch is not None:
        return (
            f"output is a list of pydantic models ({_name(hint)}), one element per task",
            f"return type {_name(hint)} is not a list of pydantic models; a @batched function returns list[Model]",
        )
    generator_hint = " (async generators return AsyncGenerator[Model, None])" if is_generator else ""
    return (
        f"output is a pydantic model ({_name(model)})" + (", yielded as progress" if is_generator else ""),
        f"return type {_name(hint)} is not a pydantic model" + (generator_hint or _unbatched_list_hint(hint)),
    )


def _unbatched_list_hint(hint: Any) -> str:
    # A list of models is what a batched function takes; say so to an author who forgot the decorator.
    return " (a function on list[Model] must be @batched)" if _list_element(hint) is not None else ""


def _list_element(hint: Any) -> Optional[type]:
    """`Model` of a `list[Model]` (or `List[Model]`) hint, else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list and len(args) == 1 and is_model(args[0]):
        return args[0]
    return None


def _output_model(hint: Any, is_generator: bool, batch: Optional[BatchSpec]) -> Optional[type]:
    if batch is not None:
        return _list_element(hint)
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
    args = typing.get_args(hint)
    if args:  # list[In] rather than list, the generic's own name
        return f"{_name(typing.get_origin(hint))}[{', '.join(map(_name, args))}]"
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
