"""Start tasks on app replicas and carry their events to the task store.

A `Dispatcher` lives in each ingress replica. It creates the task in the store, calls
the app's backend (a Serve deployment handle, streaming the app host's events) in a
background asyncio task that no HTTP request owns, and applies the events to the
store: one write at a time per task, the events that arrive meanwhile together in the
next, and the writes of all its tasks grouped into one store call (StoreWrites); a
write the store could not take is sent again until it is, so a task's end is never
lost to a passing outage. What the store returns for the tasks it runs goes to `tasks`
(RecentTasks), which answers reads and streams of them from memory. Cancels reach it
directly, or through the store when another ingress replica took the cancel; its
heartbeat renews the lease that keeps its tasks from being reaped.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from dataclasses import replace
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

from .background import spawn
from .events import Cancelled, Failed, TaskEvent
from .host import Call
from .recent import RecentTasks
from .status import TaskStatus
from .store import TaskExists
from .tracebacks import describe
from .writes import StoreUnavailable, StoreWrites

_log = logging.getLogger(__name__)

# Runs one call of an app: (call, setup key) -> the app host's events.
Backend = Callable[[Call, str], AsyncIterator[TaskEvent]]
# Undoes what a caller prepared for an exclusive call that does not run (see `submit`).
Abandon = Callable[[], Awaitable[None]]
# Unfinished tasks of one app (its sessions' included) one dispatcher holds at most: each
# waits in memory here and in Serve's router until a replica takes it, so a flood is
# refused rather than held.
MAX_QUEUED_TASKS = 10_000
# How long `close` waits for the undoing of calls that did not run (a registry's answer).
CLOSE_CLEANUP_S = 5.0
# A write the store could not take is sent again after these waits, doubling.
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0


class Saturated(Exception):
    """The backend holds its limit of unfinished tasks; no task was created."""


def serve_backend(handle: Any) -> Backend:
    """A backend over a Serve deployment handle (AppReplica), routed by setup key (model multiplexing)."""

    async def run(call: Call, setup_key: str) -> AsyncIterator[TaskEvent]:
        stream = handle.options(stream=True, multiplexed_model_id=setup_key).run.remote(call)
        try:
            async for events in stream:
                for event in events:
                    yield event
        finally:
            stream.cancel()  # a no-op once finished; stops the replica's work when we stop early

    return run


def _withdrawn(exclusive: bool) -> str:
    """Why a task whose record's answer was lost ends FAILED: an exclusive call never started."""
    if exclusive:
        return ("the server could not confirm this task was recorded, so it did not run; "
                "submit it again with a new Idempotency-Key")
    return ("the server could not confirm this task was recorded, so its call was stopped "
            "and any result dropped; submit it again")


def _failed(future: asyncio.Future) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


async def _recorded(created: asyncio.Future) -> bool:
    """Whether the record an exclusive call waits for was written; `submit` raises why not."""
    try:
        await asyncio.shield(created)
    except Exception:
        return False
    return True


