"""The task store: forward-only statuses, persistence, leases and pruning."""

from __future__ import annotations

import asyncio
import time

from inferencesh_ray.events import Cancelled, Completed, Failed, Log, Output, Running, SettingUp
from inferencesh_ray.status import TaskStatus
from inferencesh_ray.store import TaskStore, stream_view


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


def test_stream_view_keeps_lines_small():
    task = {"logs": [{"content": str(i)} for i in range(500)]}
    assert len(stream_view(task)["logs"]) == 50 and stream_view(task)["logs"][-1]["content"] == "499"


def test_a_bad_op_in_a_grouped_write_fails_only_itself(tmp_path):
    async def main():
        store = TaskStore(str(tmp_path / "t.db"))
        return await store.write([("create", ("me", {"input": {}}, "d1")), ("drop", ()), ("create", ("me", {}, "d1"))])

    first, bad, last = asyncio.run(main())
    assert first["status"] == TaskStatus.QUEUED and last["status"] == TaskStatus.QUEUED
    assert isinstance(bad, ValueError) and "not a task store write: 'drop'" in str(bad)
