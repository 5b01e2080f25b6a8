"""The vocabulary between the app host and whoever runs it.

The host emits these while it serves one call; the task store is the one place that
applies them to a task. Each is a small frozen record so both sides can be read and
tested alone, and so they pickle cheaply across Ray. Each carries the moment it
happened: a replica sends a quick task's events together, after the fact, and the task
must still show when it started running and when it ended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .status import TaskStatus


@dataclass(frozen=True)
class _Event:
    at: float = field(default_factory=time.time, kw_only=True, compare=False)
    """When it happened: seconds since the epoch, on the clock of the machine that emitted it."""


@dataclass(frozen=True)
class SettingUp(_Event):
    """The instance is running `setup` for this call's config."""

    status = TaskStatus.SETTING_UP


@dataclass(frozen=True)
class Running(_Event):
    status = TaskStatus.RUNNING


@dataclass(frozen=True)
class Log(_Event):
    """One line the app wrote: `metadata.log`, `print` or `logging`."""

    text: str
    seq: Optional[int] = field(default=None, compare=False)
    """Its place in the task's logs, from 0: a write the store takes twice (sent again after
    its reply was lost) adds the line once."""
    status = None


@dataclass(frozen=True)
class Output(_Event):
    """A progress snapshot from an async-generator function; replaces the task's output."""

    output: Any
    status = None


@dataclass(frozen=True)
class Uploading(_Event):
    status = TaskStatus.UPLOADING


@dataclass(frozen=True)
class Completed(_Event):
    output: Any
    status = TaskStatus.COMPLETED


@dataclass(frozen=True)
class Failed(_Event):
    """The call failed. `error` is for clients; `traceback` holds the app's own frames."""

    error: str
    traceback: str = ""
    status = TaskStatus.FAILED


@dataclass(frozen=True)
class Cancelled(_Event):
    reason: str = "cancelled"
    status = TaskStatus.CANCELLED


TaskEvent = Union[SettingUp, Running, Log, Output, Uploading, Completed, Failed, Cancelled]
TERMINAL_EVENTS = (Completed, Failed, Cancelled)
