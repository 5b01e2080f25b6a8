"""Sessions: a warm app instance held for one client across calls.

`SessionRegistry` is the one owner of session state. It keeps every session in the
task database (SQLite), counts its calls, runs the idle timer (reset by each successful
call and by keepalive, paused while a call runs) and decides when a session ends: by
`DELETE`, by idle expiry, or because its worker was lost. It starts and releases the
workers through `Workers`: on Ray, one named actor per session (`session_worker.py`);
in tests, in-process hosts. On Ray the registry is one named actor, like the task store.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

from .background import spawn
from .code_version import LOADED
from .store import now_iso
from .tracebacks import describe

ACTIVE, ENDED, EXPIRED = "active", "ended", "expired"
DEFAULT_IDLE_TIMEOUT_S = 60
MIN_IDLE_TIMEOUT_S, MAX_IDLE_TIMEOUT_S = 1, 3600
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_owner ON sessions (owner);
"""


class Workers(Protocol):
    """Starts and releases the app instance behind each session."""

    async def start(self, session_id: str, spec: Any) -> str:
        """Start the instance `spec` describes (the app, its files, its resources); returns a worker id."""

    async def release(self, session_id: str) -> None:
        """Cancel what it runs, run the app's `unload`, free its resources. Never raises."""


@dataclass
class Session:
    id: str
    owner: str
    app_id: str
    app_version_id: str
    idle_timeout: int
    created: float
    updated: float
    expires: float
    status: str = ACTIVE
    worker_id: Optional[str] = None
    task_id: Optional[str] = None
    call_count: int = 0
    last_call: Optional[float] = None
    ended: Optional[float] = None
    reason: Optional[str] = None
    busy: int = 0
    """Calls running now (not persisted: a restarted registry has none)."""

    def view(self) -> dict[str, Any]:
        """The AppSession object the official SDK reads."""
        return {
            "id": self.id,
            "created_at": now_iso(self.created),
            "updated_at": now_iso(self.updated),
            "status": self.status,
            "app_id": self.app_id,
            "app_version_id": self.app_version_id,
            "worker_id": self.worker_id,
            "expires_at": now_iso(self.expires) if self.status == ACTIVE else None,
            "ended_at": now_iso(self.ended) if self.ended else None,
            "task_id": self.task_id,
            "call_count": self.call_count,
            "last_call_at": now_iso(self.last_call) if self.last_call else None,
            "idle_timeout": self.idle_timeout,
            "user_id": self.owner,
            "team_id": None,
            "reason": self.reason,
        }


