"""The task store: forward-only statuses, persistence, leases and pruning."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from inferencesh_ray.events import Cancelled, Completed, Failed, Log, Output, Running, SettingUp, Uploading
from inferencesh_ray.status import TaskStatus
from inferencesh_ray.store import TaskExists, TaskStore


def test_status_moves_only_forward_and_terminal_is_final(tmp_path):
    async def main():
        store = TaskStore(str(tmp_path / "t.db"))
        task = await store.create("me", {"input": {}}, "d1")
        await store.apply(task["id"], [Running(), SettingUp(), Log("a"), Output({"p": 1})])
        mid = await store.get(task["id"], "me")
        assert mid["status"] == TaskStatus.RUNNING and mid["output"] == {"p": 1}
        await store.apply(task["id"], [Completed({"done": True}), Failed("late"), Log("late")])
        return await store.get(task["id"], "me")

    done = asyncio.run(main())
    assert done["status"] == TaskStatus.COMPLETED and done["error"] is None
    assert [log["content"] for log in done["logs"]] == ["a"]
    assert [e["status"] for e in done["events"]] == [1, 2, 7, 10]


def test_the_app_frames_of_a_failure_end_its_logs(tmp_path):
    async def main():
        store = TaskStore(str(tmp_path / "t.db"))
        task = await store.create("me", {"input": {}}, "d1")
        frames = 'Traceback (app frames):\n  File "/apps/a/inference.py", line 9, in run\n    raise ValueError("no")'
        await store.apply(task["id"], [Running(), Log("working"), Failed("ValueError: no", frames)])
        return await store.get(task["id"], "me")

    done = asyncio.run(main())
    assert done["status"] == TaskStatus.FAILED and done["error"] == "ValueError: no"
    assert [log["content"] for log in done["logs"]] == [
        "working", "Traceback (app frames):", '  File "/apps/a/inference.py", line 9, in run', '    raise ValueError("no")',
    ]
    assert [log["id"] for log in done["logs"]] == [f"{done['id']}-{index}" for index in range(4)]


def test_tasks_survive_a_new_store_on_the_same_database(tmp_path):
    async def first():
        store = TaskStore(str(tmp_path / "t.db"))
        task = await store.create("me", {"input": {"x": 1}}, "d1")
        await store.apply(task["id"], [Completed({"y": 2})])
        return task["id"]

    async def second(task_id):
        store = TaskStore(str(tmp_path / "t.db"))
        return await store.get(task_id, "me"), await store.get(task_id, "someone-else")

    task_id = asyncio.run(first())
    mine, theirs = asyncio.run(second(task_id))
    assert mine["output"] == {"y": 2} and theirs is None


def test_tasks_of_a_lost_dispatcher_are_failed(tmp_path):
    async def main():
        store = TaskStore(str(tmp_path / "t.db"), lease_s=0.2)
        kept = await store.create("me", {}, "alive")
        lost = await store.create("me", {}, "gone")
        await store.heartbeat("gone")
        await asyncio.sleep(0.3)
        await store.heartbeat("alive")
        assert await store.reap() == 1
        return await store.get(kept["id"], "me"), await store.get(lost["id"], "me")

    kept, lost = asyncio.run(main())
    assert kept["status"] == TaskStatus.QUEUED
    assert lost["status"] == TaskStatus.FAILED and "stopped before it finished" in lost["error"]


def test_open_tasks_reload_after_a_store_restart(tmp_path):
    async def before():
        store = TaskStore(str(tmp_path / "t.db"))
        task = await store.create("me", {}, "d1")
        await store.apply(task["id"], [Running()])
        return task["id"]

    async def after(task_id):
        store = TaskStore(str(tmp_path / "t.db"), lease_s=0.1)
        await store.apply(task_id, [Completed({"ok": 1})])  # its dispatcher carries on
        return await store.get(task_id, "me")

    task_id = asyncio.run(before())
    assert asyncio.run(after(task_id))["status"] == TaskStatus.COMPLETED


def test_cancel_queued_running_and_cancel_wins_over_late_result(tmp_path):
    async def main():
        store = TaskStore(str(tmp_path / "t.db"))
        task = await store.create("me", {}, "d1")
        await store.apply(task["id"], [Running()])
        cancelling = dict(await store.cancel(task["id"], "me"))
        assert await store.heartbeat("d1") == [task["id"]]
        await store.apply(task["id"], [Completed({"raced": True})])
        return cancelling, await store.get(task["id"], "me"), await store.cancel(task["id"], "other")

    cancelling, done, other = asyncio.run(main())
    assert cancelling["status"] == TaskStatus.CANCELLING
    assert done["status"] == TaskStatus.CANCELLED and done["output"] is None
    assert other is None


def test_a_cancel_never_moves_a_task_back_and_one_acknowledged_ends_cancelled(tmp_path):
    async def main():
        store = TaskStore(str(tmp_path / "t.db"))
        uploading = await store.create("me", {}, "d1")
        await store.apply(uploading["id"], [Running(), Uploading()])
        too_late = await store.cancel(uploading["id"], "me")  # past stopping: it finishes
        to_stop = await store.heartbeat("d1")
        await store.apply(uploading["id"], [Completed({"ok": 1})])
        raced = await store.create("me", {}, "d1")
        await store.apply(raced["id"], [Running()])
        await store.cancel(raced["id"], "me")
        await store.apply(raced["id"], [Uploading(), Completed({"ok": 2})])  # in flight when the cancel landed
        return too_late, to_stop, await store.get(uploading["id"], "me"), await store.get(raced["id"], "me")

    too_late, to_stop, finished, cancelled = asyncio.run(main())
    assert too_late["status"] == TaskStatus.UPLOADING and [e["status"] for e in too_late["events"]] == [1, 2, 7, 9]
    assert to_stop == []
    assert finished["status"] == TaskStatus.COMPLETED and finished["output"] == {"ok": 1}
    assert [e["status"] for e in cancelled["events"]] == [1, 2, 7, 8, 12] and cancelled["output"] is None


class FailingDb:
    """A SQLite connection whose statements starting with `failing` fail, as on a full disk."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db, self.failing = db, None

    def execute(self, sql, *args):
        if self.failing and sql.startswith(self.failing):
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)


