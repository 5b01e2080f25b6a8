"""A task's files and deleting tasks, as the official SDK's `tasks.files`, `tasks.delete_files`
and `tasks.delete` call them (the real API on 127.0.0.1, no Ray)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from client_support import serving
from conftest import APPS
from helpers import make_server, run_api, wait_terminal
from inferencesh import UploadFileOptions, inference
from inferencesh.models.errors import APIError

from inferencesh_ray.status import TaskStatus

KEYS = ("key-a", "key-b")


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with serving(make_server(APPS / "file_app.py", tmp_path_factory.mktemp("task-files"), keys=KEYS).app) as base:
        yield base


def test_a_tasks_files_are_listed_by_role_and_deleted_with_or_without_the_task(url):
    alice, bob = inference(api_key="key-a", base_url=url), inference(api_key="key-b", base_url=url)
    uploaded = alice.files.upload(b"\x89PNG alice", UploadFileOptions(filename="in.png", content_type="image/png"))
    done = alice.run({"app": "file-app:reverse", "input": {"image": uploaded["uri"]}})
    output = done["output"]["image"]

    listed = alice.tasks.files(done["id"]).data
    assert [(f["role"], f["id"], f["filename"]) for f in listed] == [
        ("input", uploaded["id"], "in.png"), ("output", output["uri"].split("/")[-2], output["filename"])]
    assert set(listed[0]) == {"id", "created_at", "role", "uri", "filename", "content_type", "size"}
    assert httpx.get(listed[1]["uri"]).content == b"\x89PNG alice"[::-1]  # a fresh link that downloads
    assert [f["role"] for f in alice.tasks.files(done["id"], role="output").data] == ["output"]

    # Bob's task reads Alice's output by the link she shared: listed by that link, never deleted by him.
    seen = bob.run({"app": "file-app:inspect", "input": {"image": output["uri"]}})
    (shared,) = bob.tasks.files(seen["id"]).data
    assert shared["uri"] == output["uri"] and shared["role"] == "input"
    assert bob.tasks.delete_files(seen["id"]).data == {
        "deleted": [], "skipped": [{"id": shared["id"], "reason": "another key's file: only its owner may delete it"}]}

    assert alice.tasks.delete_files(done["id"], role="output").data == {"deleted": [shared["id"]], "skipped": []}
    assert httpx.get(output["uri"]).status_code == 404 and alice.tasks.files(done["id"], role="output").data == []
    assert alice.get_task(done["id"]).data["status"] == TaskStatus.COMPLETED  # the task is kept

    alice.tasks.delete(done["id"], files=True)
    with pytest.raises(APIError) as gone:
        alice.get_task(done["id"])
    assert gone.value.status_code == 404
    assert httpx.get(uploaded["uri"]).status_code == 404  # its input went with it


def test_only_a_finished_task_is_deleted_and_a_role_is_input_or_output(apps, tmp_path):
    async def body(client):
        slow = (await client.post("/apps/run", json={"app": "counting:slow", "input": {"text": "s"}})).json()["data"]
        while (await client.get(f"/tasks/{slow['id']}")).json()["data"]["status"] != TaskStatus.RUNNING:
            await asyncio.sleep(0.01)
        running = [await client.delete(f"/tasks/{slow['id']}"), await client.delete(f"/tasks/{slow['id']}/files")]
        await client.post(f"/tasks/{slow['id']}/cancel")
        while not TaskStatus((await client.get(f"/tasks/{slow['id']}")).json()["data"]["status"]).is_terminal:
            await asyncio.sleep(0.01)
        bad_role = await client.get(f"/tasks/{slow['id']}/files", params={"role": "both"})
        deleted = await client.delete(f"/tasks/{slow['id']}")
        return running, bad_role, deleted, await client.get(f"/tasks/{slow['id']}"), await client.delete(f"/tasks/{slow['id']}")

    running, bad_role, deleted, read, again = run_api(apps / "counting.py", tmp_path, body)
    for answer in running:
        assert answer.status_code == 409 and answer.json()["type"] == "/errors/invalid_transition"
        assert "has not finished" in answer.json()["detail"] and "cancel it first" in answer.json()["detail"]
    assert bad_role.status_code == 400 and "role must be `input` or `output`, not 'both'" in bad_role.json()["detail"]
    assert deleted.status_code == 200 and deleted.json()["data"] == {"id": read.url.path.split("/")[-1]}
    assert read.status_code == 404 and again.status_code == 404  # gone from the ingress's memory too


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_our_client_lists_and_deletes_a_tasks_files_and_the_task(url, mode):
    from inferencesh_ray import async_inference
    from inferencesh_ray import inference as our_inference
    from inferencesh_ray.client import APIError as OurAPIError

    async def scenario(client):
        async def call(result):
            return await result if mode == "async" else result

        done = await call(client.run({"app": "file-app:reverse", "input": {"image": "data:image/png;base64,iVBO"}}))
        outputs = (await call(client.tasks.files(done["id"], role="output"))).data
        inputs = (await call(client.tasks.files(done["id"], role="input"))).data  # the client uploaded the data: URI
        cleared = (await call(client.tasks.delete_files(done["id"]))).data
        await call(client.tasks.delete(done["id"], files=True))
        with pytest.raises(OurAPIError) as gone:
            await call(client.tasks.get(done["id"]))
        assert gone.value.status_code == 404
        return outputs, inputs, cleared

    if mode == "sync":
        outputs, inputs, cleared = asyncio.run(scenario(our_inference(api_key="key-a", base_url=url)))
    else:
        outputs, inputs, cleared = asyncio.run(scenario(async_inference(api_key="key-a", base_url=url)))
    assert [f["role"] for f in outputs] == ["output"] and [f["filename"] for f in inputs] == ["file.png"]
    assert sorted(cleared["deleted"]) == sorted([outputs[0]["id"], inputs[0]["id"]]) and cleared["skipped"] == []


def test_deletes_of_one_tasks_files_sent_together_each_answer(apps, tmp_path):
    """The ones that lost the race raised FileNotFoundError: a 500, which a client sends again."""
    from test_files_api import A

    async def body(client):
        task = await _reversed_upload(client)
        answers = await asyncio.gather(*(client.delete(f"/tasks/{task['id']}/files", headers=A) for _ in range(4)))
        return [(answer.status_code, answer.json()["data"]["deleted"]) for answer in answers]

    answers = run_api(apps / "file_app.py", tmp_path, body, keys=["key-a"])
    assert all(status == 200 for status, _ in answers), answers
    assert sorted(file_id for _, deleted in answers for file_id in deleted) == sorted(set(
        file_id for _, deleted in answers for file_id in deleted)) and sum(len(d) for _, d in answers) == 2


def test_only_file_fields_count_and_another_keys_file_only_by_a_link_it_shared(url):
    """Every string of a task was taken for a file link: a prompt quoting one of your file URLs
    deleted that file, and a bare URL of another key's file listed its name, type and size."""
    alice, bob = inference(api_key="key-a", base_url=url), inference(api_key="key-b", base_url=url)
    secret = alice.files.upload(b"alice only", UploadFileOptions(filename="secret.txt", content_type="text/plain"))
    bare = secret["uri"].split("?")[0]
    mine = bob.files.upload(b"\x89PNG bob", UploadFileOptions(filename="bob.png", content_type="image/png"))
    done = bob.run({"app": "file-app:inspect", "input": {"image": mine["uri"], "label": f"see {bare} and {secret['uri']}"}})
    assert [f["filename"] for f in bob.tasks.files(done["id"]).data] == ["bob.png"]
    quoting = alice.run({"app": "file-app:inspect", "input": {"image": mine["uri"], "label": secret["uri"]}})
    assert [f["filename"] for f in alice.tasks.files(quoting["id"]).data] == ["bob.png"]  # by bob's signed link
    assert alice.tasks.delete_files(quoting["id"]).data["deleted"] == []
    assert httpx.get(secret["uri"]).content == b"alice only"  # quoted in a text field, not deleted


