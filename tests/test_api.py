"""The HTTP API without Ray: an in-process task store and app host behind the real FastAPI app."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from helpers import make_server, run_api, wait_terminal

from inferencesh_ray.auth import Auth
from inferencesh_ray.status import TaskStatus


def scenario(apps, tmp_path, body, keys=()):
    """Run `body(client)` against a fresh server of the counting app in one event loop."""
    return run_api(apps / "counting.py", tmp_path, body, keys, resend_idle_s=0.25)


def test_run_get_and_envelope(apps, tmp_path):
    async def body(client):
        created = await client.post("/apps/run", json={"app": "counting", "input": {"text": "hi", "times": 2}})
        assert created.status_code == 200
        envelope = created.json()
        assert envelope["success"] is True and envelope["messages"] == []
        task = envelope["data"]
        assert task["status"] == TaskStatus.QUEUED and task["function"] == "run"
        assert task["setup"] == {"mode": "a", "fail": False}  # defaults filled
        done = await wait_terminal(client, task["id"])
        assert done["status"] == TaskStatus.COMPLETED
        assert done["output"] == {"text": "hihi", "mode": "a"}
        assert [log["content"] for log in done["logs"]] == ["echoing hi"]
        statuses = [event["status"] for event in done["events"]]
        assert statuses == sorted(statuses) and statuses[-1] == TaskStatus.COMPLETED

    scenario(apps, tmp_path, body)


def test_function_precedence_and_path_form(apps, tmp_path):
    async def body(client):
        by_suffix = (await client.post("/apps/run", json={"app": "counting:shout", "input": {"text": "a"}})).json()
        field_wins = await client.post("/apps/run", json={"app": "counting:shout", "function": "run", "input": {"text": "a"}})
        by_path = await client.post("/v1/apps/counting@latest/run", json={"function": "shout", "input": {"text": "b"}})
        double_slash = await client.post("http://test//apps/run", json={"app": "ns/counting", "input": {"text": "c"}})
        assert by_suffix["data"]["function"] == "shout"
        assert field_wins.json()["data"]["function"] == "run"
        assert by_path.json()["data"]["function"] == "shout"
        assert double_slash.status_code == 200
        assert (await wait_terminal(client, by_path.json()["data"]["id"]))["output"]["text"] == "B"

    scenario(apps, tmp_path, body)


@pytest.mark.parametrize(
    "request_body, status, code, phrases",
    [
        ({"app": "nope", "input": {}}, 404, "not_found", ["unknown app 'nope'", "counting"]),
        ({"app": "counting@2.0", "input": {}}, 404, "not_found", ["no version '2.0'", "latest"]),
        ({"app": "counting", "function": "zap", "input": {}}, 404, "not_found", ["no function 'zap'", "shout"]),
        ({"app": "counting", "input": {"times": "x"}}, 422, "validation_error", ["input.text: field required", "input.times"]),
        ({"app": "counting", "input": {"text": "x"}, "setup": {"mode": "z"}}, 422, "validation_error", ["setup.mode"]),
        ({"app": "counting", "input": [1, 2]}, 422, "validation_error", ["input"]),
        ({"input": {}}, 400, "invalid_request", ["name the app"]),
        ({"app": "counting", "input": {"text": "x"}, "session_timeout": 30}, 400, "invalid_request",
         ["session_timeout is only valid with session"]),
        ({"app": "counting", "input": {"text": "x"}, "session": "new", "session_timeout": 0}, 400, "invalid_request",
         ["session_timeout must be 1-3600 seconds, got 0"]),
        ({"app": "counting", "input": {"text": "x"}, "session": "nope"}, 404, "SESSION_NOT_FOUND", ["no session 'nope'"]),
    ],
)
def test_bad_requests_get_problem_json_and_create_nothing(apps, tmp_path, request_body, status, code, phrases):
    async def body(client):
        response = await client.post("/apps/run", json=request_body)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["type"] == f"/errors/{code}" and problem["status"] == status
        for phrase in phrases:
            assert phrase in problem["detail"]

    scenario(apps, tmp_path, body)


def test_a_setup_config_for_an_app_whose_setup_takes_none_is_refused_up_front(apps, tmp_path):
    """It used to create the task (uploading its inputs first, through a client) and fail it on the replica."""
    async def body(client):
        request = {"app": "file-app:where", "input": {"image": "data:,x"}}
        refused = await client.post("/apps/run", json={**request, "setup": {"precision": "fp16"}})
        assert refused.status_code == 422
        assert refused.json()["errors"] == [{"loc": "setup", "message": "this app's setup takes no config"}]
        assert (await client.post("/apps/run", json={**request, "setup": {}})).status_code == 200

    run_api(apps / "file_app.py", tmp_path, body)


def test_malformed_json_is_400(apps, tmp_path):
    async def body(client):
        response = await client.post("/apps/run", content=b"{nope", headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["detail"] == "the request body is not valid JSON"
        missing = await client.get("/tasks/does-not-exist")
        assert missing.status_code == 404 and missing.json()["type"] == "/errors/not_found"
        route = await client.get("/no/such/route")
        assert route.status_code == 404 and route.headers["content-type"] == "application/problem+json"
        method = await client.put("/apps/run")
        assert method.status_code == 405 and method.json()["type"] == "/errors/method_not_allowed"  # the SDK's code

    scenario(apps, tmp_path, body)


def test_stream_is_ndjson_snapshot_changes_and_terminal(apps, tmp_path):
    async def body(client):
        task = (await client.post("/apps/run", json={"app": "counting:progress", "input": {"text": "p", "times": 3}})).json()
        async with client.stream("GET", f"/tasks/{task['data']['id']}/stream") as response:
            assert response.headers["content-type"] == "application/x-ndjson"
            lines = [json.loads(line) async for line in response.aiter_lines() if line]
        return lines

    lines = scenario(apps, tmp_path, body)
    statuses = [line["status"] for line in lines]
    assert statuses == sorted(statuses), statuses
    assert statuses[-1] == TaskStatus.COMPLETED and lines[-1]["output"] == {"text": "p2", "mode": "a"}
    outputs = [line["output"]["text"] for line in lines if line["output"]]
    assert "p0" in outputs or "p1" in outputs  # snapshots stream before the end
    assert all(isinstance(line["status"], int) for line in lines)


def test_a_quiet_stream_sends_the_task_again(apps, tmp_path):
    async def body(client):
        run = {"app": "counting:blocking", "input": {"text": "q", "times": 7}}  # 1.4 s without a change
        task = (await client.post("/apps/run", json=run)).json()["data"]
        async with client.stream("GET", f"/tasks/{task['id']}/stream") as response:
            return [json.loads(line) async for line in response.aiter_lines() if line]

    tasks = scenario(apps, tmp_path, body)
    # Re-sent whole every 0.25 s of quiet: proxies keep the connection, and the official client's
    # 30 s idle rule never fires and its `timeout` is checked (it is only as a task arrives).
    assert len([t for t in tasks if t["status"] == TaskStatus.RUNNING]) >= 4, tasks
    assert tasks[-1]["status"] == TaskStatus.COMPLETED


def test_cancel_running_and_finished(apps, tmp_path):
    async def body(client):
        task = (await client.post("/apps/run", json={"app": "counting:slow", "input": {"text": "c"}})).json()["data"]
        for _ in range(100):
            if (await client.get(f"/tasks/{task['id']}")).json()["data"]["status"] == TaskStatus.RUNNING:
                break
            await asyncio.sleep(0.02)
        cancelled = await client.post(f"/tasks/{task['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["data"]["status"] == TaskStatus.CANCELLING
        done = await wait_terminal(client, task["id"])
        assert done["status"] == TaskStatus.CANCELLED
        again = await client.post(f"/tasks/{task['id']}/cancel")
        assert again.status_code == 200 and again.json()["data"]["status"] == TaskStatus.CANCELLED
        after = (await client.post("/apps/run", json={"app": "counting", "input": {"text": "next"}})).json()["data"]
        assert (await wait_terminal(client, after["id"]))["status"] == TaskStatus.COMPLETED

    scenario(apps, tmp_path, body)


def test_an_app_holding_its_limit_of_unfinished_tasks_refuses_more_with_429(apps, tmp_path):
    async def body(client):
        slow = [(await client.post("/apps/run", json={"app": "counting:slow", "input": {"text": str(i)}})).json()["data"]
                for i in range(2)]
        refused = await client.post("/apps/run", json={"app": "counting:shout", "input": {"text": "x"}})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        problem = refused.json()
        assert problem["type"].endswith("/rate_limited") and "max_queued_tasks" in problem["detail"]
        in_session = await client.post("/apps/run", json={"app": "counting:shout", "input": {"text": "s"},
                                                         "session": "new"})
        assert in_session.status_code == 429 and in_session.headers["retry-after"] == "1"  # sessions count too
        assert (await client.get("/sessions")).json()["data"] == []  # refused before one was opened
        await client.post(f"/tasks/{slow[0]['id']}/cancel")
        await wait_terminal(client, slow[0]["id"])
        taken = await client.post("/apps/run", json={"app": "counting:shout", "input": {"text": "y"}})
        assert taken.status_code == 200
        assert (await wait_terminal(client, taken.json()["data"]["id"]))["output"]["text"] == "Y"
        await client.post(f"/tasks/{slow[1]['id']}/cancel")

    run_api(apps / "counting.py", tmp_path, body, max_queued_tasks=2)


def test_failures_carry_the_apps_message(apps, tmp_path):
    async def body(client):
        boom = (await client.post("/apps/run", json={"app": "counting:boom", "input": {"text": "b"}})).json()["data"]
        setup = (await client.post("/apps/run", json={"app": "counting", "input": {"text": "x"}, "setup": {"fail": True}})).json()["data"]
        return await wait_terminal(client, boom["id"]), await wait_terminal(client, setup["id"])

    boom, setup = scenario(apps, tmp_path, body)
    assert boom["status"] == TaskStatus.FAILED and boom["error"] == "RuntimeError: boom: b"
    assert setup["status"] == TaskStatus.FAILED and setup["error"] == "setup failed: ValueError: setup was told to fail"


def test_keys_and_tenancy(apps, tmp_path):
    async def body(client):
        alice, bob = {"Authorization": "Bearer alice-key"}, {"Authorization": "Bearer bob-key"}
        none = await client.post("/apps/run", json={"app": "counting", "input": {"text": "x"}})
        assert none.status_code == 401 and none.json()["type"] == "/errors/unauthorized"
        wrong = await client.get("/apps", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        task = (await client.post("/apps/run", json={"app": "counting", "input": {"text": "x"}}, headers=alice)).json()["data"]
        assert (await client.get(f"/tasks/{task['id']}", headers=alice)).status_code == 200
        assert (await client.get(f"/tasks/{task['id']}", headers=bob)).status_code == 404
        assert (await client.post(f"/tasks/{task['id']}/cancel", headers=bob)).status_code == 404
        await wait_terminal(client, task["id"], headers=alice)

    scenario(apps, tmp_path, body, keys=["alice-key", "bob-key"])


def test_listing_schema_health_docs(apps, tmp_path):
    async def body(client):
        listing = (await client.get("/apps")).json()["data"]
        assert listing == [{"name": "counting", "versions": ["latest"], "default_function": "run",
                            "functions": ["run", "shout", "count", "boom", "nothing", "slow", "progress", "wrong_type", "blocking"]}]
        schema = (await client.get("/apps/counting/schema")).json()["data"]
        assert schema["functions"]["run"]["input_schema"]["required"] == ["text"]
        assert (await client.get("/apps/nope/schema")).status_code == 404
        # Named as a run names it: `@version` was taken for part of the name, "unknown app 'counting@latest'".
        assert (await client.get("/apps/counting@latest/schema")).json()["data"] == schema
        other = await client.get("/apps/counting@v2/schema")
        assert other.status_code == 404 and other.json()["detail"] == "app 'counting' has no version 'v2'; versions: latest"
        # The official SDK's sessions send `function: "run"` whatever `app` says: the 404 tells why.
        conflict = await client.post("/apps/run", json={"app": "counting:count", "function": "nope", "input": {"text": "x"}})
        assert "(the `function` field wins over `:count` in `app`)" in conflict.json()["detail"]
        assert (await client.get("/health")).json() == {"status": "ok"}
        assert (await client.get("/docs")).status_code == 200
        assert "/apps/run" in (await client.get("/openapi.json")).json()["paths"]

    scenario(apps, tmp_path, body)


def test_remote_client_without_keys_is_refused():
    auth = Auth([])
    assert auth.owner(None, "127.0.0.1") == "local"
    with pytest.raises(Exception, match="only answers requests from its own machine"):
        auth.owner(None, "10.1.2.3")


def test_a_task_that_cannot_be_recorded_is_refused_and_its_call_cancelled(apps, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(apps))
    import lifecycle

    async def body(client):
        write = client.store.write

        async def slow_write(ops):
            await asyncio.sleep(0.3)  # the call has started meanwhile
            raise RuntimeError("the task store is down")

        client.store.write = slow_write
        refused = await client.post("/apps/run", json={"app": "counting:slow", "input": {"text": "z"}})
        client.store.write = write
        after = await client.post("/apps/run", json={"app": "counting", "input": {"text": "y"}})
        return refused, await wait_terminal(client, after.json()["data"]["id"])

    lifecycle.EVENTS.clear()
    refused, after = scenario(apps, tmp_path, body)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["type"] == "/errors/unavailable" and "send it again in a moment" in refused.json()["detail"]
    assert "slow:start:z" in lifecycle.EVENTS and "slow:cancelled:z" in lifecycle.EVENTS
    assert after["status"] == TaskStatus.COMPLETED


def test_a_run_sent_again_with_its_idempotency_key_gets_the_first_task_and_runs_once(apps, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(apps))
    import lifecycle

    async def body(client):
        slow = {"app": "counting:slow", "input": {"text": "k"}}
        first, concurrent = await asyncio.gather(
            client.post("/apps/run", json=slow, headers={"Idempotency-Key": "key-1"}),
            client.post("/apps/run", json=slow, headers={"Idempotency-Key": "key-1"}))
        later = await client.post("/v1/apps/counting/run", json={"function": "slow", "input": {"text": "k"}},
                                  headers={"Idempotency-Key": "key-1"})
        task_id = first.json()["data"]["id"]
        assert concurrent.json()["data"]["id"] == later.json()["data"]["id"] == task_id
        assert "idempotent-replayed" not in first.headers
        assert concurrent.headers["idempotent-replayed"] == later.headers["idempotent-replayed"] == "true"
        await client.post(f"/tasks/{task_id}/cancel")
        await wait_terminal(client, task_id)
        finished = await client.post("/apps/run", json=slow, headers={"Idempotency-Key": "key-1"})
        assert finished.json()["data"]["status"] == TaskStatus.CANCELLED  # the task as it is now, not a new one
        other = await client.post("/apps/run", json=slow, headers={"Idempotency-Key": "key-2"})
        assert other.json()["data"]["id"] != task_id
        await client.post(f"/tasks/{other.json()['data']['id']}/cancel")
        return await wait_terminal(client, other.json()["data"]["id"])

    lifecycle.EVENTS.clear()
    scenario(apps, tmp_path, body)
    assert lifecycle.EVENTS.count("slow:start:k") == 2  # key-1's task once, key-2's once


def test_an_idempotency_key_names_one_request_of_one_caller(apps, tmp_path):
    async def body(client):
        alice, bob = {"Authorization": "Bearer alice-key"}, {"Authorization": "Bearer bob-key"}
        run = {"app": "counting", "input": {"text": "x"}}
        mine = (await client.post("/apps/run", json=run, headers={**alice, "Idempotency-Key": "k"})).json()["data"]
        theirs = (await client.post("/apps/run", json=run, headers={**bob, "Idempotency-Key": "k"})).json()["data"]
        assert mine["id"] != theirs["id"]
        reused = await client.post("/apps/run", json={"app": "counting", "input": {"text": "y"}, "setup": {"mode": "b"}},
                                   headers={**alice, "Idempotency-Key": "k"})
        assert reused.status_code == 422, reused.text
        problem = reused.json()
        assert problem["type"] == "/errors/idempotency_key_reused" and problem["task_id"] == mine["id"]
        assert "(another input and setup)" in problem["detail"]
        in_session = await client.post("/apps/run", json={**run, "session": "new"}, headers={**alice, "Idempotency-Key": "k"})
        assert in_session.status_code == 422 and "(another session)" in in_session.json()["detail"]
        for bad in ("x" * 256, "tab\there"):
            refused = await client.post("/apps/run", json=run, headers={**alice, "Idempotency-Key": bad})
            assert refused.status_code == 400 and "1-255 printable ASCII" in refused.json()["detail"]
        two = await client.post("/apps/run", json=run, headers=[*alice.items(), ("Idempotency-Key", "k"),
                                                                ("Idempotency-Key", "k2")])
        assert two.status_code == 400 and two.json()["detail"] == "send one Idempotency-Key header, not 2"  # not the first
        empty = await client.post("/apps/run", json={**run, "session": ""}, headers=alice)
        assert empty.status_code == 400 and 'session must be "new" or a session id' in empty.json()["detail"]
        assert (await client.get("/sessions", headers=alice)).json()["data"] == []  # the replay opened none
        for task, who in ((mine, alice), (theirs, bob)):
            await wait_terminal(client, task["id"], headers=who)

    scenario(apps, tmp_path, body, keys=["alice-key", "bob-key"])


def test_a_keyed_run_whose_record_failed_can_be_sent_again_with_its_key(apps, tmp_path):
    async def body(client):
        write = client.store.write

        async def down(ops):
            raise RuntimeError("the task store is down")

        client.store.write = down
        refused = await client.post("/apps/run", json={"app": "counting", "input": {"text": "r"}},
                                    headers={"Idempotency-Key": "again"})
        client.store.write = write
        taken = await client.post("/apps/run", json={"app": "counting", "input": {"text": "r"}},
                                  headers={"Idempotency-Key": "again"})
        return refused, taken, await wait_terminal(client, taken.json()["data"]["id"])

    refused, taken, done = scenario(apps, tmp_path, body)
    assert refused.status_code == 503 and "with the same key: it runs at most once" in refused.json()["detail"]
    assert taken.status_code == 200 and "idempotent-replayed" not in taken.headers
    assert done["status"] == TaskStatus.COMPLETED and done["output"]["text"] == "r"


def lose_the_first_create_answer(store, delay_s=0.0):
    """The store commits the first create, then (`delay_s` later) its answer is lost: on Ray, an
    error reported for a call the store had carried out."""
    write, lost = store.write, []

    async def committed_then_lost(ops):
        results = await write(ops)
        if not lost and any(op == "create" for op, _ in ops):
            lost.append(ops)
            await asyncio.sleep(delay_s)
            raise RuntimeError("the task store's answer was lost")
        return results

    store.write = committed_then_lost


def test_a_task_recorded_though_its_create_answer_was_lost_ends_failed_not_queued(apps, tmp_path):
    """It used to stay QUEUED for as long as its ingress lived, and a replay handed that task back
    (or ran another request's call under it)."""
    async def body(client):
        lose_the_first_create_answer(client.store)
        run = {"app": "counting", "input": {"text": "x"}}
        refused = await client.post("/apps/run", json=run, headers={"Idempotency-Key": "k"})
        replayed = await client.post("/apps/run", json=run, headers={"Idempotency-Key": "k"})
        other = await client.post("/apps/run", json={**run, "input": {"text": "y"}}, headers={"Idempotency-Key": "k"})
        return refused, replayed, other, await wait_terminal(client, replayed.json()["data"]["id"])

    refused, replayed, other, task = scenario(apps, tmp_path, body)
    assert refused.status_code == 503 and replayed.headers["idempotent-replayed"] == "true"
    assert task["status"] == TaskStatus.FAILED and "could not confirm this task was recorded" in task["error"]
    assert other.status_code == 422 and "(another input)" in other.json()["detail"]


def test_keyed_runs_at_two_ingresses_sharing_one_store_run_once(apps, tmp_path, monkeypatch):
    import lifecycle

    import inferencesh_ray.store as store_module

    shared = store_module.TaskStore(str(tmp_path / "shared.sqlite3"))
    monkeypatch.setattr(store_module, "TaskStore", lambda *args, **kwargs: shared)
    monkeypatch.syspath_prepend(str(apps))

    async def main():
        servers = [make_server(apps / "counting.py", tmp_path / name) for name in ("one", "two")]
        one, two = [httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app, client=("127.0.0.1", 5000)),
                                      base_url="http://test") for server in servers]
        try:
            slow = {"app": "counting:slow", "input": {"text": "twice"}}
            both = await asyncio.gather(*[client.post("/apps/run", json=slow, headers={"Idempotency-Key": "k"})
                                          for client in (one, two)])
            ids = {response.json()["data"]["id"] for response in both}
            await one.post(f"/tasks/{ids.pop() if len(ids) == 1 else None}/cancel")
            lose_the_first_create_answer(shared)
            run = {"app": "counting", "input": {"text": "lost"}}
            refused = await one.post("/apps/run", json=run, headers={"Idempotency-Key": "lost"})
            replayed = await two.post("/apps/run", json=run, headers={"Idempotency-Key": "lost"})
            return both, ids, refused, await wait_terminal(two, replayed.json()["data"]["id"])
        finally:
            for server in servers:
                await server.dispatcher.close()

    lifecycle.EVENTS.clear()
    both, ids, refused, lost = asyncio.run(main())
    assert [response.status_code for response in both] == [200, 200] and not ids  # one task, both answered with it
    assert lifecycle.EVENTS.count("slow:start:twice") == 1
    assert refused.status_code == 503 and lost["status"] == TaskStatus.FAILED  # not QUEUED while ingress one lives