@pytest.mark.parametrize("failing", ["INSERT", "COMMIT"])
def test_a_write_that_fails_changes_nothing_in_memory(tmp_path, failing):
    async def main():
        store = TaskStore(str(tmp_path / "t.db"))
        db = store._db = FailingDb(store._db)
        task = await store.create("me", {"input": {}}, "d1")
        await store.write([("apply", (task["id"], [Running()]))])
        version, _ = await store.watch(task["id"], "me", -1, 0)
        watching = asyncio.create_task(store.watch(task["id"], "me", version, 5.0))
        db.failing = failing
        try:
            results = await store.write([("apply", (task["id"], [Completed({"x": 1})])),
                                         ("cancel", (task["id"], "me")), ("create", ("me", {}, "d1", "new-task"))])
        except sqlite3.OperationalError as exc:
            results = exc
        db.failing = None
        after = await store.get(task["id"], "me"), await store.get("new-task", "me"), watching.done()
        cancels = await store.heartbeat("d1")  # a cancel that did not happen is not passed on
        fallback = (await store.write([("apply", (task["id"], [Failed("could not record")]))]))[0]
        await watching
        return results, after, cancels, fallback, await TaskStore(str(tmp_path / "t.db")).get(task["id"], "me")

    results, (kept, created, woken), cancels, fallback, reloaded = asyncio.run(main())
    if failing == "INSERT":  # each write failed alone
        assert all(isinstance(result, sqlite3.OperationalError) for result in results)
    else:  # the transaction failed: so did the whole write
        assert isinstance(results, sqlite3.OperationalError)
    assert kept["status"] == TaskStatus.RUNNING and kept["output"] is None and created is None
    assert not woken and cancels == []
    assert fallback["status"] == reloaded["status"] == TaskStatus.FAILED