def test_the_files_of_a_task_whose_function_is_no_longer_served_are_still_found(apps, tmp_path):
    """With no schema to say which fields hold files, it found none: deleting the task with its
    files deleted the task and left the files, with nothing left to find them by."""
    from test_files_api import A

    async def first(client):
        return (await _reversed_upload(client))["id"]

    task_id = run_api(apps / "file_app.py", tmp_path, first, keys=["key-a"])

    async def after_a_redeploy(client):  # the same task store and files, another app served
        listed = (await client.get(f"/tasks/{task_id}/files", headers=A)).json()["data"]
        deleted = (await client.delete(f"/tasks/{task_id}", params={"files": "true"}, headers=A)).json()["data"]
        return listed, deleted

    listed, deleted = run_api(apps / "memory_app.py", tmp_path, after_a_redeploy, keys=["key-a"])
    assert sorted(f["role"] for f in listed) == ["input", "output"]
    assert sorted(deleted["files"]["deleted"]) == sorted(f["id"] for f in listed)


async def _reversed_upload(client) -> dict:
    """A finished task of `file-app:reverse` on a file just uploaded (with key A)."""
    from test_files_api import A, upload

    file, _ = await upload(client)
    task = (await client.post("/apps/run", json={"app": "file-app:reverse", "input": {"image": file["uri"]}},
                              headers=A)).json()["data"]
    return await wait_terminal(client, task["id"], headers=A)
