"""Task objects as the client reads them: their status, the shape callers get, and how they end."""

from __future__ import annotations

from typing import Any, Optional

from ..status import TaskStatus
from ._errors import TaskCancelled, TaskError, TaskFailed, TaskRejected

_BY_NAME = {status.name.lower(): status for status in TaskStatus}


def parse_status(value: Any) -> Optional[TaskStatus]:
    """An integer or a (case-insensitive) name; anything else unknown, which is not terminal. None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):  # a bool is an int to Python, never a status on the wire
        return TaskStatus.UNKNOWN
    if isinstance(value, int):
        return TaskStatus(value) if value in TaskStatus._value2member_map_ else TaskStatus.UNKNOWN
    if isinstance(value, str):
        return _BY_NAME.get(value.lower(), TaskStatus.UNKNOWN)
    return TaskStatus.UNKNOWN


def is_terminal(task: dict[str, Any]) -> bool:
    status = parse_status(task.get("status"))
    return status is not None and status.is_terminal


def strip_task(task: dict[str, Any]) -> dict[str, Any]:
    """The task as the official SDK hands it to callers: these keys only (no `error`, no `function`)."""
    stripped = {key: task.get(key) for key in ("id", "created_at", "updated_at", "input", "output", "logs", "status")}
    for key in ("session_id", "socket"):
        if task.get(key):
            stripped[key] = task[key]
    return stripped


def failure_of(task: dict[str, Any]) -> Optional[TaskError]:
    """The error a task that ended without a result stands for (the official SDK's texts); None otherwise."""
    status = parse_status(task.get("status"))
    error = task.get("error")
    if status == TaskStatus.FAILED:
        return TaskFailed(error or "task failed", task)
    if status == TaskStatus.CANCELLED:
        return TaskCancelled("task cancelled", task)
    if status == TaskStatus.REJECTED:
        return TaskRejected(f"task rejected: {error}" if error else "task rejected", task)
    return None
