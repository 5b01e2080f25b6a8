"""Auth and tenancy on every endpoint (in-process, no Ray): no key, another key, and where keys never go."""

from __future__ import annotations

import logging
import re

from conftest import APPS
from helpers import run_api, wait_terminal

SECRET = "sk-very-secret-key-0123456789"
KEYS = (SECRET, "key-b")
OWNER = {"Authorization": f"Bearer {SECRET}"}
OTHER = {"Authorization": "Bearer key-b"}
# Open by design: liveness, the API description, and signed file URLs (the signature is the credential).
PUBLIC = {("GET", "/health"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/docs/oauth2-redirect"),
          ("GET", "/redoc"), ("GET", "/files/{file_id}/{filename}"), ("PUT", "/files/{file_id}/upload")}


def scenario(tmp_path, body):
    return run_api(APPS / "file_app.py", tmp_path, body, KEYS)


def test_every_endpoint_needs_a_key(tmp_path):
    async def body(client):
        spec = (await client.get("/openapi.json")).json()
        answers = {}
        for path, methods in spec["paths"].items():
            for method in methods:
                concrete = re.sub(r"\{[^}]+\}", "0" * 32, path)
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
                    response = await client.request(method.upper(), concrete, headers=headers, json={})
                    answers[(method.upper(), path, str(headers))] = response.status_code
        return answers

    answers = scenario(tmp_path, body)
    guarded = {key: status for key, status in answers.items() if (key[0], key[1]) not in PUBLIC}
    assert len({(m, p) for m, p, _ in guarded}) >= 12, guarded  # every route of the API was tried
    assert set(guarded.values()) == {401}, {key: status for key, status in guarded.items() if status != 401}
    signed = {key: status for key, status in answers.items() if (key[0], key[1]) in PUBLIC and "files" in key[1]}
    assert set(signed.values()) <= {403, 404}  # no valid signature: refused without saying whether it exists


def test_another_keys_task_file_and_session_are_404(tmp_path):
    async def body(client):
        file = (await client.post("/files", json={"files": [{"filename": "a.txt", "size": 2}]}, headers=OWNER)).json()
        file = file["data"][0]
        await client.put(file["upload_url"], content=b"hi")
        run = {"app": "file-app", "function": "inspect", "input": {"image": file["uri"]}}
        task = (await client.post("/apps/run", json=run, headers=OWNER)).json()["data"]
        await wait_terminal(client, task["id"], OWNER)
        run["session"] = "new"
        session = (await client.post("/apps/run", json=run, headers=OWNER)).json()["data"]["session_id"]
        tries = [
            ("GET", f"/tasks/{task['id']}"), ("GET", f"/tasks/{task['id']}/stream"), ("POST", f"/tasks/{task['id']}/cancel"),
            ("GET", f"/files/{file['id']}"), ("GET", f"/files/{file['id']}/a.txt"),
            ("GET", f"/sessions/{session}"), ("POST", f"/sessions/{session}/keepalive"), ("DELETE", f"/sessions/{session}"),
        ]
        answers = [(await client.request(method, path, headers=OTHER)).status_code for method, path in tries]
        reuse = await client.post("/apps/run", json={**run, "session": session}, headers=OTHER)
        unsigned = await client.post("/apps/run", json={**run, "input": {"image": file["uri"].split("?")[0]},
                                                         "session": None}, headers=OTHER)
        return answers, reuse, unsigned

    answers, reuse, unsigned = scenario(tmp_path, body)
    assert answers == [404] * len(answers)
    assert reuse.status_code == 404
    assert unsigned.status_code == 422 and "no such file" in unsigned.text


def test_api_keys_never_reach_task_records_or_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)

    async def body(client):
        run = {"app": "file-app", "function": "inspect", "input": {"image": "data:,x"}}
        task = (await client.post("/apps/run", json=run, headers=OWNER)).json()["data"]
        done = await wait_terminal(client, task["id"], OWNER)
        await client.post("/apps/run", json={"app": "nope"}, headers=OWNER)
        await client.get("/tasks/none", headers={"Authorization": f"Bearer {SECRET}x"})
        return done

    done = scenario(tmp_path, body)
    assert SECRET not in str(done)
    database = b"".join(path.read_bytes() for path in tmp_path.glob("tasks.sqlite3*"))
    assert len(database) > 0 and SECRET.encode() not in database
    assert SECRET not in caplog.text
