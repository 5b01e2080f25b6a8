"""The task store: the one place where a task changes status.

A `TaskStore` keeps every task in an embedded SQLite database (so completed tasks
survive restarts of the ingress, of the store and of `serve run`) and the live ones in
memory, applies the app host's events to them with the status moving only forward,
and wakes whoever waits on a task. Memory never runs ahead of the disk: a write that
fails changes nothing. On Ray it runs as one named actor that every ingress replica
shares (see `store_actor`); tests use it in-process.

Dispatchers (ingress replicas) renew a lease with `heartbeat`; a task whose
dispatcher stops renewing is ended FAILED, so nothing stays running forever.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from .code_version import LOADED
from .events import TERMINAL_EVENTS, Cancelled, Completed, Failed, Log, Output, TaskEvent
from .json_codec import dumps, loads
from .status import TaskStatus

_log = logging.getLogger(__name__)

LEASE_S = 20.0
# Every write rewrites the task's document: a task printing a line at a time for an hour
# would make each write, and the store serving every task, slower and slower.
MAX_LOG_LINES = 1000
_WRITES = ("create", "apply", "cancel", "withdraw", "delete")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    dispatcher TEXT,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks (status) WHERE status < 10;
CREATE INDEX IF NOT EXISTS tasks_updated ON tasks (updated);
"""


