"""Sessions through the real HTTP API without Ray: the registry, in-process workers, the SDK's endpoints."""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import LocalWorkers, run_api, wait_terminal

from inferencesh_ray.sessions import SessionRegistry
from inferencesh_ray.status import TaskStatus

KEYS = ("key-a", "key-b")
A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}


@pytest.fixture
def lifecycle(apps):
    import sys

    sys.path.insert(0, str(apps))
    import lifecycle as module

    module.EVENTS.clear()
    return module.EVENTS


def scenario(apps, tmp_path, body, **options):
    return run_api(apps / "memory_app.py", tmp_path, body, KEYS, **options)


async def call(client, text, session, headers=A, **extra):
    response = await client.post("/apps/run", json={"app": "memory-app", "input": {"text": text, **extra},
                                                    "session": session}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def result(client, text, session, headers=A, **extra):
    task = await call(client, text, session, headers, **extra)
    return await wait_terminal(client, task["id"], headers)


async def open_session(client, timeout=None, headers=A) -> tuple[str, dict]:
    body = {"app": "memory-app", "input": {"text": "first"}, "session": "new"}
    if timeout is not None:
        body["session_timeout"] = timeout
    task = (await client.post("/apps/run", json=body, headers=headers)).json()["data"]
    assert task["session_id"], task
    return task["session_id"], await wait_terminal(client, task["id"], headers)


def test_state_is_kept_across_calls_in_one_instance(apps, tmp_path, lifecycle):
    async def body(client):
        session, first = await open_session(client)
        second = await result(client, "second", session)
        other, _ = await open_session(client)
        third = await result(client, "third", session)
        info = (await client.get(f"/sessions/{session}", headers=A)).json()["data"]
        return session, first, second, third, info, other

    session, first, second, third, info, other = scenario(apps, tmp_path, body)
    assert first["session_id"] == second["session_id"] == third["session_id"] == session
    assert third["output"]["history"] == ["first", "second", "third"]  # the other session never mixed in
    assert first["output"]["session_id"] == third["output"]["session_id"] == session  # the app's metadata says so
    assert len({first["output"]["instance"], third["output"]["instance"]}) == 1
    assert info["status"] == "active" and info["call_count"] == 3 and info["idle_timeout"] == 60
    assert info["task_id"] == third["id"] and info["app_id"] == "memory-app" and other != session
    assert set(info) >= {"id", "created_at", "updated_at", "status", "app_id", "app_version_id", "worker_id",
                         "expires_at", "ended_at", "task_id", "call_count", "last_call_at", "idle_timeout"}


def test_idle_timeout_unloads_and_later_calls_are_refused(apps, tmp_path, lifecycle):
    async def body(client):
        session, first = await open_session(client, timeout=1)
        await asyncio.sleep(1.6)
        info = (await client.get(f"/sessions/{session}", headers=A)).json()["data"]
        late = await client.post("/apps/run", json={"app": "memory-app", "input": {"text": "x"}, "session": session},
                                 headers=A)
        keepalive = await client.post(f"/sessions/{session}/keepalive", headers=A)
        return first, info, late, keepalive

    first, info, late, keepalive = scenario(apps, tmp_path, body)
    assert info["status"] == "expired" and info["ended_at"] and "idle for 1 s" in info["reason"]
    assert f"unload:{first['output']['instance']}" in lifecycle
    assert late.status_code == 410 and late.json()["type"] == "/errors/SESSION_EXPIRED"
    assert keepalive.status_code == 410


def test_calls_and_keepalive_restart_the_idle_timer(apps, tmp_path, lifecycle):
    async def body(client):
        session, _ = await open_session(client, timeout=1)
        for _ in range(3):  # 1.8 s in all, never 1 s idle
            await asyncio.sleep(0.6)
            alive = await client.post(f"/sessions/{session}/keepalive", headers=A)
            assert alive.status_code == 200 and alive.json()["data"]["status"] == "active"
        await asyncio.sleep(0.6)
        kept = await result(client, "kept", session)
        await asyncio.sleep(0.6)
        again = await result(client, "again", session)
        return kept, again

    kept, again = scenario(apps, tmp_path, body)
    assert again["status"] == TaskStatus.COMPLETED and again["output"]["history"] == ["first", "kept", "again"]


def test_a_running_call_holds_its_session_open(apps, tmp_path, lifecycle):
    async def body(client):
        session, _ = await open_session(client, timeout=1)
        return await result(client, "long", session, delay=1.5)

    done = scenario(apps, tmp_path, body)
    assert done["status"] == TaskStatus.COMPLETED, done["error"]


def test_end_is_idempotent_unloads_and_cancels_a_running_call(apps, tmp_path, lifecycle):
    async def body(client):
        session, first = await open_session(client)
        running = await call(client, "slow", session, delay=30)
        for _ in range(100):
            if (await client.get(f"/tasks/{running['id']}", headers=A)).json()["data"]["status"] == TaskStatus.RUNNING:
                break
            await asyncio.sleep(0.02)
        ended = await client.delete(f"/sessions/{session}", headers=A)
        again = await client.delete(f"/sessions/{session}", headers=A)
        cancelled = await wait_terminal(client, running["id"], A)
        late = await client.post("/apps/run", json={"app": "memory-app", "input": {"text": "x"}, "session": session},
                                 headers=A)
        return first, ended, again, cancelled, late

    first, ended, again, cancelled, late = scenario(apps, tmp_path, body)
    assert ended.status_code == 200 and ended.json()["data"]["status"] == "ended"
    assert again.status_code == 200 and again.json()["data"]["status"] == "ended"
    assert cancelled["status"] == TaskStatus.CANCELLED
    assert "cancelled:slow" in lifecycle and f"unload:{first['output']['instance']}" in lifecycle
    assert late.status_code == 410 and late.json()["type"] == "/errors/SESSION_ENDED"


def test_sessions_belong_to_their_key(apps, tmp_path, lifecycle):
    async def body(client):
        mine, _ = await open_session(client)
        theirs, _ = await open_session(client, headers=B)
        listed = (await client.get("/sessions", headers=A)).json()["data"]
        peek = await client.get(f"/sessions/{theirs}", headers=A)
        use = await client.post("/apps/run", json={"app": "memory-app", "input": {"text": "x"}, "session": theirs},
                                headers=A)
        end = await client.delete(f"/sessions/{theirs}", headers=A)
        keep = await client.post(f"/sessions/{theirs}/keepalive", headers=A)
        still = (await client.get(f"/sessions/{theirs}", headers=B)).json()["data"]
        return mine, listed, peek, use, end, keep, still

    mine, listed, peek, use, end, keep, still = scenario(apps, tmp_path, body)
    assert [s["id"] for s in listed] == [mine]
    for response in (peek, use, end, keep):
        assert response.status_code == 404 and response.json()["type"] == "/errors/SESSION_NOT_FOUND"
    assert still["status"] == "active"


def test_calls_in_a_session_run_one_at_a_time_in_arrival_order(apps, tmp_path, lifecycle):
    async def body(client):
        session, _ = await open_session(client)
        # Later calls are quicker: run concurrently, they would finish in reverse.
        tasks = [await call(client, str(index), session, delay=0.05 * (5 - index)) for index in range(5)]
        return [await wait_terminal(client, task["id"], A) for task in tasks]

    done = scenario(apps, tmp_path, body)
    assert done[-1]["output"]["history"] == ["first", "0", "1", "2", "3", "4"]


def test_the_number_of_live_sessions_is_bounded(apps, tmp_path, lifecycle):
    async def body(client):
        first, _ = await open_session(client)
        await open_session(client)
        refused = await client.post("/apps/run", json={"app": "memory-app", "input": {"text": "x"}, "session": "new"},
                                    headers=A)
        await client.delete(f"/sessions/{first}", headers=A)
        allowed, _ = await open_session(client)
        return refused, allowed

    refused, allowed = scenario(apps, tmp_path, body, session_limit=2)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "5"
    assert "limit of live sessions" in refused.json()["detail"]
    assert allowed


def test_calls_into_a_session_count_toward_the_apps_queue_limit(apps, tmp_path, lifecycle):
    async def body(client):
        session, _ = await open_session(client)
        held = [await call(client, name, session, delay=0.3) for name in "ab"]
        into_session = await client.post("/apps/run", json={"app": "memory-app", "input": {"text": "x"},
                                                           "session": session}, headers=A)
        into_new = await client.post("/apps/run", json={"app": "memory-app", "input": {"text": "y"}, "session": "new"},
                                     headers=A)
        sessions = (await client.get("/sessions", headers=A)).json()["data"]
        for task in held:
            await wait_terminal(client, task["id"], A)
        return into_session, into_new, sessions, await result(client, "c", session)

    into_session, into_new, sessions, after = scenario(apps, tmp_path, body, max_queued_tasks=2)
    for refused in (into_session, into_new):
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "max_queued_tasks" in refused.json()["detail"]
    assert [view["call_count"] for view in sessions] == [3]  # refused before a session was joined or opened
    assert after["output"]["history"] == ["first", "a", "b", "c"]


def test_a_call_refused_for_room_once_admitted_does_not_pin_its_session_open(apps, tmp_path, lifecycle, monkeypatch):
    from inferencesh_ray.sessions import SessionRegistry

    async def body(client):
        open_ = SessionRegistry.open

        async def open_while_the_queue_fills(self, *args):
            plain = await client.post("/apps/run", json={"app": "memory-app", "input": {"text": "p", "delay": 3}},
                                      headers=A)
            assert plain.status_code == 200
            return await open_(self, *args)

        monkeypatch.setattr(SessionRegistry, "open", open_while_the_queue_fills)
        refused = await client.post("/apps/run", json={"app": "memory-app", "input": {"text": "x"}, "session": "new",
                                                      "session_timeout": 1}, headers=A)
        await asyncio.sleep(1.6)
        return refused, (await client.get("/sessions", headers=A)).json()["data"]

    refused, sessions = scenario(apps, tmp_path, body, max_queued_tasks=1)
    assert refused.status_code == 429
    # opened for the call that never ran, it ended at once (it used to hold its worker until it expired)
    assert [(view["status"], view["reason"]) for view in sessions] == [("ended", "the call that opened it did not run")]


def test_a_lost_worker_ends_its_session_and_fails_the_call(apps, tmp_path, lifecycle):
    async def body(client):
        session, _ = await open_session(client)
        client.workers.hosts.pop(session)  # its process is gone
        failed = await result(client, "x", session)
        info = (await client.get(f"/sessions/{session}", headers=A)).json()["data"]
        late = await client.post("/apps/run", json={"app": "memory-app", "input": {"text": "y"}, "session": session},
                                 headers=A)
        return failed, info, late

    failed, info, late = scenario(apps, tmp_path, body)
    assert failed["status"] == TaskStatus.FAILED and "worker was lost" in failed["error"]
    assert info["status"] == "ended" and "worker was lost" in info["reason"]
    assert late.status_code == 410


def test_a_call_that_cannot_be_recorded_does_not_pin_its_session_open(apps, tmp_path, lifecycle):
    async def body(client):
        session, _ = await open_session(client, timeout=1)

        async def broken(ops):
            raise RuntimeError("the task store is down")

        client.store.write = broken
        failed = await client.post("/apps/run", json={"app": "memory-app", "input": {"text": "x"}, "session": session},
                                   headers=A)
        await asyncio.sleep(1.6)
        return failed, (await client.get(f"/sessions/{session}", headers=A)).json()["data"]

    failed, info = scenario(apps, tmp_path, body)
    assert failed.status_code == 503 and failed.json()["type"] == "/errors/unavailable"
    assert info["status"] == "expired"  # the call that never ran did not hold it open


def test_a_session_call_sent_again_with_its_key_opens_or_joins_nothing_again(apps, tmp_path, lifecycle):
    async def body(client):
        def keyed(key, text, session, **extra):
            return client.post("/apps/run", json={"app": "memory-app", "input": {"text": text, **extra},
                                                  "session": session}, headers={**A, "Idempotency-Key": key})

        opened, together = await asyncio.gather(keyed("open", "first", "new"), keyed("open", "first", "new"))
        task = opened.json()["data"]
        session = task["session_id"]
        assert together.json()["data"]["id"] == task["id"] and together.json()["data"]["session_id"] == session
        first = await wait_terminal(client, task["id"], A)
        later = await keyed("open", "first", "new")
        assert later.headers["idempotent-replayed"] == "true" and later.json()["data"]["status"] == TaskStatus.COMPLETED
        second = (await keyed("turn-2", "second", session)).json()["data"]
        again = await keyed("turn-2", "second", session)
        assert again.json()["data"]["id"] == second["id"] and again.headers["idempotent-replayed"] == "true"
        await wait_terminal(client, second["id"], A)
        elsewhere = await keyed("turn-2", "second", "another-session")
        plain = await client.post("/apps/run", json={"app": "memory-app", "input": {"text": "second"}},
                                  headers={**A, "Idempotency-Key": "turn-2"})
        third = await result(client, "third", session)
        sessions = (await client.get("/sessions", headers=A)).json()["data"]
        return first, third, elsewhere, plain, sessions

    first, third, elsewhere, plain, sessions = scenario(apps, tmp_path, body)
    assert first["output"]["history"] == ["first"]
    assert third["output"]["history"] == ["first", "second", "third"]  # each turn once
    assert elsewhere.status_code == plain.status_code == 422 and "(another session)" in plain.json()["detail"]
    assert [(view["status"], view["call_count"]) for view in sessions] == [("active", 3)]
    assert lifecycle.count("setup:" + third["output"]["instance"]) == 1 and len(
        [event for event in lifecycle if event.startswith("setup:")]) == 1  # no second session was opened


def test_keyed_session_calls_arriving_together_at_one_ingress_open_and_join_once(apps, tmp_path, lifecycle, monkeypatch):
    """With a worker that takes a while to start and a registry that answers over the network, as on Ray."""
    start, begin = LocalWorkers.start, SessionRegistry.begin_call

    async def slow_start(self, *args):
        await asyncio.sleep(0.2)
        return await start(self, *args)

    async def remote_begin(self, *args):
        await asyncio.sleep(0.01)
        return await begin(self, *args)

    monkeypatch.setattr(LocalWorkers, "start", slow_start)
    monkeypatch.setattr(SessionRegistry, "begin_call", remote_begin)

    async def body(client):
        def keyed(key, session):
            return client.post("/apps/run", json={"app": "memory-app", "input": {"text": key}, "session": session},
                               headers={**A, "Idempotency-Key": key})

        opened = await asyncio.gather(keyed("open", "new"), keyed("open", "new"))
        task = opened[0].json()["data"]
        await wait_terminal(client, task["id"], A)
        turn = await asyncio.gather(keyed("turn", task["session_id"]), keyed("turn", task["session_id"]))
        done = await wait_terminal(client, turn[0].json()["data"]["id"], A)
        return opened, turn, done, (await client.get("/sessions", headers=A)).json()["data"]

    opened, turn, done, sessions = scenario(apps, tmp_path, body)
    assert len({response.json()["data"]["id"] for response in opened}) == 1
    assert len({response.json()["data"]["id"] for response in turn}) == 1
    assert done["output"]["history"] == ["open", "turn"]
    assert [(view["status"], view["call_count"]) for view in sessions] == [("active", 2)]


def test_a_session_opened_for_a_keyed_call_that_lost_its_race_ends(apps, tmp_path, lifecycle, monkeypatch):
    """Two calls with one key and `session: "new"` both admitted (another ingress created the task
    first, say): the one whose task already exists ends the session it opened."""
    from inferencesh_ray.dispatch import Dispatcher

    async def body(client):
        ensure_new = Dispatcher.ensure_new

        async def let_both_in(self, task_id, owner):
            await asyncio.sleep(0)  # neither sees the other before it is admitted

        monkeypatch.setattr(Dispatcher, "ensure_new", let_both_in)
        both = await asyncio.gather(*[client.post("/apps/run", json={"app": "memory-app", "input": {"text": "t"},
                                                                     "session": "new"},
                                                  headers={**A, "Idempotency-Key": "race"}) for _ in range(2)])
        monkeypatch.setattr(Dispatcher, "ensure_new", ensure_new)
        tasks = [response.json()["data"] for response in both]
        await wait_terminal(client, tasks[0]["id"], A)
        for _ in range(100):
            views = (await client.get("/sessions", headers=A)).json()["data"]
            if sorted(view["status"] for view in views) == ["active", "ended"]:
                return tasks, views
            await asyncio.sleep(0.02)
        raise AssertionError(f"the loser's session was not ended: {views}")

    tasks, views = scenario(apps, tmp_path, body)
    assert tasks[0]["id"] == tasks[1]["id"]
    active = [view["id"] for view in views if view["status"] == "active"]
    assert active == [tasks[0]["session_id"]] == [tasks[1]["session_id"]]


def test_a_call_into_a_known_session_is_admitted_while_its_task_is_created(apps, tmp_path, lifecycle, monkeypatch):
    from inferencesh_ray.sessions import SessionRegistry

    async def body(client):
        session, _ = await open_session(client)
        creating = asyncio.Event()
        write, begin_call = client.store.write, SessionRegistry.begin_call

        async def noted_write(ops):
            creating.set()
            return await write(ops)

        async def begin_call_once_creating(self, *args):
            await asyncio.wait_for(creating.wait(), 5)  # one after the other, this never comes
            return await begin_call(self, *args)

        client.store.write = noted_write
        monkeypatch.setattr(SessionRegistry, "begin_call", begin_call_once_creating)
        return await result(client, "second", session)

    done = scenario(apps, tmp_path, body)
    assert done["status"] == TaskStatus.COMPLETED and done["output"]["history"] == ["first", "second"]


def test_a_refused_call_into_a_known_session_leaves_no_task_open(apps, tmp_path, lifecycle):
    async def body(client):
        session, _ = await open_session(client, timeout=1)
        await asyncio.sleep(1.6)
        refused = []
        for _ in range(2):
            response = await client.post("/apps/run", json={"app": "memory-app", "input": {"text": "x"},
                                                           "session": session}, headers=A)
            refused.append(response.status_code)
        for _ in range(100):  # the first one's task, which nobody was told of, ends
            rows = client.store._db.execute("SELECT status, body FROM tasks").fetchall()
            if all(status >= 10 for status, _ in rows):
                break
            await asyncio.sleep(0.02)
        return refused, [json.loads(body) for _, body in rows]

    refused, tasks = scenario(apps, tmp_path, body)
    assert refused == [410, 410]
    assert [task["status"] for task in tasks] == [TaskStatus.COMPLETED, TaskStatus.FAILED]  # the second made none
    assert "has expired" in tasks[1]["error"]


class _NoWorkers:
    async def start(self, session_id, spec) -> str:
        return f"worker-{session_id}"

    async def release(self, session_id) -> None:
        pass


def test_sessions_ended_longer_ago_than_the_retention_are_forgotten(tmp_path):
    """As old tasks are pruned: `GET /sessions` used to list every session an owner ever had."""

    async def body():
        registry = SessionRegistry(str(tmp_path / "tasks.sqlite3"), _NoWorkers(), retention_s=0.5, reap_every_s=3600)
        old, recent, live = [(await registry.open("o", "app", "latest", 60, None))["id"] for _ in range(3)]
        await registry.end(old, "o")
        await asyncio.sleep(0.6)
        await registry.end(recent, "o")
        assert [s["id"] for s in await registry.list("o")] == [old, recent, live]
        await registry.reap()
        assert [(s["id"], s["status"]) for s in await registry.list("o")] == [(recent, "ended"), (live, "active")]
        assert await registry.get(old, "o") is None

    asyncio.run(body())


def test_a_session_opened_for_a_caller_that_left_expires_when_idle(tmp_path):
    """Its first call never began (the request was cancelled while the worker started):
    it used to stay open forever, holding its worker and a slot of max_sessions."""

    async def body():
        registry = SessionRegistry(str(tmp_path / "tasks.sqlite3"), _NoWorkers(), reap_every_s=3600)
        opened = await registry.open("o", "app", "latest", 1, None)
        assert await registry.reap() == []
        await asyncio.sleep(1.1)
        assert await registry.reap() == [opened["id"]]
        return await registry.get(opened["id"], "o")

    assert asyncio.run(body())["status"] == "expired"


def test_a_caller_that_leaves_as_its_call_is_counted_in_leaves_no_session_busy(apps, tmp_path, monkeypatch):
    """The registry counted the call in and its answer was on its way when the client left
    (Serve cancels the request): the session stayed busy, never idle, and never ended."""
    counted = SessionRegistry.begin_call

    async def slow_answer(self, *args):
        view = await counted(self, *args)
        await asyncio.sleep(0.3)
        return view

    monkeypatch.setattr(SessionRegistry, "begin_call", slow_answer)

    async def body(client):
        post = asyncio.ensure_future(client.post("/apps/run", json={
            "app": "memory-app", "input": {"text": "a"}, "session": "new", "session_timeout": 60}, headers=A))
        await asyncio.sleep(0.2)
        post.cancel()
        await asyncio.gather(post, return_exceptions=True)
        await asyncio.sleep(0.5)
        return (await client.get("/sessions", headers=A)).json()["data"]

    (session,) = scenario(apps, tmp_path, body)
    # Ended at once, not left to its 60 s idle timeout (which a busy session never reaches).
    assert (session["status"], session["reason"]) == ("ended", "the call that opened it did not run")


def test_the_call_counting_a_caller_in_is_made_apart_from_its_request(apps, tmp_path, monkeypatch):
    """On Ray the registry's methods send their actor call when called: made as `spawn`'s argument,
    it went from the request's context, and Serve's cancelling the request cancelled it too."""
    import contextvars

    request = contextvars.ContextVar("request", default=None)
    sent_from: list = []
    counted = SessionRegistry.begin_call

    def begin_call(self, *args):  # as RemoteActor's: the call leaves at once, its answer is awaited later
        sent_from.append(request.get())
        return counted(self, *args)

    monkeypatch.setattr(SessionRegistry, "begin_call", begin_call)

    async def body(client):
        request.set("POST /apps/run")
        await result(client, "a", "new")

    scenario(apps, tmp_path, body)
    assert sent_from == [None]


def test_an_open_cancelled_while_its_worker_starts_leaves_no_session_behind(tmp_path):
    """Serve cancels a request's actor calls with it (recursively) when its client leaves: the
    session stayed live with no worker, never idle, holding a slot of max_sessions until a restart."""
    starting = asyncio.Event()

    class SlowStart(_NoWorkers):
        async def start(self, session_id, spec) -> str:
            starting.set()
            await asyncio.sleep(3600)

    async def body():
        registry = SessionRegistry(str(tmp_path / "tasks.sqlite3"), SlowStart(), limit=1, reap_every_s=3600)
        opening = asyncio.create_task(registry.open("o", "app", "latest", 60, None))
        await starting.wait()
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        registry._workers = _NoWorkers()
        return await registry.list("o"), await registry.open("o", "app", "latest", 60, None)

    listed, reopened = asyncio.run(body())
    assert listed == [] and reopened is not None and reopened["status"] == "active"  # the slot is free


def test_ending_a_session_runs_to_its_end_when_the_caller_leaves(tmp_path):
    """A DELETE whose client left (its actor call cancelled) stopped waiting on the worker's
    release, and the detached worker, never killed, held its resources."""
    released: list[str] = []
    unloading = asyncio.Event()

    class SlowRelease(_NoWorkers):
        async def release(self, session_id) -> None:
            unloading.set()
            await asyncio.sleep(0.2)
            released.append(session_id)

    async def body():
        registry = SessionRegistry(str(tmp_path / "tasks.sqlite3"), SlowRelease(), reap_every_s=3600)
        session = (await registry.open("o", "app", "latest", 60, None))["id"]
        ending = asyncio.create_task(registry.end(session, "o"))
        await unloading.wait()
        ending.cancel()
        await asyncio.gather(ending, return_exceptions=True)
        await asyncio.sleep(0.3)
        return session, (await registry.get(session, "o"))["status"]

    session, status = asyncio.run(body())
    assert status == "ended" and released == [session]


def test_the_reaper_ends_what_was_idle_before_it_waits_on_any_release(tmp_path):
    """A release takes up to 30 s: a session due with others took a call meanwhile and was then
    expired while running it. Now all due sessions end at once, and a late call is refused."""
    released: list[str] = []
    slow = asyncio.Event()

    class SlowWorkers(_NoWorkers):
        async def release(self, session_id) -> None:
            released.append(session_id)
            await slow.wait()

    async def body():
        registry = SessionRegistry(str(tmp_path / "tasks.sqlite3"), SlowWorkers(), reap_every_s=3600)
        first, second = [(await registry.open("o", "app", "latest", 1, None))["id"] for _ in range(2)]
        await asyncio.sleep(1.1)
        reaping = asyncio.create_task(registry.reap())
        await asyncio.sleep(0.05)  # the reaper waits on the releases now
        late_call = await registry.begin_call(second, "o", "app", "task-1")
        slow.set()
        assert sorted(await reaping) == sorted([first, second])
        return late_call["status"], (await registry.get(second, "o"))["status"], sorted(released) == sorted([first, second])

    assert asyncio.run(body()) == ("expired", "expired", True)


def test_end_all_ends_every_live_session_and_releases_its_worker(tmp_path):
    """For a server going away: its Ray's stop would kill the workers with `unload` unrun."""
    released: list[str] = []

    class CountingWorkers(_NoWorkers):
        async def release(self, session_id) -> None:
            released.append(session_id)

    async def body():
        registry = SessionRegistry(str(tmp_path / "tasks.sqlite3"), CountingWorkers(), reap_every_s=3600)
        ended, *live = [(await registry.open(owner, "app", "latest", 60, None))["id"] for owner in "oop"]
        await registry.end(ended, "o")
        released.clear()
        assert await registry.end_all("the server shut down") == 2
        assert await registry.end_all("the server shut down") == 0
        return [await registry.get(session_id, owner) for session_id, owner in zip(live, "op")]

    sessions = asyncio.run(body())
    assert [(s["status"], s["reason"]) for s in sessions] == [("ended", "the server shut down")] * 2
    assert sorted(released) == sorted(s["id"] for s in sessions)


def test_a_worker_not_started_in_time_is_explained_by_the_resources_it_asked_for():
    """It said only `TimeoutError: ` (on a 2-CPU machine an app with Serve's default 1 CPU leaves no room)."""
    from inferencesh_ray.session_worker import not_started

    message = not_started({"num_cpus": 1.0, "num_gpus": 0, "resources": {"head": 1}, "runtime_env": {"pip": ["x"]}})
    assert message == ("not running within 20 s: a session's worker asks for what its app's deployment asks "
                       "({'num_cpus': 1.0, 'resources': {'head': 1}}), and no node may have that free; the server "
                       "can ask less (`infsh-ray serve --num-cpus 0.5`, or the deployment's ray_actor_options) or add nodes")
    assert "(nothing)" in not_started({"num_cpus": 0})


def test_replica_options_are_asked_afresh_but_busy_replicas_give_way_to_the_last_answer():
    """Asked at each opening (a redeploy may have changed them); replicas answer behind their
    tasks, so a session opening under load used to wait for the whole backlog."""
    from inferencesh_ray.session_worker import ReplicaOptions

    answers = [{"num_cpus": 1}, {"num_cpus": 2}, {"num_cpus": 3}]
    asked: list[str] = []
    busy = asyncio.Event()
    busy.set()

    async def ask(app):
        asked.append(app)
        await busy.wait()
        return answers[len(asked) - 1]

    async def body():
        options = ReplicaOptions(ask, wait_s=0.05)
        first = await options.get("app")
        second = await options.get("app")  # replicas idle: the fresh answer
        busy.clear()
        started = asyncio.get_running_loop().time()
        third, fourth = await asyncio.gather(options.get("app"), options.get("app"))  # busy: the last answer
        waited = asyncio.get_running_loop().time() - started
        busy.set()
        await asyncio.sleep(0.01)  # the answer still comes, and is kept
        return first, second, third, fourth, waited, options

    first, second, third, fourth, waited, options = asyncio.run(body())
    assert (first, second, third, fourth) == ({"num_cpus": 1}, {"num_cpus": 2}, {"num_cpus": 2}, {"num_cpus": 2})
    assert waited < 1 and asked == ["app"] * 3  # the two openings under load shared one question
    assert options._known["app"] == {"num_cpus": 3}


def test_a_question_openings_share_is_asked_apart_from_the_first_of_them():
    """It was asked in the first opener's context: that client leaving (Serve cancels its calls)
    failed every opening of that app waiting on the same answer."""
    import contextvars

    from inferencesh_ray.session_worker import ReplicaOptions

    request = contextvars.ContextVar("request", default=None)
    seen: list = []

    async def ask(app):
        seen.append(request.get())
        return {"num_cpus": 1}

    async def body():
        request.set("the first opener's request")
        return await ReplicaOptions(ask).get("app")

    assert asyncio.run(body()) == {"num_cpus": 1} and seen == [None]


def test_closing_waits_for_the_calls_admitted_for_tasks_that_never_ran_to_end(apps, tmp_path, monkeypatch):
    """A call into a known session, its admission in flight when the ingress closes: left busy, its
    session would never idle out."""
    import httpx
    from helpers import make_server

    begin = SessionRegistry.begin_call

    async def main():
        server = make_server(apps / "memory_app.py", tmp_path)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app, client=("127.0.0.1", 5000)),
                                   base_url="http://test")
        first = (await client.post("/apps/run", json={"app": "memory-app", "input": {"text": "a"},
                                                      "session": "new"})).json()["data"]
        await wait_terminal(client, first["id"])

        async def slow_begin(self, *args):
            view = await begin(self, *args)
            await asyncio.sleep(0.3)  # its answer crosses the network
            return view

        monkeypatch.setattr(SessionRegistry, "begin_call", slow_begin)
        call = asyncio.ensure_future(client.post("/apps/run", json={"app": "memory-app", "input": {"text": "b"},
                                                                    "session": first["session_id"]}))
        await asyncio.sleep(0.1)  # its task is created; its admission is in flight
        await server.dispatcher.close()
        await server.sessions.close()
        call.cancel()
        return server.sessions.registry._active[first["session_id"]].busy

    assert asyncio.run(main()) == 0


def test_a_worker_that_cannot_start_is_refused_in_one_line_without_the_servers_paths(tmp_path):
    """Ray's actor errors carry the worker's whole traceback: it reached the client in the 503's detail."""

    class Unschedulable(_NoWorkers):
        async def start(self, session_id, spec) -> str:
            raise RuntimeError("The actor died unexpectedly.\n  File \"/srv/secret/worker.py\", line 9" + "x" * 500)

    async def body():
        registry = SessionRegistry(str(tmp_path / "tasks.sqlite3"), Unschedulable(), reap_every_s=3600)
        return await registry.open("o", "app", "latest", 60, None), await registry.list("o")

    opened, listed = asyncio.run(body())
    assert opened == {"refused": "the session's worker could not start (RuntimeError: The actor died unexpectedly.)"}
    assert listed == []
