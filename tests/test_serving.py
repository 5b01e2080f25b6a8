"""Serving on a real local Ray, through the official `inferencesh` client and raw HTTP."""

from __future__ import annotations

import time

import httpx
import pytest
from conftest import ROOT, free_port
from inferencesh import TaskStatus as SdkStatus
from inferencesh import inference

from inferencesh_ray.status import TaskStatus

pytestmark = pytest.mark.ray


LISTEN = f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def counting(ray_serve, apps_dir=ROOT / "tests" / "apps", tmp_path_factory=None):
    """The counting app through Serve's proxy; its ingress also listens itself on LISTEN."""
    data = ray_serve.events.parent / "counting-data"
    url = ray_serve.deploy(
        "counting", path=str(apps_dir / "counting.py"), num_replicas=2, data_dir=str(data), task_lease_s=3,
        listen=LISTEN,
    )
    return url


def client(url: str):
    return inference(api_key="any-local-key", base_url=url)


def wait_status(url, task_id, predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = httpx.get(f"{url}/tasks/{task_id}").json()["data"]
        if predicate(task):
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} never reached the expected state: {task}")


def test_official_client_run_waits_for_the_result(counting):
    result = client(counting).run({"app": "counting", "input": {"text": "hi", "times": 3}})
    assert result["status"] == SdkStatus.COMPLETED
    assert result["output"] == {"text": "hihihi", "mode": "a"}


def test_official_client_no_wait_get_and_wait_for_completion(counting):
    sdk = client(counting)
    task = sdk.run({"app": "counting:progress", "input": {"text": "w", "times": 3}}, wait=False)
    assert set(task) >= {"id", "status", "created_at", "input"}
    fetched = sdk.get_task(task["id"])
    assert fetched.data["id"] == task["id"]  # 0.36 returns a Response here
    done = sdk.wait_for_completion(task["id"])
    assert done["status"] == SdkStatus.COMPLETED and done["output"]["text"] == "w2"


def test_official_client_stream_sees_logs_and_snapshots_while_running(counting):
    updates = list(client(counting).run({"app": "counting:progress", "input": {"text": "s", "times": 4}}, stream=True))
    statuses = [update["status"] for update in updates]
    assert statuses == sorted(statuses) and statuses[-1] == SdkStatus.COMPLETED
    running = [u for u in updates if u["status"] == SdkStatus.RUNNING]
    assert running, "no update arrived while the task ran"
    assert any(u["output"] for u in running)  # a snapshot before the end
    assert any(u["logs"] for u in running)  # log lines before the end
    assert updates[-1]["output"] == {"text": "s3", "mode": "a"}


def test_what_a_function_prints_on_a_replica_is_in_its_task_logs(counting):
    # Serve's throughput mode, which we start Ray with, points `print` on replicas at its own logger.
    done = client(counting).run({"app": "counting:shout", "input": {"text": "hey"}})
    assert done["status"] == SdkStatus.COMPLETED
    assert "shouting hey" in [log["content"] for log in done["logs"]]


def test_official_client_cancel_of_a_running_task(counting, ray_serve):
    sdk = client(counting)
    task = sdk.run({"app": "counting:slow", "input": {"text": "cancel-me"}}, wait=False)
    wait_status(counting, task["id"], lambda t: t["status"] == TaskStatus.RUNNING)
    sdk.cancel(task["id"])
    done = wait_status(counting, task["id"], lambda t: TaskStatus(t["status"]).is_terminal)
    assert done["status"] == TaskStatus.CANCELLED
    deadline = time.monotonic() + 10
    while "slow:cancelled:cancel-me" not in ray_serve.lifecycle() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "slow:cancelled:cancel-me" in ray_serve.lifecycle()  # the coroutine itself was cancelled
    assert sdk.run({"app": "counting", "input": {"text": "after"}})["output"]["text"] == "after"


