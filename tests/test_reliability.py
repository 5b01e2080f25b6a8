"""Reliability on a real local Ray: load, backpressure, faults, and what must never listen.

Bounded in count and time; the heavier variants are commands in benchmarks/.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import ray
import yaml
from conftest import APPS, ROOT
from inferencesh import inference
from ray import serve

from inferencesh_ray.serve_command import _deploy_config, _read_config, _wait_routed, _wait_running
from inferencesh_ray.status import TaskStatus

pytestmark = pytest.mark.ray


def wait_for(predicate, timeout=60, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def deploy_config(ray_serve, tmp_path, name, deployment_options, **args):
    """Deploy the counting app with plain Serve options for its deployment, as a config file would."""
    import threading

    config = {"applications": [{
        "name": name, "route_prefix": f"/{name}", "import_path": "inferencesh_ray:build",
        "args": {"path": str(APPS / "counting.py"), "data_dir": str(tmp_path), **args},
        "deployments": [{"name": "counting", **deployment_options}],
    }]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    _deploy_config(_read_config(path), "127.0.0.1", ray_serve.port)
    assert _wait_running([name], threading.Event(), timeout_s=120)
    assert _wait_routed(f"http://127.0.0.1:{ray_serve.port}", [name], threading.Event())
    return f"http://127.0.0.1:{ray_serve.port}/{name}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_load_5000_tasks_from_64_clients_nothing_lost_duplicated_or_stuck(ray_serve, tmp_path):
    """benchmarks/load.py's driver, bounded; that file runs heavier variants."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from load import run_load

    url = ray_serve.deploy("load", path=str(APPS / "counting.py"), num_replicas=2, data_dir=str(tmp_path))
    report = asyncio.run(run_load(url, total=5000, clients=64))
    serve.delete("load")
    assert len(report.expected) == len(report.tasks) == 5000  # every id returned is retrievable, none twice
    assert not report.wrong, report.wrong[:5]  # all COMPLETED, each with its own input's output
    print("\nload: " + report.summary())


def test_saturated_replicas_queue_tasks_and_the_ingress_stays_responsive(ray_serve, tmp_path):
    url = deploy_config(ray_serve, tmp_path, "saturated", {"num_replicas": 1, "max_ongoing_requests": 2})
    with httpx.Client(timeout=30) as client:
        tasks = [client.post(f"{url}/apps/run", json={"app": "counting:blocking", "input": {"text": str(i), "times": 2}})
                 .json()["data"] for i in range(30)]
        assert all(task["status"] == TaskStatus.QUEUED for task in tasks)
        probe = tasks[-1]["id"]
        timings, seen = [], set()
        for _ in range(20):  # warm the path (connection, proxy routes); the load is the same
            client.get(f"{url}/tasks/{probe}")
        for _ in range(100):
            started = time.perf_counter()
            seen.add(client.get(f"{url}/tasks/{probe}").json()["data"]["status"])
            timings.append(time.perf_counter() - started)
        done = [wait_for(lambda t=task: _terminal(client, url, t["id"]), timeout=120) for task in tasks]
    serve.delete("saturated")
    assert TaskStatus.QUEUED in seen  # waiting its turn, not dropped or refused
    p99 = sorted(timings)[98]
    assert p99 < 0.1, f"GET p99 {p99 * 1000:.0f} ms while saturated (median {statistics.median(timings) * 1000:.0f} ms)"
    assert {task["status"] for task in done} == {TaskStatus.COMPLETED}