def test_a_run_sent_again_while_its_app_is_full_gets_its_task_not_429(apps, tmp_path):
    async def body(client):
        slow = {"app": "counting:slow", "input": {"text": "s"}}
        first = await client.post("/apps/run", json=slow, headers={"Idempotency-Key": "k"})
        again = await client.post("/apps/run", json=slow, headers={"Idempotency-Key": "k"})
        new = await client.post("/apps/run", json=slow, headers={"Idempotency-Key": "other"})
        await client.post(f"/tasks/{first.json()['data']['id']}/cancel")
        return first, again, new

    first, again, new = run_api(apps / "counting.py", tmp_path, body, max_queued_tasks=1)
    assert again.status_code == 200 and again.json()["data"]["id"] == first.json()["data"]["id"]
    assert new.status_code == 429


def test_an_unkeyed_task_whose_create_answer_was_lost_says_its_result_was_dropped(apps, tmp_path, monkeypatch):
    """Its call starts alongside its record, so it may have run: it must not say it did not."""
    monkeypatch.syspath_prepend(str(apps))
    import lifecycle

    async def body(client):
        lose_the_first_create_answer(client.store, delay_s=0.5)
        refused = await client.post("/apps/run", json={"app": "counting:blocking", "input": {"text": "u"}})
        task_id = client.store._db.execute("SELECT id FROM tasks").fetchone()[0]
        for _ in range(100):  # withdrawn in the background, after the answer
            task = await client.store.get(task_id, "local")
            if TaskStatus(task["status"]).is_terminal:
                break
            await asyncio.sleep(0.02)
        return refused, task

    lifecycle.EVENTS.clear()
    refused, task = scenario(apps, tmp_path, body)
    assert refused.status_code == 503 and "blocking:end:u" in lifecycle.EVENTS
    assert task["status"] == TaskStatus.FAILED and "its call was stopped and any result dropped" in task["error"]