def test_inputs_and_outputs_over_4_mib_cross_between_ingress_and_replica(counting):
    """Serve's gRPC between deployments refuses messages over 4 MiB unless told otherwise."""
    text = "no file, just text " * ((5 << 20) // 19)
    # Raw HTTP: the official sync client takes ~40 s to split a 20 MB stream line.
    task = httpx.post(f"{counting}/apps/run", json={"app": "counting", "input": {"text": text, "times": 2}}, timeout=60)
    done = wait_status(counting, task.json()["data"]["id"], lambda t: TaskStatus(t["status"]).is_terminal)
    assert done["status"] == TaskStatus.COMPLETED, done["error"]
    assert done["output"]["text"] == text * 2


def test_failures_reach_the_official_client(counting):
    with pytest.raises(RuntimeError, match="RuntimeError: boom: x"):
        client(counting).run({"app": "counting:boom", "input": {"text": "x"}})
    with pytest.raises(RuntimeError, match="setup failed: ValueError: setup was told to fail"):
        client(counting).run({"app": "counting", "input": {"text": "x"}, "setup": {"fail": True}})
    assert client(counting).run({"app": "counting", "input": {"text": "ok"}})["output"]["text"] == "ok"


def test_a_failed_task_logs_where_the_app_raised(counting):
    task = httpx.post(f"{counting}/apps/run", json={"app": "counting:boom", "input": {"text": "y"}}, timeout=60)
    done = wait_status(counting, task.json()["data"]["id"], lambda t: TaskStatus(t["status"]).is_terminal)
    assert done["status"] == TaskStatus.FAILED and done["error"] == "RuntimeError: boom: y"
    lines = [log["content"] for log in done["logs"]]
    assert "Traceback (app frames):" in lines and any("counting.py" in line and "in boom" in line for line in lines)


def test_validation_errors_through_the_official_client(counting):
    from inferencesh.models.errors import APIError

    with pytest.raises(APIError) as info:
        client(counting).run({"app": "counting", "input": {"times": 99}})
    assert info.value.status_code == 422 and info.value.code == "validation_error"
    assert "input.text: field required" in str(info.value)
    with pytest.raises(APIError) as info:
        client(counting).run({"app": "nope", "input": {}})
    assert info.value.status_code == 404 and "counting" in str(info.value)


def test_raw_http_errors_and_endpoints(counting):
    bad = httpx.post(f"{counting}/apps/run", content=b"{x", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
    assert httpx.post(f"{counting}/apps/run", json={"app": "counting", "function": "zz", "input": {}}).status_code == 404
    assert httpx.get(f"{counting}/tasks/nope").status_code == 404
    assert httpx.get(f"{counting}/health").json() == {"status": "ok"}
    assert httpx.get(f"{counting}/apps").json()["data"][0]["name"] == "counting"
    assert "run" in httpx.get(f"{counting}/apps/counting/schema").json()["data"]["functions"]
    assert httpx.get(f"{counting}/docs").status_code == 200
    with httpx.stream("GET", f"{counting}/tasks/nope/stream") as response:
        assert response.status_code == 404


def test_warm_routing_sets_up_each_config_about_once(counting, ray_serve):
    before = len([e for e in ray_serve.lifecycle() if e.startswith("setup:")])
    sdk = client(counting)
    tasks = [
        sdk.run({"app": "counting", "input": {"text": str(i)}, "setup": {"mode": "ab"[i % 2]}}, wait=False)
        for i in range(100)
    ]
    for task in tasks:
        done = wait_status(counting, task["id"], lambda t: TaskStatus(t["status"]).is_terminal)
        assert done["status"] == TaskStatus.COMPLETED, done
        assert done["output"]["mode"] == done["setup"]["mode"]
    setups = len([e for e in ray_serve.lifecycle() if e.startswith("setup:")]) - before
    # 2 replicas, 2 configs: each replica settles on one config; a few switches at the start are fine.
    assert setups <= 6, ray_serve.lifecycle()


def test_the_api_served_by_the_ingress_itself_with_listen(counting):
    direct = f"http://{LISTEN}"
    assert httpx.get(f"{direct}/health").json() == {"status": "ok"}
    result = client(direct).run({"app": "counting", "input": {"text": "hi", "times": 2}})
    assert result["status"] == SdkStatus.COMPLETED and result["output"]["text"] == "hihi"
    # One ingress, two doors: a task made through one is read through the other.
    made = client(counting).run({"app": "counting", "input": {"text": "x"}}, wait=False)
    assert wait_status(direct, made["id"], lambda t: TaskStatus(t["status"]).is_terminal)["output"]["text"] == "x"
    assert httpx.post(f"{direct}/apps/run", content=b"{x", headers={"content-type": "application/json"}).status_code == 400