class SessionRegistry:
    def __init__(
        self, database: str, workers: Workers, *, limit: int = 32, reap_every_s: float = 0.25,
        retention_s: float = 7 * 24 * 3600,
    ) -> None:
        if database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # As the task store's: no fsync per commit (~0.35 ms, twice per call); a process crash loses nothing,
        # a power loss at most the last writes, and the session workers with them.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._workers = workers
        self._limit = limit
        self._reap_every_s = reap_every_s
        self._retention_s = retention_s
        self._pruned = 0.0
        self._reaper: Optional[asyncio.Task] = None
        # Live sessions, in memory; a restarted registry finds them again (and their idle timers start over).
        self._active: dict[str, Session] = {}
        for (body,) in self._db.execute("SELECT body FROM sessions WHERE status = ?", (ACTIVE,)):
            session = Session(**json.loads(body))
            session.expires = max(session.expires, time.time() + session.idle_timeout)
            self._active[session.id] = session

    def configure(self, *, limit: int, retention_s: float) -> str:
        """Take a deploy's settings (on Ray the registry outlives deploys, as the task store does);
        returns the code it runs."""
        self._limit, self._retention_s = limit, retention_s
        return LOADED

    async def open(self, owner: str, app: str, version: str, idle_timeout: int, spec: Any) -> Optional[dict[str, Any]]:
        """Start a session and its worker; None at the limit of live sessions; `{"refused": why}` if it cannot start."""
        self._ensure_reaper()
        if len(self._active) >= self._limit:
            return None
        stamp = time.time()
        session = Session(uuid.uuid4().hex, owner, app, version, idle_timeout, stamp, stamp, stamp + idle_timeout)
        session.busy = 1  # no expiry while the worker starts
        self._active[session.id] = session
        try:
            session.worker_id = await self._workers.start(session.id, spec)
        except BaseException as exc:
            del self._active[session.id]
            if not isinstance(exc, Exception):
                raise  # cancelled, as Serve cancels a request's actor calls when its client leaves: no session
            # Ray's errors carry the worker's traceback, with the server's paths: one line reaches the client.
            first_line = describe(exc).splitlines()[0][:200]
            return {"refused": f"the session's worker could not start ({first_line})"}
        # Idle from now on until its first call begins: a caller gone while it opened (the
        # request cancelled, this call running on) would otherwise hold it open forever.
        session.busy = 0
        session.expires = time.time() + idle_timeout
        self._save(session)
        return session.view()

    async def get(self, session_id: str, owner: str) -> Optional[dict[str, Any]]:
        session = self._find(session_id, owner)
        return session.view() if session else None

    async def list(self, owner: str) -> list[dict[str, Any]]:
        """The owner's sessions, oldest first: the live ones and those ended within the retention."""
        self._ensure_reaper()
        rows = self._db.execute("SELECT id, body FROM sessions WHERE owner = ? ORDER BY rowid", (owner,))
        return [(self._active.get(session_id) or Session(**json.loads(body))).view() for session_id, body in rows]

    async def begin_call(self, session_id: str, owner: str, app: str, task_id: str) -> Optional[dict]:
        """Count a call in; the session as it is (a call runs only when it comes back `active` for `app`)."""
        session = self._find(session_id, owner)
        if session is None or session.status != ACTIVE or session.app_id != app:
            return session.view() if session else None
        session.busy += 1
        session.call_count += 1
        session.task_id = task_id
        session.last_call = session.updated = time.time()
        self._save(session)
        return session.view()

    async def end_call(self, session_id: str, succeeded: bool) -> None:
        """A call finished; a successful one restarts the idle timer."""
        session = self._active.get(session_id)
        if session is None:
            return
        session.busy = max(0, session.busy - 1)
        if succeeded:
            session.expires = time.time() + session.idle_timeout
        session.updated = time.time()
        self._save(session)

    async def keepalive(self, session_id: str, owner: str) -> Optional[dict[str, Any]]:
        session = self._find(session_id, owner)
        if session is not None and session.status == ACTIVE:
            session.expires = max(session.expires, time.time() + session.idle_timeout)
            session.updated = time.time()
            self._save(session)
        return session.view() if session else None

    async def end(self, session_id: str, owner: str, reason: str = "ended by its client") -> Optional[dict[str, Any]]:
        """End a session (idempotent): its running call is cancelled, `unload` runs, the worker goes."""
        session = self._find(session_id, owner)
        if session is not None and session.status == ACTIVE:
            await self._finish(session, ENDED, reason)
        return session.view() if session else None

    async def lost(self, session_id: str, reason: str) -> None:
        """The worker died: the session ends, and so do its next calls."""
        session = self._active.get(session_id)
        if session is not None:
            await self._finish(session, ENDED, reason)

    async def end_all(self, reason: str) -> int:
        """End every live session (the server is going away): calls cancelled, `unload` run; how many."""
        live = list(self._active.values())
        await self._finish_all(ENDED, [(session, reason) for session in live])
        return len(live)

    async def reap(self) -> list[str]:
        """Expire the idle sessions (their ids are returned); once a minute, forget those ended
        longer ago than the retention, as the task store forgets old tasks."""
        now = time.time()
        due = [s for s in self._active.values() if s.busy == 0 and s.expires <= now]
        await self._finish_all(EXPIRED, [(session, f"idle for {session.idle_timeout} s") for session in due])
        if now - self._pruned >= 60:
            self._pruned = now
            self._db.execute("DELETE FROM sessions WHERE status != ? AND json_extract(body, '$.ended') < ?",
                             (ACTIVE, now - self._retention_s))
        return [session.id for session in due]

    async def _finish(self, session: Session, status: str, reason: str) -> None:
        await self._finish_all(status, [(session, reason)])

    async def _finish_all(self, status: str, ending: list[tuple[Session, str]]) -> None:
        # All ended before any release is awaited: a release takes up to 30 s, and a session
        # that took a call, or was ended by its client, meanwhile is no longer one to end.
        for session, reason in ending:
            self._end(session, status, reason)
        # Apart from the caller: one that leaves (its call cancelled) must not leave a detached worker behind.
        await asyncio.shield(spawn(self._release([session.id for session, _ in ending])))

    async def _release(self, session_ids: list[str]) -> None:
        await asyncio.gather(*(self._workers.release(session_id) for session_id in session_ids))

    def _end(self, session: Session, status: str, reason: str) -> None:
        self._active.pop(session.id, None)
        session.status, session.reason = status, reason
        session.ended = session.updated = time.time()
        self._save(session)

    def _find(self, session_id: str, owner: str) -> Optional[Session]:
        self._ensure_reaper()
        session = self._active.get(session_id)
        if session is None:
            row = self._db.execute("SELECT body FROM sessions WHERE id = ?", (session_id,)).fetchone()
            session = Session(**json.loads(row[0])) if row else None
        return session if session is not None and session.owner == owner else None

    def _save(self, session: Session) -> None:
        body = json.dumps({**asdict(session), "busy": 0})
        self._db.execute(
            "INSERT INTO sessions (id, owner, status, body) VALUES (?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET status = excluded.status, body = excluded.body",
            (session.id, session.owner, session.status, body),
        )

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = spawn(self._reap_forever())  # its releases are no caller's to cancel

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reap_every_s)
            await self.reap()
