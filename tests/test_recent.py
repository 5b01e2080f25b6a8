"""Reads and streams of the tasks an ingress dispatched, from memory; its writes, coalesced."""

from __future__ import annotations

import asyncio
import copy

from inferencesh_ray.dispatch import Dispatcher
from inferencesh_ray.events import Completed, Log, Running, Uploading
from inferencesh_ray.host import Call
from inferencesh_ray.recent import RecentTasks
from inferencesh_ray.status import TaskStatus
from inferencesh_ray.store import TaskStore
from inferencesh_ray.writes import StoreWrites


class CountingStore:
    """The real store, counting the calls that would cross to its actor, each taking `delay`; its
    answers are copies, as they are across an actor call. While `down`, writes fail as a whole."""

    def __init__(self, path, delay: float = 0.0, **options) -> None:
        self._store = TaskStore(str(path), **options)
        self.calls: list[str] = []
        self.applied: list[int] = []
        self.down = False
        self._delay = delay

    def __getattr__(self, name):
        method = getattr(self._store, name)

        async def call(*args):
            self.calls.append(name)
            if name == "write":
                self.applied += [len(op_args[1]) for op, op_args in args[0] if op == "apply"]
            await asyncio.sleep(self._delay)
            if name == "write" and self.down:
                raise ConnectionError("the task store's actor is restarting")
            return copy.deepcopy(await method(*args))

        return call


def test_reads_of_dispatched_tasks_never_reach_the_store(tmp_path):
    async def main():
        store = CountingStore(tmp_path / "t.db")
        recent = RecentTasks(store)
        task = await store.create("me", {"input": {}}, "d1")
        recent.put("me", task)
        store.calls.clear()
        mine = await recent.get(task["id"], "me")
        theirs = await recent.get(task["id"], "someone-else")
        watched = await recent.watch(task["id"], "someone-else", -1, 0.01)
        unknown = await recent.get("nope", "me")
        return mine, theirs, watched, unknown, store.calls

    mine, theirs, watched, unknown, calls = asyncio.run(main())
    assert mine["status"] == TaskStatus.QUEUED and theirs is None and watched is None and unknown is None
    assert calls == ["get"]  # only the task it never dispatched


def test_a_watch_wakes_on_the_change_and_finished_tasks_are_forgotten_in_turn(tmp_path):
    async def main():
        store = CountingStore(tmp_path / "t.db")
        recent = RecentTasks(store, keep=2)
        task = await store.create("me", {"input": {}}, "d1")
        recent.put("me", task)
        version, _ = await recent.watch(task["id"], "me", -1, 1.0)
        waiting = asyncio.create_task(recent.watch(task["id"], "me", version, 5.0))
        await asyncio.sleep(0.01)
        recent.put("me", await store.apply(task["id"], [Completed({"ok": 1})]))
        woken = await asyncio.wait_for(waiting, 1.0)
        idle = await recent.watch(task["id"], "me", woken[0], 0.01)  # terminal: no wait
        others = [await store.create("me", {"input": {}}, "d1") for _ in range(2)]
        for other in others:
            recent.put("me", await store.apply(other["id"], [Completed({})]))
        store.calls.clear()
        await recent.get(task["id"], "me")  # the oldest of three finished: gone to the store
        await recent.get(others[1]["id"], "me")
        return woken, idle, store.calls

    woken, idle, calls = asyncio.run(main())
    assert woken[1]["status"] == TaskStatus.COMPLETED and idle[0] == woken[0]
    assert calls == ["get"]


def test_watches_end_at_once_when_the_ingress_closes(tmp_path):
    """uvicorn cut the streams still open 5 s into its shutdown, and the official async client,
    its response cut, did not connect again: each stream now ends cleanly first."""

    async def main():
        store = CountingStore(tmp_path / "t.db")
        recent = RecentTasks(store)
        mine = await store.create("me", {"input": {}}, "d1")
        recent.put("me", mine)
        elsewhere = await store.create("me", {"input": {}}, "d2")  # another ingress's: watched at the store
        waiting = [asyncio.create_task(recent.watch(task["id"], "me", 1, 0.5)) for task in (mine, elsewhere)]
        await asyncio.sleep(0.05)
        started = asyncio.get_running_loop().time()
        recent.end_watches()
        ended = await asyncio.gather(*waiting)
        return ended, asyncio.get_running_loop().time() - started, await recent.watch(mine["id"], "me", -1, 5.0)

    ended, took, later = asyncio.run(main())
    assert ended == [None, None] and later is None
    assert took < 0.6  # the in-memory watch at once; the store's at its timeout