def now_iso(ts: Optional[float] = None) -> str:
    moment = datetime.fromtimestamp(ts if ts is not None else time.time(), tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Live:
    """A task held in memory while someone may still change or wait on it."""

    task: dict[str, Any]
    owner: str
    dispatcher: Optional[str]
    attempt: Optional[str] = None  # the create that made it (see `create`)
    version: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class TaskExists(Exception):
    """A create named a task that is recorded already (an Idempotency-Key sent again)."""


class TaskStore:
    def __init__(self, database: str, *, retention_s: float = 7 * 24 * 3600, lease_s: float = LEASE_S) -> None:
        if database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        if "attempt" not in {row[1] for row in self._db.execute("PRAGMA table_info(tasks)")}:
            self._db.execute("ALTER TABLE tasks ADD COLUMN attempt TEXT")  # a database from before it
        self._live: dict[str, _Live] = {}
        self._leases: dict[str, float] = {}
        self._cancels: dict[str, set[str]] = {}
        # The open transaction's changes, in order: (live, its task before; None when created).
        self._changes: list[tuple[_Live, Optional[dict[str, Any]]]] = []
        self._retention_s = retention_s
        self._lease_s = lease_s
        self._started = time.monotonic()
        self._reaper: Optional[asyncio.Task] = None
        # Tasks still open from before a restart stay live: their dispatcher may still be
        # running them and will renew its lease; if not, the reaper ends them.
        for owner, dispatcher, attempt, body in self._db.execute(
                "SELECT owner, dispatcher, attempt, body FROM tasks WHERE status < 10"):
            task = loads(body)
            self._live[task["id"]] = _Live(task, owner, dispatcher, attempt)

    def configure(self, *, retention_s: float, lease_s: float) -> str:
        """Take a deploy's settings; returns the code it runs (`code_version.LOADED`). On Ray the
        store outlives deploys (found by name, not made again), so a changed config reaches it only this way."""
        self._retention_s, self._lease_s = retention_s, lease_s
        return LOADED

    # -- creating and reading -------------------------------------------------

    async def create(
        self, owner: str, fields: dict[str, Any], dispatcher: Optional[str] = None, task_id: Optional[str] = None,
        attempt: Optional[str] = None,
    ) -> dict[str, Any]:
        """Record a new task, QUEUED, and return it.

        An id names one task: TaskExists when `task_id` is recorded already, unless by this
        same `attempt` (the create sent again: Ray repeats an actor call a restart cut off).
        """
        with self._transaction():
            return self._create(owner, fields, dispatcher, task_id, attempt)

    async def get(self, task_id: str, owner: str) -> Optional[dict[str, Any]]:
        """The task, or None when it does not exist or belongs to another key."""
        return self._get(task_id, owner)

    async def watch(self, task_id: str, owner: str, seen: int, timeout: float) -> Optional[tuple[int, dict]]:
        """(version, task) once the task's version passes `seen`, or the current one after `timeout`."""
        live = self._live.get(task_id)
        if live is None or live.owner != owner:
            task = self._get(task_id, owner)
            return None if task is None else (seen + 1, task)
        if live.version <= seen and not TaskStatus(live.task["status"]).is_terminal:
            try:
                await asyncio.wait_for(live.changed.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        return live.version, live.task

    # -- changing ---------------------------------------------------------------
    #
    # A change is made on a copy of the task, which replaces the live one once SQLite has
    # taken it; reads, watches and heartbeats see it once its transaction commits. A write
    # that fails leaves memory as the disk has it, so a retry or a fallback still applies.

    async def write(self, ops: list[tuple[str, tuple]]) -> list[Any]:
        """Run `create`, `apply`, `cancel`, `withdraw` and `delete` calls in order, in one transaction; each
        gets its result, or the exception it raised, in its place. Raises, having changed
        nothing, when the transaction itself fails (a full disk, an I/O error)."""
        with self._transaction():
            return [self._write_one(op, args) for op, args in ops]

    async def apply(self, task_id: str, events: Iterable[TaskEvent]) -> Optional[dict[str, Any]]:
        """Apply the host's events in order; a terminal task never changes again."""
        with self._transaction():
            return self._apply(task_id, events)

    async def cancel(self, task_id: str, owner: str) -> Optional[dict[str, Any]]:
        """Ask to cancel: an open task goes CANCELLING, then CANCELLED once its dispatcher has stopped
        the call (still queued in Serve's router, or running). One already UPLOADING its outputs is
        past stopping and finishes; it, and a finished one, are returned as they are."""
        with self._transaction():
            return self._cancel(task_id, owner)

    async def withdraw(self, task_id: str, attempt: str, reason: str) -> None:
        """End FAILED the task `attempt` created, if it did: its dispatcher lost the create's answer and
        refused the task, whose events it never records; left QUEUED, it would wait forever."""
        with self._transaction():
            self._withdraw(task_id, attempt, reason)

    async def heartbeat(self, dispatcher: str) -> list[str]:
        """Renew a dispatcher's lease; returns the ids of its tasks to cancel."""
        if self._reaper is None:
            self._reaper = asyncio.ensure_future(self._reap_forever())
        self._leases[dispatcher] = time.monotonic()
        return sorted(self._cancels.pop(dispatcher, ()))

    async def reap(self) -> int:
        """End FAILED the open tasks whose dispatcher's lease ran out; prune old tasks."""
        now = time.monotonic()
        if now - self._started < self._lease_s:
            return 0  # dispatchers alive before a store restart get one lease to check in
        reaped = 0
        with self._transaction():
            for live in list(self._live.values()):
                lease = self._leases.get(live.dispatcher or "")
                if lease is None or now - lease > self._lease_s:
                    reason = "the server dispatching this task stopped before it finished; submit it again"
                    reaped += self._change(live, [Failed(reason)])
            self._db.execute("DELETE FROM tasks WHERE status >= 10 AND updated < ?", (time.time() - self._retention_s,))
        return reaped

    async def _reap_forever(self, every_s: float = 5.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.reap()
            except sqlite3.Error as exc:  # a full disk, an I/O error: it changed nothing, the next round tries again
                _log.warning("the task store could not reap or prune tasks (%s: %s); check the disk of its database",
                             type(exc).__name__, exc)

    # -- internals --------------------------------------------------------------

    def _write_one(self, op: str, args: tuple) -> Any:
        try:
            if op not in _WRITES:
                raise ValueError(f"not a task store write: {op!r}")
            return getattr(self, f"_{op}")(*args)
        except Exception as exc:
            if not self._db.in_transaction:
                raise  # SQLite ended the whole transaction, so the other writes are undone too
            return exc

    def _create(
        self, owner: str, fields: dict[str, Any], dispatcher: Optional[str] = None, task_id: Optional[str] = None,
        attempt: Optional[str] = None,
    ) -> dict[str, Any]:
        attempt = attempt if isinstance(attempt, str) else None  # not a flag an older dispatcher sent there
        recorded = self._recorded(task_id) if task_id is not None else None
        if recorded is not None:
            task, made_by = recorded
            if attempt is not None and made_by == attempt:
                return task
            raise TaskExists(f"task {task_id} is recorded already")
        stamp = time.time()
        task = {
            "id": task_id or uuid.uuid4().hex,
            "created_at": now_iso(stamp),
            "updated_at": now_iso(stamp),
            "status": int(TaskStatus.QUEUED),
            "output": None,
            "error": None,
            "logs": [],
            "session_id": None,
            **fields,
            "events": [_status_event(TaskStatus.RECEIVED, stamp), _status_event(TaskStatus.QUEUED, stamp)],
        }
        self._save(task, owner, dispatcher, attempt)
        live = self._live[task["id"]] = _Live(task, owner, dispatcher, attempt)
        self._changes.append((live, None))
        return task

    def _recorded(self, task_id: str) -> Optional[tuple[dict[str, Any], Optional[str]]]:
        """(task, the attempt that created it) of any owner, or None."""
        live = self._live.get(task_id)
        if live is not None:
            return live.task, live.attempt
        row = self._db.execute("SELECT body, attempt FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return (loads(row[0]), row[1]) if row else None

    def _get(self, task_id: str, owner: str) -> Optional[dict[str, Any]]:
        live = self._live.get(task_id)
        if live is not None:
            return live.task if live.owner == owner else None
        row = self._db.execute("SELECT body FROM tasks WHERE id = ? AND owner = ?", (task_id, owner)).fetchone()
        return loads(row[0]) if row else None

    def _apply(self, task_id: str, events: Iterable[TaskEvent]) -> Optional[dict[str, Any]]:
        live = self._live.get(task_id)
        if live is None:
            # Ended already (reaped, say): its dispatcher gets the end it must show, not a stale copy.
            row = self._db.execute("SELECT body FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return loads(row[0]) if row else None
        self._change(live, events)
        return live.task

    def _withdraw(self, task_id: str, attempt: str, reason: str) -> None:
        live = self._live.get(task_id)
        if live is not None and isinstance(attempt, str) and live.attempt == attempt:
            self._change(live, [Failed(reason)])

    def _delete(self, task_id: str, owner: str) -> bool:
        """Forget a finished task of `owner`; whether it was (an unfinished one is not)."""
        if task_id in self._live:
            return False
        return self._db.execute("DELETE FROM tasks WHERE id = ? AND owner = ? AND status >= ?",
                                (task_id, owner, int(TaskStatus.COMPLETED))).rowcount == 1

    def _cancel(self, task_id: str, owner: str) -> Optional[dict[str, Any]]:
        live = self._live.get(task_id)
        if live is None or live.owner != owner or live.task["status"] >= TaskStatus.CANCELLING:
            return self._get(task_id, owner)
        task = _draft(live.task)
        task["status"] = int(TaskStatus.CANCELLING)
        task["events"].append(_status_event(TaskStatus.CANCELLING))
        self._commit(live, task)
        return task

    def _change(self, live: _Live, events: Iterable[TaskEvent]) -> bool:
        """Apply `events` to the live task; whether they changed it."""
        task = _draft(live.task)
        changed = False
        for event in events:
            changed |= _apply_one(task, event)
        if changed:
            self._commit(live, task)
        return changed

    def _commit(self, live: _Live, task: dict[str, Any]) -> None:
        """Make `task`, a changed draft of the live one, the live one once SQLite has taken it."""
        task["updated_at"] = now_iso()
        self._save(task, live.owner, live.dispatcher, live.attempt)
        self._changes.append((live, live.task))
        live.task = task

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE: the write lock first. A transaction that reads, then writes (a create asks
        # whether its id exists), fails at once when another process sharing the database (the
        # session registry) committed in between; waiting for the lock is what the busy timeout does.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._undo()
            raise
        self._publish()

    def _undo(self) -> None:
        """Memory back to what the disk has, after a transaction that did not commit."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        changes, self._changes = self._changes, []
        for live, before in reversed(changes):
            if before is None:
                self._live.pop(live.task["id"], None)
            else:
                live.task = before

    def _publish(self) -> None:
        """Show a committed transaction's changes: wake watchers, pass cancels on to heartbeats."""
        changes, self._changes = self._changes, []
        for live, before in changes:
            if before is None:
                continue  # created: nobody watches it yet
            status = TaskStatus(live.task["status"])
            if status == TaskStatus.CANCELLING and before["status"] != status and live.dispatcher is not None:
                self._cancels.setdefault(live.dispatcher, set()).add(live.task["id"])
            live.version += 1
            live.changed.set()
            live.changed = asyncio.Event()
            if status.is_terminal:
                # Waiters hold their own reference; later reads come from disk.
                self._live.pop(live.task["id"], None)

    def _save(self, task: dict[str, Any], owner: str, dispatcher: Optional[str], attempt: Optional[str]) -> None:
        stamp = time.time()
        self._db.execute(
            "INSERT INTO tasks (id, owner, status, created, updated, dispatcher, attempt, body) VALUES (?,?,?,?,?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET status = excluded.status, updated = excluded.updated, body = excluded.body",
            (task["id"], owner, task["status"], stamp, stamp, dispatcher, attempt, dumps(task).decode()),
        )


def _draft(task: dict[str, Any]) -> dict[str, Any]:
    """A copy to change: the lists a change appends to are copied, their entries (never changed) shared."""
    return {**task, "logs": list(task["logs"]), "events": list(task["events"])}


def _apply_one(task: dict[str, Any], event: TaskEvent) -> bool:
    current = TaskStatus(task["status"])
    if current.is_terminal:
        return False
    if isinstance(event, Log):
        return _append_log(task, event.text, event.at, event.seq)
    if isinstance(event, Output):
        task["output"] = event.output
        return True
    if current == TaskStatus.CANCELLING and not isinstance(event, TERMINAL_EVENTS):
        return False  # an acknowledged cancel ends CANCELLED: an Uploading that raced it does not move it on
    if current == TaskStatus.CANCELLING and isinstance(event, (Completed, Failed)):
        event = Cancelled(at=event.at)  # a cancel asked for wins over a result that raced it
    if isinstance(event, Completed):
        task["output"] = event.output
    elif isinstance(event, Failed):
        task["error"] = event.error
        for line in event.traceback.splitlines():  # where the app's code raised, for its author
            _append_log(task, line, event.at)
    elif isinstance(event, Cancelled):
        task["error"] = task["error"] or event.reason
    if event.status is None or event.status <= current:
        return False
    task["status"] = int(event.status)
    task["events"].append(_status_event(event.status, event.at))
    return True


def _append_log(task: dict[str, Any], text: str, stamp: float, seq: Optional[int] = None) -> bool:
    logs = task["logs"]
    index = _log_index(logs[-1]) + 1 if logs else 0
    if seq is not None:
        if seq < index:
            return False  # taken already
        index = seq
    logs.append(_log_entry(task["id"], index, text, stamp))
    if len(logs) > MAX_LOG_LINES:
        del logs[0]  # the draft's own list
    return True


def _status_event(status: TaskStatus, stamp: Optional[float] = None) -> dict[str, Any]:
    return {"status": int(status), "event_time": now_iso(stamp)}


def _log_index(entry: dict[str, Any]) -> int:
    return int(entry["id"].rsplit("-", 1)[1])


def _log_entry(task_id: str, index: int, text: str, stamp: float) -> dict[str, Any]:
    return {"id": f"{task_id}-{index}", "task_id": task_id, "created_at": now_iso(stamp), "log_type": 4, "content": text}
