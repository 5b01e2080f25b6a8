"""The ingress side of sessions: admit a call into a session, route it to the session's
worker, and the `/sessions` endpoints the official SDK uses.

Errors use the SDK's session codes: 404 `SESSION_NOT_FOUND` (unknown, or another key's),
410 `SESSION_EXPIRED` / `SESSION_ENDED`, 409 `APP_MISMATCH`, 429 past the limit of live
sessions, or (Saturated) past the app's `max_queued_tasks`, which session calls count
toward as plain ones do. A call never silently runs on a fresh instance.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

from fastapi import APIRouter, Depends
from starlette.responses import JSONResponse

from .background import spawn
from .catalog import AppInfo
from .dispatch import Backend, Dispatcher
from .envelope import envelope
from .events import Completed, Failed, TaskEvent
from .host import Call
from .problems import ApiProblem
from .sessions import ACTIVE, DEFAULT_IDLE_TIMEOUT_S, EXPIRED, MAX_IDLE_TIMEOUT_S, MIN_IDLE_TIMEOUT_S
from .tracebacks import describe


class WorkerLost(Exception):
    """The session's worker is gone (its process died or its node was lost)."""


# Runs one call on a session's worker: (session id, call) -> the app host's events.
WorkerCall = Callable[[str, Call], AsyncIterator[TaskEvent]]
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Admitted:
    session_id: str
    idle_timeout: int
    backend: Backend


# Sessions whose idle timeout an ingress remembers (it never changes), for admitting their calls concurrently.
_KNOWN_SESSIONS = 4096


class Sessions:
    def __init__(self, registry: Any, call_worker: WorkerCall, worker_spec: Callable[[AppInfo], Awaitable[Any]]) -> None:
        self.registry = registry
        self._call_worker = call_worker
        self._worker_spec = worker_spec
        # session id -> (owner, app, idle timeout), of the sessions this ingress admitted a call into.
        self._known: OrderedDict[str, tuple[str, str, int]] = OrderedDict()
        self._releasing: set[asyncio.Task] = set()

    async def submit(self, dispatcher: Dispatcher, owner: str, app: AppInfo, session: Optional[str],
                     timeout: Optional[int], call: Call, setup_key: str, fields: dict[str, Any], task_id: str,
                     exclusive: bool = False) -> dict:
        """Admit a call into its session and start it on the session's worker; returns the task as created.

        A call into a session this ingress knows asks the registry while its task is being
        created (the task's fields are known already) and starts only once admitted. A
        refused one is answered with the refusal, as always, and its task, which nobody
        was told of, ends FAILED with the same reason. Other calls, and `exclusive` ones
        (see `Dispatcher.submit`), are admitted first. Past the app's `max_queued_tasks`,
        Saturated, before any session is opened or joined.
        """
        dispatcher.ensure_room(app.name)
        known = self._known.get(session or "") if timeout is None and not exclusive else None
        if known is None or known[:2] != (owner, app.name):
            admitted = await self.admit(owner, app, session, timeout, task_id)
            fields = {**fields, "session_id": admitted.session_id, "session_timeout": admitted.idle_timeout}
            # Once entered, the backend ends the call in the registry, whatever happens to the task's record.
            return await dispatcher.submit(owner, admitted.backend, call, setup_key, fields, task_id, exclusive,
                                           abandon=lambda: self._abandon(admitted.session_id, owner, session == "new"))
        admission = spawn(self.admit(owner, app, session, None, task_id))
        fields = {**fields, "session_id": session, "session_timeout": known[2]}
        # Nothing awaited since `ensure_room`, so this submit is not refused for room.
        task = await dispatcher.submit(owner, self._once_admitted(admission), call, setup_key, fields, task_id)
        await asyncio.shield(admission)  # a refusal (ApiProblem) is the answer
        return task

    async def close(self, timeout_s: float = 5.0) -> None:
        """Wait (a while) for the calls admitted for tasks that never ran to be ended in the registry:
        left busy, a session would never idle out."""
        if self._releasing:
            await asyncio.wait(self._releasing, timeout=timeout_s)

    async def admit(self, owner: str, app: AppInfo, session: Optional[str], timeout: Optional[int], task_id: str) -> Admitted:
        """Open (`"new"`) or join a session for one call; ApiProblem when the call may not run."""
        check_session_request(session, timeout)
        new = session == "new"
        if new:
            timeout = DEFAULT_IDLE_TIMEOUT_S if timeout is None else timeout
            opened = await self.registry.open(owner, app.name, app.version, timeout, await self._worker_spec(app))
            if opened is None:
                raise ApiProblem(429, "rate_limited", "this server holds its limit of live sessions; end one "
                                 "(DELETE /sessions/{id}) or try again later", headers={"retry-after": "5"})
            if "refused" in opened:
                raise ApiProblem(503, "unavailable", opened["refused"], headers={"retry-after": "5"})
            session = opened["id"]
        # Apart from the request: its answer lost to a client that left (Serve cancels the
        # request's calls) would leave the call counted, the session busy and never idle.
        joining = spawn(self._begin_call(session, owner, app.name, task_id))
        try:
            view = await asyncio.shield(joining)
        except BaseException:  # cancelled, or the registry unreachable: nothing left counted or opened for it
            self._track(self._undo_join(joining, session, owner, app.name, opened=new))
            raise
        try:
            _check_open(view, session, app)
        except ApiProblem:
            self._known.pop(session, None)  # its next calls are refused before a task is created
            raise
        self._known[session] = (owner, app.name, view["idle_timeout"])
        self._known.move_to_end(session)
        if len(self._known) > _KNOWN_SESSIONS:
            self._known.popitem(last=False)
        return Admitted(session, view["idle_timeout"], self._backend(session))

    async def _begin_call(self, *args: Any) -> Optional[dict]:
        # The actor call is made here, inside the spawned task: made as `spawn`'s argument,
        # it would be sent from the request's context, and be cancelled with it.
        return await self.registry.begin_call(*args)

    async def _undo_join(self, joining: asyncio.Future, session_id: str, owner: str, app: str, opened: bool) -> None:
        """For a caller that left while joining: end its call if it was counted in, and a session opened for it."""
        try:
            view = await joining
        except Exception:
            view = None
        if view is not None and view["status"] == ACTIVE and view["app_id"] == app:
            await self.registry.end_call(session_id, False)
        if opened:
            await self.registry.end(session_id, owner, "the call that opened it did not run")

    def _track(self, undoing: Any) -> None:
        """Run `undoing` apart from the caller; `close` waits for it."""
        task = spawn(undoing)
        self._releasing.add(task)
        task.add_done_callback(_tracked_done)
        task.add_done_callback(self._releasing.discard)

    async def _abandon(self, session_id: str, owner: str, opened: bool) -> None:
        """Undo an admission whose call will not run: its call ends, and a session opened for it alone ends too."""
        await self.registry.end_call(session_id, False)
        if opened:
            await self.registry.end(session_id, owner, "the call that opened it did not run")

    def _once_admitted(self, admission: asyncio.Future) -> Backend:
        """The session's backend, once `admission` comes back; a refused call fails with the refusal's reason."""

        async def run(call: Call, setup_key: str) -> AsyncIterator[TaskEvent]:
            try:
                admitted = await asyncio.shield(admission)
            except ApiProblem as refused:
                yield Failed(refused.detail)
                return
            except asyncio.CancelledError:
                self._end_if_admitted(admission)  # cancelled before it reached the worker
                raise
            async for event in admitted.backend(call, setup_key):  # ends the call in the registry itself
                yield event

        return run

    def _end_if_admitted(self, admission: asyncio.Future) -> None:
        """End the call in the registry once `admission` succeeds: a call that never ran holds no session open."""

        async def end_once_admitted() -> None:
            try:
                admitted = await asyncio.shield(admission)
            except (Exception, asyncio.CancelledError):
                return  # refused, or never admitted: nothing to end
            await self.registry.end_call(admitted.session_id, False)

        self._track(end_once_admitted())  # from now, not from the admission's answer: `close` waits for both

    def _backend(self, session_id: str) -> Backend:
        registry, call_worker = self.registry, self._call_worker

        async def run(call: Call, setup_key: str) -> AsyncIterator[TaskEvent]:
            succeeded = False
            try:
                async for event in call_worker(session_id, call):
                    succeeded = isinstance(event, Completed)
                    yield event
            except WorkerLost as exc:
                reason = f"the session's worker was lost ({exc}); start a new session"
                await registry.lost(session_id, reason)
                yield Failed(reason)
            finally:
                await registry.end_call(session_id, succeeded)

        return run

    def router(self, owner: Callable[..., Awaitable[str]]) -> APIRouter:
        router = APIRouter(tags=["sessions"])
        registry = self.registry

        @router.get("/sessions", summary="Your sessions")
        async def list_sessions(caller: str = Depends(owner)) -> JSONResponse:
            return envelope(await registry.list(caller))

        @router.get("/sessions/{session_id}", summary="One of your sessions")
        async def get_session(session_id: str, caller: str = Depends(owner)) -> JSONResponse:
            return envelope(_found(await registry.get(session_id, caller), session_id))

        @router.post("/sessions/{session_id}/keepalive", summary="Restart a session's idle timer")
        async def keepalive(session_id: str, caller: str = Depends(owner)) -> JSONResponse:
            view = _found(await registry.keepalive(session_id, caller), session_id)
            if view["status"] != ACTIVE:
                raise _gone(view)
            return envelope(view)

        @router.delete("/sessions/{session_id}", summary="End a session (idempotent): cancels its call, unloads the app")
        async def end(session_id: str, caller: str = Depends(owner)) -> JSONResponse:
            return envelope(_found(await registry.end(session_id, caller), session_id))

        return router


