"""Discovery: which methods are functions, and why each other method is skipped."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict

from inferencesh_ray.discovery import SetupSpec, discover, inspect_setup
from inferencesh_ray.errors import AppError
from inferencesh_ray.loader import load_app


def reports(path):
    discovery = discover(load_app(str(path)).app_cls)
    return discovery, {report.name: report for report in discovery.reports}


def failed(report) -> list[str]:
    return [rule.text for rule in report.rules if not rule.passed]


def test_every_skip_reason_is_named(apps):
    discovery, by_name = reports(apps / "skips.py")
    assert sorted(discovery.functions) == ["good", "with_metadata"]
    assert discovery.functions["with_metadata"].takes_metadata
    assert failed(by_name["_private"]) == ["private (leading underscore)"]
    assert failed(by_name["setup"])[0] == "reserved lifecycle method"
    assert "missing input type hint" in failed(by_name["no_input_hint"])
    assert "missing return type hint" in failed(by_name["no_return_hint"])
    assert any("takes 2 parameters" in text for text in failed(by_name["two_inputs"]))
    assert any("takes 0 parameters" in text for text in failed(by_name["no_inputs"]))
    assert any("input type int is not a pydantic model" in text for text in failed(by_name["not_a_model"]))
    assert any("return type dict is not a pydantic model" in text for text in failed(by_name["returns_dict"]))
    assert any("sync generators are not supported" in text for text in failed(by_name["sync_generator"]))
    assert any("AsyncGenerator[Model, None]" in text for text in failed(by_name["gen_bad_hint"]))
    assert any("not an instance method" in text for text in failed(by_name["static"]))
    assert any("could not be resolved" in text for text in failed(by_name["unresolvable"]))
    assert "names its metadata parameter 'meta'; name it `metadata`" in failed(by_name["metadata_misnamed"])[0]
    assert "takes `metadata` before the input; put it last" in failed(by_name["metadata_first"])[0]
    # Public methods only: a private helper and setup are left out on purpose.
    assert discovery.skipped["returns_dict"] == "return type dict is not a pydantic model"
    assert "_private" not in discovery.skipped and "setup" not in discovery.skipped


def test_calling_a_skipped_method_says_why_it_is_not_a_function(apps):
    from inferencesh_ray.errors import FunctionNotFound
    from inferencesh_ray.host import AppHost
    from inferencesh_ray.loader import load_app

    host = AppHost(load_app(str(apps / "skips.py")).app_cls)
    with pytest.raises(FunctionNotFound, match=r"^'returns_dict' is not a function \(return type dict is not a pydantic"):
        host.function("returns_dict")
    with pytest.raises(FunctionNotFound, match=r"^this app has no `run` function, so name one; its functions are: good"):
        host.function(None)


def test_call_kinds_and_default(apps):
    discovery, _ = reports(apps / "counting.py")
    kinds = {name: fn.call_kind for name, fn in discovery.functions.items()}
    assert kinds["run"] == "async"
    assert kinds["shout"] == "sync"
    assert kinds["count"] == "generator"
    assert discovery.default_function == "run"
    assert discovery.functions["count"].output_model.__name__ == "EchoOutput"
    assert "setup" not in discovery.functions and "unload" not in discovery.functions


def test_pydantic_v1_app_without_base_class(apps):
    discovery, _ = reports(apps / "pydantic_v1_app.py")
    assert list(discovery.functions) == ["run"]
    assert discovery.setup.takes_config is False


def test_official_package_app(apps):
    discovery, _ = reports(apps / "official_app.py")
    # pydantic's own BaseModel methods (model_dump, ...) and the official base's run are not the app's.
    assert sorted(discovery.functions) == ["run", "save"]
    assert discovery.functions["run"].takes_metadata
    # `setup(self, config)` untyped takes the module's AppSetup, as inference.sh does.
    assert discovery.setup.model.__name__ == "AppSetup"


class Config(BaseModel):
    a: int = 1


class NoConfig:
    def setup(self): ...


class OnlyMetadata:
    def setup(self, metadata): ...


class Typed:
    def setup(self, config: Config): ...


class Both:
    def setup(self, config: Config, metadata): ...


def test_setup_signatures():
    assert inspect_setup(NoConfig) == SetupSpec(takes_config=False, takes_metadata=False, model=None)
    assert inspect_setup(OnlyMetadata) == SetupSpec(takes_config=False, takes_metadata=True, model=None)
    assert inspect_setup(Typed) == SetupSpec(takes_config=True, takes_metadata=False, model=Config)
    assert inspect_setup(Both) == SetupSpec(takes_config=True, takes_metadata=True, model=Config)


def test_class_attributes_are_no_functions_and_odd_methods_are_skipped_with_a_reason(apps):
    discovery, by_name = reports(apps / "odd_attributes.py")
    assert list(discovery.functions) == ["run"]
    # Classes (a model alias, a builtin factory) and plain objects are not methods at all.
    assert set(by_name) == {"pick", "run", "keyword_only", "raw"}
    [unreadable] = failed(by_name["pick"])
    assert unreadable.startswith("not a method with a readable signature")
    assert failed(by_name["keyword_only"]) == ["the input parameter must be positional, and 'data' is keyword-only"]
    assert failed(by_name["raw"]) == [
        "output model RawOut has no JSON schema: field 'frames.pixels' (Tensor | None) has none; "
        "give it a JSON type, or annotate it with pydantic's WithJsonSchema"
    ]


class Handle:
    """An arbitrary type: a model may hold it, but JSON schema cannot describe it."""


class Undescribable(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    handle: Handle


class UndescribableSetup:
    def setup(self, config: Undescribable): ...

    def run(self, data: Config) -> Config: ...


def test_a_setup_config_without_json_schema_is_an_error_naming_the_field():
    with pytest.raises(AppError, match=r"^setup config Undescribable has no JSON schema: field 'handle' \(Handle\)"):
        discover(UndescribableSetup)
