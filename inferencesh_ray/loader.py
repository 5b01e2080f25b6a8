"""Find and import an app: an app directory, a `.py` file, or `package.module:Class`."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .errors import AppLoadError
from .tracebacks import app_traceback

DEFAULT_REF = "./inference.py"
APP_CLASS = "App"


@dataclass(frozen=True)
class LoadedApp:
    app_cls: type
    module: ModuleType
    name: str
    """The default app name: its directory's (or module's), `_` written as `-`."""


def load_app(ref: str = DEFAULT_REF) -> LoadedApp:
    target, class_name = _split(ref)
    path = Path(target)
    if path.is_dir():
        path = path / "inference.py"
        if not path.is_file():
            raise AppLoadError(f"{target} is a directory without an inference.py; point at the app's .py file")
    if _is_file_ref(path):
        module = _import_file(path)
        name = path.resolve().parent.name if path.name == "inference.py" else path.stem
        where = str(path)
    else:
        module = _import_module(target)
        name = target.rpartition(".")[2]
        where = module.__name__
    class_name = class_name or APP_CLASS
    app_cls = getattr(module, class_name, None)
    if not isinstance(app_cls, type):
        classes = sorted(n for n, v in vars(module).items() if isinstance(v, type) and v.__module__ == module.__name__)
        raise AppLoadError(
            f"{ref}: no class {class_name!r} in {where}; name one with PATH:Class "
            f"(classes defined there: {', '.join(classes) or 'none'})"
        )
    return LoadedApp(app_cls=app_cls, module=module, name=name.replace("_", "-"))


def is_module_ref(ref: str) -> bool:
    """Whether `ref` names a module (`package.module[:Class]`) rather than a directory or a file."""
    path = Path(_split(ref)[0])
    return not (path.is_dir() or _is_file_ref(path))


def _split(ref: str) -> tuple[str, str]:
    """`(target, class name or "")` of a reference."""
    if _is_windows_drive(ref):
        return ref, ""
    target, _, class_name = ref.partition(":")
    return target, class_name


def _is_file_ref(path: Path) -> bool:
    return path.suffix == ".py" or path.is_file()


def _is_windows_drive(ref: str) -> bool:
    return len(ref) > 1 and ref[1] == ":" and ref[0].isalpha()


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise AppLoadError(f"app file not found: {path}; give an app directory, a .py file or package.module:Class")
    path = path.resolve()
    # A name unique per file, so two apps both called inference.py never collide.
    name = f"infsh_app_{path.parent.name}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AppLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    # The app's own directory is importable, so `from helpers import x` works beside inference.py.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    sys.modules[name] = module
    try:
        _exec_beside_other_apps(spec, module, path.parent)
    except BaseException as exc:
        del sys.modules[name]
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AppLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}\n{app_traceback(exc)}") from exc
    return module


def _exec_beside_other_apps(spec, module: ModuleType, directory: Path) -> None:
    """Run the app's module so that it imports its own modules, not same-named ones already imported.

    Helpers are imported by bare name (`from helpers import x`, `from models.io import In`),
    and Python caches modules by name: two apps each with a `helpers.py` or a `models/`
    package, loaded in one process (a server's driver, a test), would otherwise share the
    first one's, submodules included. So while the module runs, every module under one of
    the app's own names (`models` and each `models.*`) that comes from elsewhere is hidden.
    Afterwards those are put back, whole families replacing the app's own (which the app's
    module keeps referring to): loading an app never changes what other code imports.
    """
    own = {path.stem for path in directory.glob("*.py")} | {path.parent.name for path in directory.glob("*/__init__.py")}
    own -= set(sys.stdlib_module_names)
    hidden = {
        name: imported
        for name, imported in list(sys.modules.items())  # a copy: other threads may import meanwhile
        if _top_name(name) in own and not _inside(imported, directory)
    }
    for name in hidden:
        del sys.modules[name]
    try:
        spec.loader.exec_module(module)
    finally:
        _put_back(hidden)


def _put_back(hidden: dict[str, ModuleType]) -> None:
    # A family goes back whole: a submodule the app imported under a hidden package's name
    # would otherwise be found later as that package's.
    families = {_top_name(name) for name in hidden}
    for name in [name for name in list(sys.modules) if _top_name(name) in families]:
        del sys.modules[name]
    sys.modules.update(hidden)


def _top_name(name: str) -> str:
    return name.partition(".")[0]


def _inside(module: ModuleType, directory: Path) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).resolve().is_relative_to(directory)


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # The reference itself (or a package on its way) is missing, not something it imports.
        if exc.name and (exc.name == name or name.startswith(exc.name + ".")):
            raise AppLoadError(
                f"{name!r} is neither a file, an app directory nor an importable module "
                "(give an app directory, a .py file or package.module:Class)"
            ) from exc
        raise AppLoadError(f"importing {name} failed: {exc}\n{app_traceback(exc)}") from exc
    except Exception as exc:
        raise AppLoadError(f"importing {name} failed: {type(exc).__name__}: {exc}\n{app_traceback(exc)}") from exc