def test_watch_wakes_on_change_and_times_out(tmp_path):
    async def main():
        store = TaskStore(str(tmp_path / "t.db"))
        task = await store.create("me", {}, "d1")
        version, _ = await store.watch(task["id"], "me", -1, 1.0)
        started = time.monotonic()
        waiter = asyncio.create_task(store.watch(task["id"], "me", version, 5.0))
        await asyncio.sleep(0.05)
        await store.apply(task["id"], [Running()])
        new_version, seen = await waiter
        woke_after = time.monotonic() - started
        idle_started = time.monotonic()
        same_version, _ = await store.watch(task["id"], "me", new_version, 0.1)
        return version, new_version, seen, woke_after, same_version, time.monotonic() - idle_started

    version, new_version, seen, woke_after, same_version, idle = asyncio.run(main())
    assert new_version > version and seen["status"] == TaskStatus.RUNNING and woke_after < 1.0
    assert same_version == new_version and 0.09 < idle < 1.0


def test_retention_prunes_old_finished_tasks(tmp_path):
    async def main():
        store = TaskStore(str(tmp_path / "t.db"), retention_s=0.05, lease_s=0.0)
        task = await store.create("me", {}, "d1")
        await store.apply(task["id"], [Cancelled()])
        await asyncio.sleep(0.1)
        await store.reap()
        return await store.get(task["id"], "me")

    assert asyncio.run(main()) is None


def test_a_bad_op_in_a_grouped_write_fails_only_itself(tmp_path):
    async def main():
        store = TaskStore(str(tmp_path / "t.db"))
        return await store.write([("create", ("me", {"input": {}}, "d1")), ("drop", ()), ("create", ("me", {}, "d1"))])

    first, bad, last = asyncio.run(main())
    assert first["status"] == TaskStatus.QUEUED and last["status"] == TaskStatus.QUEUED
    assert isinstance(bad, ValueError) and "not a task store write: 'drop'" in str(bad)


def test_a_write_taken_twice_adds_its_log_lines_once(tmp_path):
    """Sent again after its reply was lost (the store restarted after the commit), a write
    used to add its log lines a second time; the host numbers them, and the store keeps each once."""

    async def main():
        store = TaskStore(str(tmp_path / "t.db"))
        task = await store.create("me", {"input": {}}, "d1")
        first = [Running(), Log("a", seq=0), Log("b", seq=1)]
        await store.apply(task["id"], first)
        await TaskStore(str(tmp_path / "t.db")).apply(task["id"], first)  # a restarted store, from disk
        restarted = TaskStore(str(tmp_path / "t.db"))
        await restarted.apply(task["id"], [Log("b", seq=1), Log("c", seq=2), Log("unnumbered")])
        return await restarted.get(task["id"], "me")

    task = asyncio.run(main())
    assert [log["content"] for log in task["logs"]] == ["a", "b", "c", "unnumbered"]


def test_a_task_keeps_its_last_log_lines_numbered_as_they_came(tmp_path):
    """Each write rewrites the task's document: a task logging a line at a time for long made
    every write slower, for every task the store serves (5,000 single-line writes took 11 s
    of store time; 1.8 s with the bound)."""
    from inferencesh_ray.store import MAX_LOG_LINES

    total = MAX_LOG_LINES + 4001

    async def main():
        store = TaskStore(str(tmp_path / "t.db"))
        task = await store.create("me", {"input": {}}, "d1")
        for seq in range(total - 1):
            await store.apply(task["id"], [Log(f"line {seq}", seq=seq)])
        await store.apply(task["id"], [Log("line 1", seq=1), Log(f"line {total - 1}")])  # old, then unnumbered
        return await store.get(task["id"], "me")

    task = asyncio.run(main())
    assert len(task["logs"]) == MAX_LOG_LINES
    assert [log["content"] for log in task["logs"][-2:]] == [f"line {total - 2}", f"line {total - 1}"]
    assert task["logs"][0]["id"] == f"{task['id']}-{total - MAX_LOG_LINES}"  # where lines were dropped shows