class Dispatcher:
    def __init__(
        self, store: Any, backends: dict[str, Backend], heartbeat_s: float = 1.0,
        max_queued_tasks: int = MAX_QUEUED_TASKS,
    ) -> None:
        self.id = f"dispatcher-{uuid.uuid4().hex[:12]}"
        self.store = store
        self.tasks = RecentTasks(store)
        self._writes = StoreWrites(store)
        self._backends = backends
        self._running: dict[str, asyncio.Task] = {}
        self._created: dict[str, asyncio.Future] = {}  # each running task's record, as its create returns it
        self._background: set[asyncio.Future] = set()  # abandons and withdrawals under way
        self._unfinished: Counter[Optional[str]] = Counter()  # by app
        self._max_unfinished = max_queued_tasks
        self._heartbeat_s = heartbeat_s
        self._heartbeat: Optional[asyncio.Task] = None
        self._closing = False

    def backend(self, app: str) -> Backend:
        """The app's deployment (a session's worker is another backend)."""
        return self._backends[app]

    async def submit(
        self, owner: str, backend: Backend, call: Call, setup_key: str, fields: dict[str, Any],
        task_id: Optional[str] = None, exclusive: bool = False, abandon: Optional[Abandon] = None,
    ) -> dict:
        """Create the task (QUEUED) and start it on `backend`; returns the task as created.

        The call starts while the task's record is written, off the task's path; its events
        wait for the record. A record that cannot be written cancels the call and raises;
        if the store took it after all (its answer lost), it is withdrawn: ended FAILED.
        Either way the backend is entered (the loop runs its tasks in the order they were
        made: the call's before the one that would see the record fail), so a backend's
        own cleanup, such as ending a session's call, always runs and callers do none.
        Raises Saturated, creating nothing, when the app (`fields["app_id"]`) holds
        `max_queued_tasks` unfinished tasks, whichever backends run them.

        TaskExists is raised when `task_id` is recorded already. An `exclusive` submission (an
        Idempotency-Key's) runs only if it creates the record: its backend is entered once the
        record is written, and TaskExists is raised, nothing run, also when `task_id` is being
        created here.

        `abandon` undoes what the caller prepared for the call (a session's admitted call)
        when the backend will not be entered: the submission refused, or not created.
        """
        app = fields.get("app_id")
        task_id = task_id or uuid.uuid4().hex
        try:
            self.ensure_room(app)
            if exclusive:
                await self._not_created_here(task_id)
        except BaseException:
            self._in_background(abandon)
            raise
        self._ensure_heartbeat()
        call = replace(call, metadata={**call.metadata, "task_id": task_id, "session_id": fields.get("session_id")})
        attempt = uuid.uuid4().hex
        created = self._created[task_id] = spawn(self._create(owner, fields, task_id, attempt))
        drive = self._running[task_id] = spawn(
            self._drive(owner, task_id, backend, call, setup_key, created, exclusive, abandon))
        self._unfinished[app] += 1
        # A callback, not the drive's `finally`: it runs also for a drive cancelled before it started.
        drive.add_done_callback(lambda _: self._ended(task_id, app, drive))

        def cancel_unless_recorded(done: asyncio.Future) -> None:  # also when nobody awaits `submit` any more
            if _failed(done):
                drive.cancel()
            if not done.cancelled() and isinstance(done.exception(), StoreUnavailable):
                withdraw = lambda: self._writes.withdraw(task_id, attempt, _withdrawn(exclusive))  # noqa: E731
                self._in_background(lambda: self._until_taken(withdraw, task_id))

        created.add_done_callback(cancel_unless_recorded)
        return await asyncio.shield(created)

    async def ensure_new(self, task_id: str, owner: str) -> None:
        """Raise TaskExists when `task_id` is recorded or being created here: an exclusive call
        into a session asks before it is admitted, which would open or join the session again."""
        await self._not_created_here(task_id)
        if await self.tasks.get(task_id, owner) is not None:
            raise TaskExists(f"task {task_id} is recorded already")

    async def _not_created_here(self, task_id: str) -> None:
        earlier = self._created.get(task_id)
        if earlier is not None and not _failed(earlier):
            await asyncio.shield(earlier)  # what it raises is this request's answer too
            raise TaskExists(f"task {task_id} is recorded already")

    def _in_background(self, work: Optional[Callable[[], Awaitable[Any]]]) -> None:
        if work is None:
            return
        running = spawn(work())
        self._background.add(running)

        def done(future: asyncio.Future) -> None:
            self._background.discard(future)
            if not future.cancelled() and future.exception() is not None:
                _log.warning("cleaning up after a task that did not run failed: %s", describe(future.exception()))

        running.add_done_callback(done)

    def ensure_room(self, app: Optional[str]) -> None:
        """Raise Saturated when this dispatcher holds `max_queued_tasks` unfinished tasks of `app`."""
        if self._unfinished[app] >= self._max_unfinished:
            raise Saturated(f"this server holds {self._max_unfinished} unfinished tasks of this app, its limit "
                            "(max_queued_tasks); retry in a moment")

    async def _create(self, owner: str, fields: dict[str, Any], task_id: str, attempt: str) -> dict:
        task = await self._writes.create(owner, fields, self.id, task_id, attempt)
        self.tasks.put(owner, task)
        return task

    async def delete(self, task_id: str, owner: str) -> bool:
        """Forget a finished task (the store refuses an unfinished one); whether it was."""
        deleted = await self._writes.delete(task_id, owner)
        if deleted:
            self.tasks.forget(task_id)
        return deleted

    async def cancel(self, task_id: str, owner: str) -> Optional[dict]:
        """Ask the store to cancel; the call stops here once the store has the task CANCELLING."""
        task = await self._writes.cancel(task_id, owner)
        if task is None:
            return None
        # Another replica's open task: only its writes would follow this copy, so reads here go to the store.
        if task_id in self._running or TaskStatus(task["status"]).is_terminal:
            self.tasks.put(owner, task)
        if task["status"] == TaskStatus.CANCELLING:
            self._cancel_local(task_id)
        return task

    async def _drive(
        self, owner: str, task_id: str, backend: Backend, call: Call, setup_key: str, created: asyncio.Future,
        exclusive: bool, abandon: Optional[Abandon],
    ) -> None:
        events: asyncio.Queue[Optional[TaskEvent]] = asyncio.Queue()
        writer = asyncio.create_task(self._write(owner, task_id, events, created))
        entered = not exclusive
        try:
            if exclusive and not await _recorded(created):
                return
            entered = True
            async for event in backend(call, setup_key):
                events.put_nowait(event)
        except asyncio.CancelledError:
            closing = "the server shut down before this task finished; submit it again"
            events.put_nowait(Failed(closing) if self._closing else Cancelled())
        except Exception as exc:
            _log.warning("task %s: its replica failed: %s", task_id, describe(exc))
            # Only the type: Ray's message names processes, addresses and nodes of the cluster.
            events.put_nowait(Failed(f"the replica running this task failed ({type(exc).__name__}); submit it again"))
        finally:
            if not entered:
                self._in_background(abandon)
            events.put_nowait(None)
            await asyncio.shield(writer)  # a cancel repeated meanwhile (the heartbeat's) must not stop the record

    def _ended(self, task_id: str, app: Optional[str], drive: asyncio.Task) -> None:
        if self._running.get(task_id) is drive:  # not a keyed task's next try, started once this one's record failed
            del self._running[task_id], self._created[task_id]
        self._unfinished[app] -= 1

    async def _write(
        self, owner: str, task_id: str, events: asyncio.Queue[Optional[TaskEvent]], created: asyncio.Future
    ) -> None:
        """Once the task is recorded, apply the events in order, all those waiting in one write; None ends it."""
        try:
            await created
        except Exception:
            return  # never recorded: `submit` raised it, and the call is cancelled
        while True:
            batch = [await events.get()]
            while not events.empty():
                batch.append(events.get_nowait())
            done = batch[-1] is None
            batch = [event for event in batch if event is not None]
            if batch:
                await self._record(owner, task_id, batch)
            if done:
                return

    async def _record(self, owner: str, task_id: str, events: list[TaskEvent]) -> None:
        """Apply `events`; events the store refuses end the task FAILED rather than leave it running."""
        try:
            self.tasks.put(owner, await self._apply(task_id, events))
            return
        except Exception as exc:
            _log.warning("task %s: its events could not be recorded: %s", task_id, describe(exc))
            failed = Failed(f"the server could not record this task's progress ({type(exc).__name__}); submit it again")
        try:
            self.tasks.put(owner, await self._apply(task_id, [failed]))
        except Exception as exc:  # refused too, or closing with the store down: the lease, no longer renewed, ends it
            _log.warning("task %s: its failure could not be recorded either: %s", task_id, describe(exc))

    async def _apply(self, task_id: str, events: list[TaskEvent]) -> Optional[dict]:
        """The store's apply, sent again while the store cannot take it; raises what the store refused."""
        return await self._until_taken(lambda: self._writes.apply(task_id, events), task_id)

    async def _until_taken(self, write: Callable[[], Awaitable[Any]], task_id: str) -> Any:
        """`write()`, sent again while the store cannot take it; raises what the store refused.

        Not bounded by time: a task keeps its place in the queue meanwhile (so a long outage
        ends in 429s, not in lost results), and the heartbeat keeps its lease. Once this
        dispatcher closes it stops, and the lease, no longer renewed, ends the task.
        """
        wait = RETRY_FIRST_S
        while True:
            try:
                return await write()
            except StoreUnavailable as exc:
                if self._closing:
                    raise
                if wait == RETRY_FIRST_S:
                    _log.warning("task %s: %s; sending it again until it does", task_id, exc)
            await asyncio.sleep(wait)
            wait = min(wait * 2, RETRY_MAX_S)

    def _cancel_local(self, task_id: str) -> None:
        running = self._running.get(task_id)
        if running is not None:
            running.cancel()

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = spawn(self._beat())

    async def _beat(self) -> None:
        while True:
            try:
                for task_id in await self.store.heartbeat(self.id):
                    self._cancel_local(task_id)
            except Exception as exc:  # the store restarting: keep beating, it comes back
                _log.warning("task store heartbeat failed: %s", describe(exc))
            await asyncio.sleep(self._heartbeat_s)

    async def close(self) -> None:
        """Stop dispatching: running tasks end FAILED (the server is going away), recorded before we return,
        and what a call that did not run prepared (a session's admitted call) is undone."""
        self._closing = True
        tasks = [task for task in [self._heartbeat, *self._running.values()] if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._background:
            await asyncio.wait(self._background, timeout=CLOSE_CLEANUP_S)