def test_events_arriving_during_a_write_go_together_in_the_next(tmp_path):
    async def backend(call, setup_key):
        yield Running()
        for index in range(20):
            yield Log(f"line {index}")
        yield Completed({"done": True})

    async def main():
        store = CountingStore(tmp_path / "t.db", delay=0.02)
        dispatcher = Dispatcher(store, {"app": backend})
        task = await dispatcher.submit("me", backend, Call("run", {}), "", {"input": {}})
        while dispatcher._running:
            await asyncio.sleep(0.01)
        await dispatcher.close()
        return store.applied, await dispatcher.tasks.get(task["id"], "me")

    applied, done = asyncio.run(main())
    assert sum(applied) == 22 and len(applied) <= 3, applied
    assert done["status"] == TaskStatus.COMPLETED and len(done["logs"]) == 20


def test_concurrent_writes_share_one_store_call_and_each_gets_its_own_answer(tmp_path):
    async def main():
        store = CountingStore(tmp_path / "t.db", delay=0.02)
        writes = StoreWrites(store)
        tasks = await asyncio.gather(*(writes.create("me", {"input": {"n": n}}, "d1") for n in range(10)))
        missing = await writes.apply("nope", [Completed({})])
        bad = await asyncio.gather(writes.cancel(tasks[0]["id"], "me"), writes.apply(tasks[1]["id"], "not events"),
                                   return_exceptions=True)
        return tasks, missing, bad, store.calls

    tasks, missing, bad, calls = asyncio.run(main())
    assert [task["input"]["n"] for task in tasks] == list(range(10)) and len({t["id"] for t in tasks}) == 10
    assert missing is None
    # One write failing fails only its caller; the cancel beside it went through.
    assert bad[0]["status"] == TaskStatus.CANCELLING and isinstance(bad[1], Exception)
    assert calls.count("write") <= 4, calls


def test_events_the_store_refuses_end_the_task_failed_not_running(tmp_path):
    async def backend(call, setup_key):
        yield Running()
        yield Completed({"unstorable": object()})

    async def main():
        dispatcher = Dispatcher(CountingStore(tmp_path / "t.db"), {"app": backend})
        task = await dispatcher.submit("me", backend, Call("run", {}), "", {"input": {}})
        while dispatcher._running:
            await asyncio.sleep(0.01)
        await dispatcher.close()
        return await dispatcher.store.get(task["id"], "me"), await dispatcher.tasks.get(task["id"], "me")

    stored, shown = asyncio.run(main())
    assert stored["status"] == shown["status"] == TaskStatus.FAILED
    assert stored["error"] == "the server could not record this task's progress (TypeError); submit it again"


def held_backend():
    """A backend whose task runs until the event is set, then completes."""
    ended = asyncio.Event()

    async def backend(call, setup_key):
        yield Running()
        await ended.wait()
        yield Completed({"ok": True})

    return ended, backend


def test_a_passing_store_outage_loses_no_result_and_leaves_no_task_running(tmp_path):
    ended, backend = held_backend()

    async def main():
        store = CountingStore(tmp_path / "t.db")
        dispatcher = Dispatcher(store, {"app": backend}, heartbeat_s=0.05)
        task = await dispatcher.submit("me", backend, Call("run", {}), "", {"input": {}})
        while (await dispatcher.tasks.get(task["id"], "me"))["status"] != TaskStatus.RUNNING:
            await asyncio.sleep(0.01)
        store.down = True
        ended.set()  # its end is written, and fails, while the store is down
        await asyncio.sleep(0.2)
        store.down = False
        while dispatcher._running:
            await asyncio.sleep(0.01)
        await dispatcher.close()
        return await store.get(task["id"], "me"), await dispatcher.tasks.get(task["id"], "me")

    stored, shown = asyncio.run(main())
    assert stored["status"] == shown["status"] == TaskStatus.COMPLETED and stored["output"] == {"ok": True}