def test_a_keyed_replay_is_validated_as_an_unkeyed_request_is(apps, tmp_path):
    async def body(client):
        run = {"app": "counting", "input": {"text": "x"}}
        first = await client.post("/apps/run", json=run, headers={"Idempotency-Key": "k"})
        replay = await client.post("/apps/run", json={**run, "session_timeout": 60}, headers={"Idempotency-Key": "k"})
        await wait_terminal(client, first.json()["data"]["id"])
        return replay

    replay = scenario(apps, tmp_path, body)
    assert replay.status_code == 400 and "session_timeout is only valid with session" in replay.json()["detail"]


def test_a_read_the_task_store_cannot_answer_is_a_503_not_a_500(apps, tmp_path):
    async def body(client):
        async def down(*args):
            raise RuntimeError("the task store's actor is unreachable")

        client.store.get = down
        return await client.get("/tasks/not-in-memory")

    response = scenario(apps, tmp_path, body)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["type"] == "/errors/unavailable"


def test_a_version_is_named_by_at_version_or_by_version_id(apps, tmp_path):
    """wire-protocol.md lists `version_id` among the run request's fields; it was ignored."""

    async def body(client):
        answers = []
        for extra in ({"app": "counting@latest"}, {"app_id": "counting", "version_id": "latest"},
                      {"app_id": "counting", "version_id": "v2"}, {"app": "counting@v3", "version_id": "latest"}):
            answers.append(await client.post("/apps/run", json={**extra, "input": {"text": "x"}}))
        return [(a.status_code, a.json().get("detail")) for a in answers]

    answers = scenario(apps, tmp_path, body)
    assert [status for status, _ in answers] == [200, 200, 404, 404]
    assert answers[2][1] == "app 'counting' has no version 'v2'; versions: latest"
    assert answers[3][1] == "app 'counting' has no version 'v3'; versions: latest"  # @version wins