def _tracked_done(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.warning("undoing a session call that did not run failed: %s", describe(task.exception()))


def check_session_request(session: Optional[str], timeout: Optional[int]) -> None:
    """400 for an empty `session`, or a `session_timeout` without `session: "new"` or outside its bounds."""
    if session == "":
        raise ApiProblem(400, "invalid_request", 'session must be "new" or a session id; leave it out to run outside one')
    if timeout is None:
        return
    if session != "new":
        raise ApiProblem(400, "invalid_request", "session_timeout is only valid with session: \"new\"")
    if not MIN_IDLE_TIMEOUT_S <= timeout <= MAX_IDLE_TIMEOUT_S:
        raise ApiProblem(400, "invalid_request",
                         f"session_timeout must be {MIN_IDLE_TIMEOUT_S}-{MAX_IDLE_TIMEOUT_S} seconds, got {timeout}")


def _found(view: Optional[dict], session_id: str) -> dict:
    if view is None:
        raise ApiProblem(404, "SESSION_NOT_FOUND", f"no session {session_id!r}")
    return view


def _gone(view: dict) -> ApiProblem:
    code = "SESSION_EXPIRED" if view["status"] == EXPIRED else "SESSION_ENDED"
    return ApiProblem(410, code, f"session {view['id']} has {view['status']} ({view['reason']}); start a new one with session: \"new\"")


def _check_open(view: Optional[dict], session_id: str, app: AppInfo) -> None:
    view = _found(view, session_id)
    if view["status"] != ACTIVE:
        raise _gone(view)
    if view["app_id"] != app.name:
        raise ApiProblem(409, "APP_MISMATCH", f"session {session_id} belongs to app {view['app_id']!r}, not {app.name!r}")