def test_a_task_the_store_ended_first_shows_its_end_on_the_ingress(tmp_path):
    ended, backend = held_backend()

    async def main():
        store = CountingStore(tmp_path / "t.db", lease_s=0.2)
        dispatcher = Dispatcher(store, {"app": backend}, heartbeat_s=0.05)
        task = await dispatcher.submit("me", backend, Call("run", {}), "", {"input": {}})
        await asyncio.sleep(0.1)
        dispatcher._heartbeat.cancel()  # its lease runs out (a stalled loop, say)
        await asyncio.sleep(0.3)
        await store.reap()
        ended.set()
        while dispatcher._running:
            await asyncio.sleep(0.01)
        shown = await dispatcher.tasks.get(task["id"], "me")
        await dispatcher.close()
        return shown

    shown = asyncio.run(main())
    assert shown["status"] == TaskStatus.FAILED and "stopped before it finished" in shown["error"]


def test_a_cancel_taken_for_another_ingress_shows_its_end_there_too(tmp_path):
    async def backend(call, setup_key):
        yield Running()
        await asyncio.sleep(30)

    async def main():
        store = CountingStore(tmp_path / "t.db")
        running, taking = (Dispatcher(store, {"app": backend}, heartbeat_s=0.05) for _ in range(2))
        task = await running.submit("me", backend, Call("run", {}), "", {"input": {}})
        cancelling = await taking.cancel(task["id"], "me")
        while running._running:  # its heartbeat brings the cancel
            await asyncio.sleep(0.01)
        shown = await taking.tasks.get(task["id"], "me")
        watched = await asyncio.wait_for(taking.tasks.watch(task["id"], "me", 10**6, 5.0), 1.0)  # ended: no wait
        await running.close()
        await taking.close()
        return cancelling, shown, watched[1]

    cancelling, shown, watched = asyncio.run(main())
    assert cancelling["status"] == TaskStatus.CANCELLING
    assert shown["status"] == watched["status"] == TaskStatus.CANCELLED


def test_a_record_that_fails_cancels_the_call_even_when_nobody_awaits_submit(tmp_path):
    started, cancelled = asyncio.Event(), []

    async def backend(call, setup_key):
        started.set()
        try:
            await asyncio.sleep(30)
            yield Completed({})
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    class DownStore:
        """A task store whose writes hang until `outcome` says how they end."""

        def __init__(self) -> None:
            self.outcome = asyncio.get_running_loop().create_future()

        async def write(self, ops):
            return await self.outcome

        async def heartbeat(self, dispatcher_id):
            return []

    async def main():
        store = DownStore()
        dispatcher = Dispatcher(store, {"app": backend})
        submitting = asyncio.create_task(dispatcher.submit("me", backend, Call("run", {}), "", {"input": {}}))
        await started.wait()
        submitting.cancel()  # the client's request went away
        store.outcome.set_exception(RuntimeError("the task store is down"))
        for _ in range(100):
            if cancelled:
                break
            await asyncio.sleep(0.01)
        await dispatcher.close()
        return cancelled

    assert asyncio.run(main()) == [True]


def test_a_task_cancelled_twice_is_recorded_and_frees_its_place_in_the_queue(tmp_path):
    """An HTTP cancel, then the store's heartbeat repeating it while the Cancelled event is written."""

    async def backend(call, setup_key):
        yield Running()
        await asyncio.sleep(30)

    async def main():
        store = CountingStore(tmp_path / "t.db", delay=0.05)
        dispatcher = Dispatcher(store, {"app": backend}, max_queued_tasks=1)
        task = await dispatcher.submit("me", backend, Call("run", {}), "", {"input": {}})
        while (await dispatcher.tasks.get(task["id"], "me"))["status"] != TaskStatus.RUNNING:
            await asyncio.sleep(0.01)
        await dispatcher.cancel(task["id"], "me")
        await asyncio.sleep(0.01)  # the Cancelled event's write is in flight
        dispatcher._cancel_local(task["id"])
        while dispatcher._running:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        cancelled = await dispatcher.tasks.get(task["id"], "me")
        again = await dispatcher.submit("me", backend, Call("run", {}), "", {"input": {}})  # its place is free
        await dispatcher.close()
        return cancelled, again

    cancelled, again = asyncio.run(main())
    assert cancelled["status"] == TaskStatus.CANCELLED
    assert again["id"]  # taken, not Saturated


