"""The tasks this ingress dispatched, as the task store last returned them.

Reads and streams of those tasks (all of them, with one ingress replica) are answered
from memory and woken by each change as the dispatcher writes it: no call to the task
store actor, no polling. The store stays the one place a task changes status: an entry
here is only ever a copy of what the store returned after it wrote the change. Other
tasks, and these once forgotten, are read from the store.

With several ingress replicas, a cancel taken by another one shows here when this
replica's dispatcher applies it, within a heartbeat (1 s).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Awaitable, Optional

from .status import TaskStatus
from .writes import StoreUnavailable

# Finished tasks stay a while for the reads that follow a task's end (the official client
# reads and streams right after submitting); then the store answers.
KEEP_FINISHED_S = 60.0
KEEP_FINISHED = 2048


@dataclass
class _Entry:
    task: dict[str, Any]
    owner: str
    version: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class RecentTasks:
    def __init__(self, store: Any, keep_s: float = KEEP_FINISHED_S, keep: int = KEEP_FINISHED) -> None:
        self.store = store
        self._entries: dict[str, _Entry] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()
        self._keep_s = keep_s
        self._keep = keep
        self._closing = False

    def put(self, owner: str, task: Optional[dict[str, Any]]) -> None:
        """Record the task as the store returned it, and wake its watchers."""
        if task is None:
            return
        entry = self._entries.setdefault(task["id"], _Entry(task, owner))
        entry.task = task
        entry.version += 1
        entry.changed.set()
        entry.changed = asyncio.Event()
        if TaskStatus(task["status"]).is_terminal:
            self._finished[task["id"]] = time.monotonic()
            self._forget_old()

    def end_watches(self) -> None:
        """The ingress is closing: every watch answers None, now or at its timeout, so each
        stream ends cleanly before the server stops (a stream cut off the official async
        client does not connect again)."""
        self._closing = True
        for entry in self._entries.values():
            entry.changed.set()

    def forget(self, task_id: str) -> None:
        """A task deleted from the store: reads of it go there (and find nothing)."""
        self._entries.pop(task_id, None)
        self._finished.pop(task_id, None)

    async def get(self, task_id: str, owner: str) -> Optional[dict[str, Any]]:
        """The task, or None when it does not exist or belongs to another key."""
        entry = self._entries.get(task_id)
        if entry is None:
            return await _read(self.store.get(task_id, owner))
        return entry.task if entry.owner == owner else None

    async def watch(self, task_id: str, owner: str, seen: int, timeout: float) -> Optional[tuple[int, dict]]:
        """(version, task) once the task's version passes `seen`, or the current one after `timeout`;
        None for another key's task, or once watches end."""
        if self._closing:
            return None
        entry = self._entries.get(task_id)
        if entry is None:
            watched = await _read(self.store.watch(task_id, owner, seen, timeout))
            return None if self._closing else watched
        if entry.owner != owner:
            return None
        if entry.version <= seen and not TaskStatus(entry.task["status"]).is_terminal:
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(entry.changed.wait(), timeout)
        return None if self._closing else (entry.version, entry.task)

    def _forget_old(self) -> None:
        deadline = time.monotonic() - self._keep_s
        while self._finished:
            task_id, finished = next(iter(self._finished.items()))
            if finished > deadline and len(self._finished) <= self._keep:
                return
            del self._finished[task_id]
            self._entries.pop(task_id, None)


async def _read(call: Awaitable[Any]) -> Any:
    """A read's answer; StoreUnavailable (a 503, not a bare 500) when the store cannot be asked."""
    try:
        return await call
    except Exception as exc:
        raise StoreUnavailable(f"the task store could not be read ({type(exc).__name__}: {exc})") from exc