def test_an_id_names_one_task_and_a_create_sent_again_by_its_attempt_gets_it(tmp_path):
    async def first():
        store = TaskStore(str(tmp_path / "t.db"))
        queued = await store.create("me", {"input": {"n": 1}}, "d1", "k1", "attempt-1")
        assert await store.create("me", {"input": {"n": 1}}, "d1", "k1", "attempt-1") == queued  # sent again
        # True: what an older dispatcher sent in that place (`exclusive`), during an upgrade
        for dispatcher, attempt in (("d2", "attempt-2"), ("d1", "attempt-2"), ("d1", None), ("d1", True)):
            with pytest.raises(TaskExists):
                await store.create("me", {"input": {"n": 1}}, dispatcher, "k1", attempt)
        await store.create("me", {"input": {}}, "old-d1", "k4", True)
        with pytest.raises(TaskExists):
            await store.create("me", {"input": {}}, "old-d2", "k4", True)
        finished = await store.create("me", {"input": {}}, "d1", "k2", "attempt-3")
        await store.apply(finished["id"], [Completed({})])

    async def after_a_restart():
        store = TaskStore(str(tmp_path / "t.db"))
        assert (await store.create("me", {"input": {}}, "d1", "k1", "attempt-1"))["id"] == "k1"  # live again
        assert (await store.create("me", {"input": {}}, "d1", "k2", "attempt-3"))["status"] == TaskStatus.COMPLETED
        results = await store.write([("create", ("me", {"input": {}}, "d3", "k2", "attempt-4")),
                                     ("create", ("me", {"input": {}}, "d3", "k3", "attempt-5"))])
        assert isinstance(results[0], TaskExists) and results[1]["id"] == "k3"  # one refusal fails only itself

    asyncio.run(first())
    asyncio.run(after_a_restart())


def test_a_withdrawn_create_ends_failed_only_if_that_attempt_made_the_task(tmp_path):
    async def main():
        store = TaskStore(str(tmp_path / "t.db"))
        await store.create("me", {"input": {}}, "d1", "lost", "attempt-1")
        await store.create("me", {"input": {}}, "d1", "other", "attempt-2")
        await store.withdraw("lost", "attempt-1", "its answer was lost")
        await store.withdraw("other", "attempt-9", "not this one")  # another attempt's task stays as it is
        await store.withdraw("never-made", "attempt-3", "nothing to end")
        return await store.get("lost", "me"), await store.get("other", "me"), await store.get("never-made", "me")

    lost, other, never = asyncio.run(main())
    assert lost["status"] == TaskStatus.FAILED and lost["error"] == "its answer was lost"
    assert other["status"] == TaskStatus.QUEUED and never is None


def test_a_database_from_before_attempts_opens_and_its_tasks_keep_their_ids(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE tasks (id TEXT PRIMARY KEY, owner TEXT NOT NULL, status INTEGER NOT NULL, "
                      "created REAL NOT NULL, updated REAL NOT NULL, dispatcher TEXT, body TEXT NOT NULL);")
    body = '{"id": "t1", "status": 2, "logs": [], "events": [], "output": null, "error": null}'
    old.execute("INSERT INTO tasks VALUES ('t1', 'me', 2, 0, 0, 'd0', ?)", (body,))
    old.commit()
    old.close()

    async def main():
        store = TaskStore(str(path))
        with pytest.raises(TaskExists):
            await store.create("me", {"input": {}}, "d1", "t1", "attempt-1")
        return await store.get("t1", "me")

    assert asyncio.run(main())["status"] == TaskStatus.QUEUED


def test_a_create_is_not_refused_when_another_process_writes_the_database_meanwhile(tmp_path):
    """The session registry shares the database file. A create reads (does its id exist?), then
    writes; begun deferred, it failed with "database is locked" (a 500 in CI) when the registry
    committed in between."""
    path = str(tmp_path / "t.db")
    store = TaskStore(path)
    other = sqlite3.connect(path, timeout=0.2, isolation_level=None)
    other.execute("CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY)")
    recorded, wrote = store._recorded, []

    def recorded_then_another_write(task_id):
        found = recorded(task_id)
        try:
            other.execute("INSERT INTO sessions VALUES (?)", (task_id,))  # the registry, between our read and write
            wrote.append("other")
        except sqlite3.OperationalError:
            wrote.append("waited")  # our transaction holds the write lock: the other writer waits its turn
        return found

    store._recorded = recorded_then_another_write
    task = asyncio.run(store.create("me", {"input": {}}, "d1", "t1", "a1"))
    assert task["id"] == "t1" and wrote == ["waited"]
