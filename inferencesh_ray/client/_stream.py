"""Following one task's NDJSON stream to its end, without doing any I/O.

`TaskWatch` is the whole policy shared by the sync and async streams, which only move
bytes: feed it lines; when a connection ends without the task's end, give it the task
from a GET (the source of truth); if that has not ended either, it says how long to wait
before connecting again, or raises. So a waiting caller never misses a terminal status
that a dropped connection swallowed, and never waits past its own `timeout`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from ..status import TaskStatus
from ._errors import ConnectionFailed, WaitTimeout
from ._tasks import failure_of, is_terminal, parse_status, strip_task
from ._wire import is_transient

# Heartbeats alone for this long mean the server has lost track of the task: reconcile.
HEARTBEAT_IDLE_S = 30.0
MAX_BACKOFF_S = 8.0


class Heartbeat:
    """A `{"type": "heartbeat"}` line: proof the connection lives, nothing about the task."""


HEARTBEAT = Heartbeat()


def parse_line(line: Union[str, bytes]) -> Union[dict[str, Any], Heartbeat, None]:
    """The task object a stream line carries, HEARTBEAT, or None for a line to skip."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not text:
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None  # e.g. an SSE `data:` line from something in between
    if not isinstance(event, dict):
        return None
    if event.get("type") == "heartbeat":
        return HEARTBEAT
    if event.get("event") == "delta":
        return None  # LLM token deltas: this server sends none, so the client does not accumulate them
    if "data" in event and "fields" in event:
        return event["data"] if isinstance(event["data"], dict) else None
    return event


@dataclass(frozen=True)
class StreamOptions:
    """How persistently to follow a stream: reconnects (backing off) and the caller's deadline."""

    auto_reconnect: bool = True
    max_reconnects: int = 5  # in a row, counting only connections that delivered no task update
    reconnect_delay_ms: int = 1000  # the first delay; doubles per failed reconnect, up to 8 s
    timeout: Optional[float] = None  # seconds for the whole wait; None waits as long as the task runs


class TaskWatch:
    """One wait on one task: what its stream has shown, and what to do when a connection ends."""

    def __init__(
        self, task_id: str, options: StreamOptions, stream_timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.task_id = task_id
        self.options = options
        self.stream_timeout = stream_timeout
        self._clock = clock
        self._deadline = None if options.timeout is None else clock() + options.timeout
        self.result: Optional[dict[str, Any]] = None  # the COMPLETED task, stripped
        self.last: Optional[dict[str, Any]] = None  # the task as last seen
        self.cause: Optional[Exception] = None  # why the last connection ended early
        self._attempt = 0
        self._delivered = False
        self._last_task_line = clock()
        self._stalled = False

    # -- the deadline -------------------------------------------------------------

    def time_left(self) -> Optional[float]:
        return None if self._deadline is None else max(0.0, self._deadline - self._clock())

    @property
    def expired(self) -> bool:
        return self._deadline is not None and self._clock() >= self._deadline

    def read_timeout(self) -> float:
        """The read timeout of the next connection: never longer than the time left."""
        left = self.time_left()
        return self.stream_timeout if left is None else max(0.01, min(self.stream_timeout, left))

    # -- one connection -------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def should_leave(self) -> bool:
        """Stop reading this connection: done, stalled on heartbeats, or out of time."""
        return self.finished or self._stalled or self.expired

    def connecting(self) -> None:
        self._delivered = False
        self._stalled = False
        self._last_task_line = self._clock()
        self.cause = None

    def feed(self, line: Union[str, bytes]) -> Optional[dict[str, Any]]:
        """The update a line carries (stripped), or None; raises TaskError when the task ended without a result."""
        event = parse_line(line)
        if event is None:
            return None
        if event is HEARTBEAT:
            self._stalled = self._clock() - self._last_task_line > HEARTBEAT_IDLE_S
            return None
        self._last_task_line = self._clock()
        self._delivered = True
        return self._see(event)

    def lost(self, cause: Exception) -> None:
        """A connection failed; an answer that will not change by retrying (a 404, a 401) is raised."""
        if not is_transient(cause):
            raise cause
        self.cause = cause

    # -- between connections ---------------------------------------------------------

    def reconcile(self, task: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        """After a connection ended early: the task from a GET, as an update if it has ended, else None."""
        if task is None:
            return None
        if not is_terminal(task):
            self.last = task
            return None
        return self._see(task)

    def reconnect_delay(self) -> float:
        """Seconds to wait before connecting again; raises when out of time or out of attempts."""
        if self.expired:
            raise WaitTimeout(
                f"task {self.task_id} did not finish within {self.options.timeout:.3g} s; "
                f"it is still {self._status_name()}: wait on it again, or cancel it",
                self.last,
            )
        self._attempt = 1 if self._delivered else self._attempt + 1
        if not self.options.auto_reconnect or self._attempt > self.options.max_reconnects:
            why = f" ({self.cause})" if self.cause else " (the server closed it)"
            raise ConnectionFailed(
                f"the stream of task {self.task_id} ended before the task did{why}, "
                f"{self._attempt} time(s) in a row; it is still {self._status_name()}: "
                f"wait on it again with wait_for_completion({self.task_id!r})"
            )
        delay = min(MAX_BACKOFF_S, self.options.reconnect_delay_ms / 1000 * 2 ** (self._attempt - 1))
        left = self.time_left()
        return delay if left is None else min(delay, left)

    # -- internals -------------------------------------------------------------------

    def _see(self, task: dict[str, Any]) -> dict[str, Any]:
        self.last = task
        failure = failure_of(task)
        if failure is not None:
            raise failure
        update = strip_task(task)
        if parse_status(task.get("status")) == TaskStatus.COMPLETED:
            self.result = update
        return update

    def _status_name(self) -> str:
        status = parse_status((self.last or {}).get("status"))
        return status.name if status is not None else "UNKNOWN"