def test_a_killed_replica_fails_its_tasks_with_a_reason_and_is_replaced(ray_serve, tmp_path):
    url = ray_serve.deploy("faults", path=str(APPS / "counting.py"), data_dir=str(tmp_path))
    sdk = inference(api_key="k", base_url=url)
    tasks = [sdk.run({"app": "counting:slow", "input": {"text": f"doomed{i}"}}, wait=False) for i in range(3)]
    started = wait_for(lambda: len(lines := [l for l in _events(ray_serve) if "slow:start:doomed" in l]) == 3 and lines)
    pid = int(started[0].split()[0])  # all three run on that replica now
    os.kill(pid, signal.SIGKILL)
    with httpx.Client(timeout=30) as client:
        ended = [wait_for(lambda t=task: _terminal(client, url, t["id"]), timeout=60) for task in tasks]
    for task in ended:
        assert task["status"] == TaskStatus.FAILED
        assert task["error"].startswith("the replica running this task failed (") and "submit it again" in task["error"]
        assert str(pid) not in task["error"] and "127.0.0.1" not in task["error"]  # no cluster internals
    after = sdk.run({"app": "counting", "input": {"text": "after"}})  # the replacement serves
    assert after["output"]["text"] == "after"
    serve.delete("faults")


def test_a_restarted_task_store_keeps_tasks_and_streams_go_on(ray_serve, tmp_path):
    url = ray_serve.deploy("store-restart", path=str(APPS / "counting.py"), data_dir=str(tmp_path))
    sdk = inference(api_key="k", base_url=url)
    done = sdk.run({"app": "counting", "input": {"text": "kept"}})
    running = sdk.run({"app": "counting:progress", "input": {"text": "p", "times": 10}}, wait=False)
    time.sleep(0.5)
    store = _store_actor(str(tmp_path))
    ray.kill(store, no_restart=False)
    finished = sdk.wait_for_completion(running["id"])  # the stream reconnects to the restarted store
    assert finished["output"]["text"] == "p9"
    kept = httpx.get(f"{url}/tasks/{done['id']}").json()["data"]
    assert kept["status"] == TaskStatus.COMPLETED and kept["output"]["text"] == "kept"
    serve.delete("store-restart")


def test_nothing_of_ray_listens_beyond_loopback_and_there_is_no_dashboard(ray_serve, tmp_path):
    url = ray_serve.deploy("listening", path=str(APPS / "counting.py"), data_dir=str(tmp_path))
    sdk = inference(api_key="k", base_url=url)
    first = sdk.run({"app": "counting", "input": {"text": "x"}, "session": "new"})  # a session worker listens too
    assert first["output"]["text"] == "x"
    node = ray._private.worker.global_worker.node
    assert not node.address_info.get("webui_url")
    ray_pids = _our_ray_pids(node)
    assert len(ray_pids) > 5  # the node's own processes and its workers (replicas, actors)
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
    exposed = [line for line in listening
               if not line.split()[3].startswith(("127.", "[::1]", "[::ffff:127.")) and set(re.findall(r"pid=(\d+)", line)) & ray_pids]
    assert not exposed, exposed
    with pytest.raises(httpx.ConnectError):
        httpx.get("http://127.0.0.1:8265/api/jobs/", timeout=2)  # no job submission API
    sdk.sessions.end(first["session_id"])  # its worker holds a CPU of the session's Ray
    serve.delete("listening")


def _terminal(client, url, task_id):
    task = client.get(f"{url}/tasks/{task_id}").json()["data"]
    return task if TaskStatus(task["status"]).is_terminal else None


def _events(ray_serve):
    return ray_serve.events.read_text().splitlines() if ray_serve.events.exists() else []


def _store_actor(data_dir: str):
    import hashlib
    from pathlib import Path

    database = str(Path(data_dir, "tasks.sqlite3").resolve())
    name = "tasks-" + hashlib.sha1(database.encode()).hexdigest()[:12]
    return ray.get_actor(name, namespace="inferencesh_ray")


def _our_ray_pids(node) -> set[str]:
    """The processes of this test session's Ray: the node's own, and every worker its raylet started."""
    own = {str(info.process.pid) for infos in node.all_processes.values() for info in infos}
    raylet = f"RAY_RAYLET_PID={node.all_processes['raylet'][0].process.pid}".encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and raylet in (proc / "environ").read_bytes().split(b"\0"):
                own.add(proc.name)
        except OSError:
            continue
    return own
