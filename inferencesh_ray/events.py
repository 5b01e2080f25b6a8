"""The vocabulary between the app host and whoever runs it.

The host emits these while it serves one call; the task store is the one place that
applies them to a task. Each is a small frozen record so both sides can be read and
tested alone, and so they pickle cheaply across Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from .status import TaskStatus


@dataclass(frozen=True)
class SettingUp:
    """The instance is running `setup` for this call's config."""

    status = TaskStatus.SETTING_UP


@dataclass(frozen=True)
class Running:
    status = TaskStatus.RUNNING


@dataclass(frozen=True)
class Log:
    """One line the app wrote: `metadata.log`, `print` or `logging`."""

    text: str
    status = None


@dataclass(frozen=True)
class Output:
    """A progress snapshot from an async-generator function; replaces the task's output."""

    output: Any
    status = None


@dataclass(frozen=True)
class Uploading:
    status = TaskStatus.UPLOADING


@dataclass(frozen=True)
class Completed:
    output: Any
    status = TaskStatus.COMPLETED


@dataclass(frozen=True)
class Failed:
    """The call failed. `error` is for clients; `traceback` holds the app's own frames."""

    error: str
    traceback: str = ""
    status = TaskStatus.FAILED


@dataclass(frozen=True)
class Cancelled:
    reason: str = "cancelled"
    status = TaskStatus.CANCELLED


TaskEvent = Union[SettingUp, Running, Log, Output, Uploading, Completed, Failed, Cancelled]
TERMINAL_EVENTS = (Completed, Failed, Cancelled)