def test_a_task_cancelled_before_its_call_starts_frees_its_place_in_the_queue(tmp_path):
    async def backend(call, setup_key):
        yield Completed({})

    async def main():
        dispatcher = Dispatcher(CountingStore(tmp_path / "t.db"), {"app": backend}, max_queued_tasks=1)
        submitted = asyncio.ensure_future(dispatcher.submit("me", backend, Call("run", {}), "", {"input": {}}))
        await asyncio.sleep(0)  # submit has made the call's task, which has not run yet
        for running in list(dispatcher._running.values()):
            running.cancel()
        await asyncio.gather(submitted, return_exceptions=True)
        await asyncio.sleep(0.05)
        again = await dispatcher.submit("me", backend, Call("run", {}), "", {"input": {}})
        await dispatcher.close()
        return again

    assert asyncio.run(main())["id"]  # taken, not Saturated


def test_a_cancel_that_comes_once_outputs_upload_lets_the_task_finish(tmp_path):
    uploaded = asyncio.Event()

    async def backend(call, setup_key):
        yield Running()
        yield Uploading()
        await uploaded.wait()
        yield Completed({"file": "done"})

    async def main():
        dispatcher = Dispatcher(CountingStore(tmp_path / "t.db"), {"app": backend})
        task = await dispatcher.submit("me", backend, Call("run", {}), "", {"input": {}})
        while (await dispatcher.tasks.get(task["id"], "me"))["status"] != TaskStatus.UPLOADING:
            await asyncio.sleep(0.01)
        answer = await dispatcher.cancel(task["id"], "me")
        uploaded.set()
        while dispatcher._running:
            await asyncio.sleep(0.01)
        await dispatcher.close()
        return answer, await dispatcher.store.get(task["id"], "me")

    answer, done = asyncio.run(main())
    assert answer["status"] == TaskStatus.UPLOADING  # as it is: too late to stop
    assert done["status"] == TaskStatus.COMPLETED and done["output"] == {"file": "done"}


def test_closing_waits_for_what_a_call_that_did_not_run_prepared_to_be_undone(tmp_path):
    async def main():
        dispatcher = Dispatcher(TaskStore(str(tmp_path / "t.db")), {}, max_queued_tasks=0)
        undone = []

        async def abandon():
            await asyncio.sleep(0.2)  # a registry call
            undone.append("end_call")

        try:
            await dispatcher.submit("me", None, Call("run", {}, {}, {}), "", {"app_id": "a"}, "t1", True, abandon)
        except Exception as exc:
            assert type(exc).__name__ == "Saturated"
        await dispatcher.close()
        return undone

    assert asyncio.run(main()) == ["end_call"]


def test_a_task_is_recorded_and_run_apart_from_the_request_that_submitted_it(tmp_path):
    """Ray finds a call's parent task through the context, and Serve cancels a request's
    calls with it when its client leaves: the store writes (which carry other requests'
    writes too) and the replica call must not be made in the request's context."""
    import contextvars

    request = contextvars.ContextVar("request", default=None)
    seen: list[tuple[str, object]] = []

    class Watched(CountingStore):
        def __getattr__(self, name):
            call = super().__getattr__(name)

            async def watched(*args):
                seen.append((name, request.get()))
                return await call(*args)

            return watched

    async def backend(call, setup_key):
        seen.append(("replica", request.get()))
        yield Completed({"done": True})

    async def main():
        dispatcher = Dispatcher(Watched(tmp_path / "t.db"), {"app": backend})
        request.set("POST /apps/run")
        await dispatcher.submit("me", backend, Call("run", {}), "", {"input": {}})
        while dispatcher._running:
            await asyncio.sleep(0.01)
        await dispatcher.close()

    asyncio.run(main())
    assert ("replica", None) in seen and ("write", None) in seen
    assert all(value is None for _, value in seen), seen
