"""Loading apps: each app's own modules, however many apps load in one process, and what a bad reference says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from inferencesh_ray.discovery import discover
from inferencesh_ray.errors import AppLoadError
from inferencesh_ray.loader import load_app
from inferencesh_ray.schema import functions_schema

PACKAGE = "infsh_test_models"  # a name no other test imports


@pytest.fixture
def isolated_imports():
    """Forget, after the test, the modules and sys.path entries its apps added."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in [name for name in sys.modules if name.partition(".")[0] == PACKAGE]:
        del sys.modules[name]


def write_app(directory: Path, fields: str, extra_import: str = "") -> None:
    """An app whose models live in its own package `PACKAGE`, `PACKAGE.io`."""
    (directory / PACKAGE).mkdir(parents=True)
    (directory / PACKAGE / "__init__.py").write_text("")
    (directory / PACKAGE / "io.py").write_text(
        f"from pydantic import BaseModel\n\nclass In(BaseModel):\n{fields}\n\nclass Out(BaseModel):\n    ok: bool\n"
    )
    (directory / PACKAGE / "extra.py").write_text("WHO = 'extra'\n")
    (directory / "inference.py").write_text(
        f"from {PACKAGE}.io import In, Out\n{extra_import}\n"
        "class App:\n    def run(self, data: In) -> Out:\n        return Out(ok=True)\n"
    )


def input_properties(path: Path) -> list[str]:
    schema = functions_schema(discover(load_app(str(path)).app_cls))  # as a server's driver does, app by app
    return list(schema["functions"]["run"]["input_schema"]["properties"])


def test_two_apps_with_a_same_named_package_each_get_their_own_submodules(tmp_path, isolated_imports):
    write_app(tmp_path / "first", "    prompt: str")
    write_app(tmp_path / "second", "    image_url: str\n    scale: int", extra_import=f"import {PACKAGE}.extra")
    assert input_properties(tmp_path / "first") == ["prompt"]
    first_io = sys.modules[f"{PACKAGE}.io"]
    assert input_properties(tmp_path / "second") == ["image_url", "scale"]
    # The first app's modules are what other code imports still, and none of the second's is left
    # beside them: a submodule only the second imported is not passed off as the first's.
    assert sys.modules[f"{PACKAGE}.io"] is first_io
    assert f"{PACKAGE}.extra" not in sys.modules


def test_a_missing_dependency_is_named_not_taken_for_a_bad_reference(tmp_path, monkeypatch):
    # The dependency's name is a prefix of the app's package's: `mypkg` of `mypkgapp`.
    (tmp_path / "mypkgapp").mkdir()
    (tmp_path / "mypkgapp" / "__init__.py").write_text("")
    (tmp_path / "mypkgapp" / "inference.py").write_text("import mypkg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AppLoadError, match=r"^importing mypkgapp\.inference failed: No module named 'mypkg'"):
        load_app("mypkgapp.inference")
    with pytest.raises(AppLoadError, match="is neither a file, an app directory nor an importable module"):
        load_app("mypkgapp.nothing")
    with pytest.raises(AppLoadError, match="is neither a file, an app directory nor an importable module"):
        load_app("nopkgapp.inference")
