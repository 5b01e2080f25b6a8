"""A task as the lines of its NDJSON stream, shaped for what the official clients can read."""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Callable, Optional

from .json_codec import dumps_ascii
from .recent import RecentTasks
from .status import TaskStatus
from .writes import StoreUnavailable

_log = logging.getLogger(__name__)

# A quiet stream gets the task again this often: it keeps proxies from closing the
# connection, and the official client checks a wait's `timeout` (and its 30 s idle rule)
# only as a task arrives.
RESEND_IDLE_S = 5.0
# The official async client (aiohttp) refuses a longer line, 512 KiB since aiohttp 3.14 and
# 128 KiB before, and does not connect again.
MAX_LINE_BYTES = 96 * 1024
STREAM_LOG_LINES = 50
_LOG_CHARS = 1000


async def task_lines(
    tasks: RecentTasks, task_id: str, owner: str, resend_idle_s: float
) -> AsyncIterator[bytes]:
    """The task now, then on every change and after every `resend_idle_s` of quiet, until it ends.

    A stream that cannot go on ends cleanly, never cut off: the official async client gives
    up on a cut response, while after a clean end both clients GET the task and connect again.
    """
    seen = -1
    while True:
        try:
            result = await tasks.watch(task_id, owner, seen, resend_idle_s)
        except StoreUnavailable as exc:
            _log.warning("ending the stream of task %s: %s", task_id, exc)
            return
        if result is None:
            return
        seen, task = result
        line = stream_line(task)
        if line is None:
            return
        yield line
        if TaskStatus(task["status"]).is_terminal:
            return


def stream_line(task: dict[str, Any]) -> Optional[bytes]:
    """The task as one line of at most MAX_LINE_BYTES, its last STREAM_LOG_LINES log lines only.

    A running task's line leaves out what does not fit: its input and setup, then the end of
    long log lines, then its output. A finished task's line is whole, the client's result, or
    None when it does not fit: a stream that ends without it makes the client GET the task.
    """
    view = {**task, "logs": (task.get("logs") or [])[-STREAM_LOG_LINES:]}
    line = _line(view)
    if len(line) <= MAX_LINE_BYTES:
        return line
    if TaskStatus(task["status"]).is_terminal:
        return None
    for cut in _CUTS:
        view = cut(view)
        line = _line(view)
        if len(line) <= MAX_LINE_BYTES:
            break
    return line


def _line(view: dict[str, Any]) -> bytes:
    return dumps_ascii(view) + b"\n"


def _without_input(view: dict[str, Any]) -> dict[str, Any]:
    return {**view, "input": None, "setup": None}


def _short_logs(view: dict[str, Any]) -> dict[str, Any]:
    more = f"... (cut here: GET /tasks/{view['id']} has the whole line)"
    logs = [
        {**entry, "content": entry["content"][:_LOG_CHARS] + more} if len(entry.get("content") or "") > _LOG_CHARS
        else entry
        for entry in view["logs"]
    ]
    return {**view, "logs": logs}


def _without_output(view: dict[str, Any]) -> dict[str, Any]:
    return {**view, "output": None}


_CUTS: tuple[Callable[[dict[str, Any]], dict[str, Any]], ...] = (_without_input, _short_logs, _without_output)
