"""Errors of the app model. Each message says what went wrong and what to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


class AppError(Exception):
    """Base of every error about an app, its functions or its input."""


class AppLoadError(AppError):
    """The app could not be found, imported or understood."""


class FunctionNotFound(AppError):
    def __init__(self, name: str | None, known: list[str], skipped: Mapping[str, str] = {}) -> None:
        self.name = name
        self.known = known
        listed = ", ".join(known) or "none"
        why = skipped.get(name or "run")
        if why is not None:
            message = f"{name or 'run'!r} is not a function ({why}); this app's functions are: {listed}"
        elif name is None:
            message = f"this app has no `run` function, so name one; its functions are: {listed}"
        else:
            message = f"unknown function {name!r}; this app's functions are: {listed}"
        super().__init__(message)


@dataclass(frozen=True)
class FieldError:
    """One invalid field: a dotted location (`images.0.uri`) and why."""

    loc: str
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}"


class InvalidInput(AppError):
    """Input (or setup config) that fails the schema; names every bad field."""

    def __init__(self, what: str, errors: list[FieldError]) -> None:
        self.what = what
        self.errors = errors
        super().__init__(f"invalid {what}: " + "; ".join(str(e) for e in errors))


class AppCodeError(AppError):
    """An exception raised by the app's own code (setup or a function)."""

    def __init__(self, message: str, traceback: str = "") -> None:
        self.traceback = traceback
        super().__init__(message)
