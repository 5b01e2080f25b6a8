"""Deploying, restarting and stopping: the builder, `serve run`, `infsh-ray serve`, and the task store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from conftest import APPS, ROOT
from inferencesh import inference
from ray import serve

from inferencesh_ray.serve_command import failure_of
from inferencesh_ray.status import TaskStatus

pytestmark = pytest.mark.ray


def wait_for(predicate, timeout=60, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def test_completed_tasks_survive_an_ingress_restart_and_interrupted_tasks_fail(ray_serve, tmp_path):
    args = dict(path=str(APPS / "counting.py"), data_dir=str(tmp_path), task_lease_s=2)
    url = ray_serve.deploy("restart", **args)
    sdk = inference(api_key="k", base_url=url)
    done = sdk.run({"app": "counting", "input": {"text": "kept"}})
    running = sdk.run({"app": "counting:slow", "input": {"text": "orphan"}}, wait=False)
    wait_for(lambda: httpx.get(f"{url}/tasks/{running['id']}").json()["data"]["status"] == TaskStatus.RUNNING)
    serve.delete("restart")  # the ingress and its dispatcher go away mid-task
    url = ray_serve.deploy("restart", **args)
    kept = httpx.get(f"{url}/tasks/{done['id']}").json()["data"]
    assert kept["status"] == TaskStatus.COMPLETED and kept["output"]["text"] == "kept"
    orphan = wait_for(
        lambda: (t := httpx.get(f"{url}/tasks/{running['id']}").json()["data"])["status"] >= 10 and t, timeout=30
    )
    assert orphan["status"] == TaskStatus.FAILED and "submit it again" in orphan["error"]
    serve.delete("restart")


def test_one_ingress_serves_several_apps_with_keys(ray_serve, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nkey-one\nkey-two  # the second\n")
    url = ray_serve.deploy(
        "multi",
        apps=[{"path": str(APPS / "counting.py"), "name": "echo"}, {"path": str(APPS / "schema_app.py"), "name": "files"}],
        data_dir=str(tmp_path),
        api_keys_file=str(keys),
    )
    listing = httpx.get(f"{url}/apps", headers={"Authorization": "Bearer key-two"}).json()["data"]
    assert [app["name"] for app in listing] == ["echo", "files"]
    assert httpx.get(f"{url}/apps").status_code == 401
    one, two = inference(api_key="key-one", base_url=url), inference(api_key="key-two", base_url=url)
    task = one.run({"app": "echo", "input": {"text": "mine"}}, wait=False)
    assert one.wait_for_completion(task["id"])["output"]["text"] == "mine"
    from inferencesh.models.errors import APIError

    with pytest.raises(APIError) as info:
        two.get_task(task["id"])
    assert info.value.status_code == 404
    serve.delete("multi")


def test_the_configs_queue_limit_reaches_the_ingress_and_the_official_client_gets_429(ray_serve, tmp_path):
    url = ray_serve.deploy("bounded", path=str(APPS / "counting.py"), data_dir=str(tmp_path), max_queued_tasks=1)
    sdk = inference(api_key="k", base_url=url)
    held = sdk.run({"app": "counting:slow", "input": {"text": "holds-the-queue"}}, wait=False)
    from inferencesh.models.errors import APIError

    with pytest.raises(APIError) as info:
        sdk.run({"app": "counting", "input": {"text": "one-too-many"}}, wait=False)
    assert info.value.status_code == 429 and "max_queued_tasks" in str(info.value)
    sdk.cancel(held["id"])
    wait_for(lambda: httpx.get(f"{url}/tasks/{held['id']}").json()["data"]["status"] == TaskStatus.CANCELLED)
    assert sdk.run({"app": "counting", "input": {"text": "room-again"}})["output"]["text"] == "room-again"
    serve.delete("bounded")


def test_serve_run_of_the_example_config(ray_serve):
    env = {**os.environ, "RAY_ADDRESS": ray_serve.address}
    deployed = subprocess.run(
        [sys.executable, "-m", "ray.serve.scripts", "run", "--non-blocking", "deployments/image_model.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    try:
        url = f"http://127.0.0.1:{ray_serve.port}"
        wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, timeout=120)
        result = inference(api_key="k", base_url=url).run(
            {"app": "image-model", "function": "generate", "input": {"width": 16, "height": 8}}
        )
        assert (result["output"]["width"], result["output"]["height"]) == (16, 8)
    finally:
        serve.delete("image-model")


def test_infsh_ray_serve_blocks_until_sigterm_then_unloads(ray_serve, tmp_path):
    unloads_before = ray_serve.lifecycle().count("unload:a")
    process = subprocess.Popen(
        [sys.executable, "-m", "inferencesh_ray.cli", "serve", str(APPS / "counting.py"), "--name", "cli-app",
         "--address", ray_serve.address, "--data-dir", str(tmp_path), "--num-cpus", "0.5"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = []
        wait_for(lambda: lines.append(process.stderr.readline()) or "serving cli-app" in lines[-1], timeout=120)
        url = f"http://127.0.0.1:{ray_serve.port}"
        # The joined Serve keeps its own port, and the command says where it really serves.
        assert f"Serve is already running on this Ray with its proxy on 127.0.0.1:{ray_serve.port}" in "".join(lines)
        assert f"serving cli-app at {url} (API docs" in lines[-1]
        assert inference(api_key="k", base_url=url).run({"app": "cli-app", "input": {"text": "x"}})["output"]["text"] == "x"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    wait_for(lambda: ray_serve.lifecycle().count("unload:a") > unloads_before, timeout=30)


def test_an_ingress_will_not_start_against_a_store_left_running_from_before_an_upgrade(ray_serve, tmp_path):
    """The store is a detached actor that outlives deploys, and an upgrade: every run used to fail
    with a 500 against one whose `create` took other arguments."""
    import hashlib

    import ray

    from inferencesh_ray.builder import build
    from inferencesh_ray.ingress import NAMESPACE

    database = str((tmp_path / "tasks.sqlite3").resolve())
    name = "tasks-" + hashlib.sha1(database.encode()).hexdigest()[:12]

    @ray.remote
    class StoreFromBefore:  # its `configure` said nothing of its code
        def __init__(self, *args, **kwargs) -> None:
            pass

        def configure(self, **settings) -> None:
            return None

    old = StoreFromBefore.options(name=name, namespace=NAMESPACE, lifetime="detached", num_cpus=0).remote()
    ray.get(old.configure.remote())
    try:
        with pytest.raises(RuntimeError, match="Deploying application stale failed"):
            serve.run(build({"path": str(APPS / "counting.py"), "data_dir": str(tmp_path)}), name="stale",
                      route_prefix="/stale")
        message = failure_of("stale")
    finally:
        serve.delete("stale")
        ray.kill(old)
    assert "runs another inferencesh_ray's code, from before an upgrade" in message
    assert "ray stop" in message and f"ray.get_actor({name!r}, namespace={NAMESPACE!r})" in message


def test_serve_refuses_a_public_address_without_keys(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "inferencesh_ray.cli", "serve", str(APPS / "counting.py"), "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "INFERENCESH_RAY_API_KEYS"},
    )
    assert result.returncode == 1
    assert "refusing to listen on 0.0.0.0 with no API keys" in result.stderr


def test_serve_of_a_config_checks_its_listen_doors_for_keys(tmp_path):
    config = tmp_path / "public.yaml"
    config.write_text(
        "http_options: {host: 127.0.0.1, port: 8123}\n"
        "applications:\n"
        "  - {name: public, route_prefix: /, import_path: inferencesh_ray:build,\n"
        f"     args: {{path: {APPS / 'counting.py'}, listen: '0.0.0.0:8124'}}}}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "INFERENCESH_RAY_API_KEYS"}
    result = subprocess.run([sys.executable, "-m", "inferencesh_ray.cli", "serve", str(config)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert "refusing to listen on 0.0.0.0 with no API keys" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["sigterm", "sigint", "ctrl-c"])
def test_serve_run_on_a_private_loopback_ray_stops_cleanly(tmp_path, stop):
    """`make serve`'s way: `serve run CONFIG` on a Ray of its own (whatever RAY_ADDRESS says), gone
    (after unload) on SIGTERM, on a SIGINT sent to it alone, and on Ctrl-C (a SIGINT to its whole
    process group, from a terminal)."""
    from conftest import free_port

    port = free_port()
    config = tmp_path / "counting.yaml"
    config.write_text(
        f"http_options: {{host: 127.0.0.1, port: {port}}}\n"
        "applications:\n"
        "  - name: private\n"
        "    route_prefix: /\n"
        "    import_path: inferencesh_ray:build\n"
        f"    args: {{path: {APPS / 'counting.py'}, data_dir: {tmp_path}}}\n"
        # room for a session's worker on a 2-CPU machine
        "    deployments: [{name: counting, ray_actor_options: {num_cpus: 0.1}}, {name: ingress, ray_actor_options: {num_cpus: 0.1}}]\n"
    )
    events = tmp_path / "events.log"
    # A RAY_ADDRESS in the environment (here one nothing listens on) must not be joined: it used to be.
    env = os.environ | {"INFSH_TEST_EVENTS": str(events), "RAY_ADDRESS": f"127.0.0.1:{free_port()}"}
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "inferencesh_ray.local_ray", sys.executable, "-m", "ray.serve.scripts", "run", str(config)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(url), timeout=120)
        client = inference(api_key="k", base_url=url)
        assert client.run({"app": "counting", "input": {"text": "p"}})["output"]["text"] == "p"
        client.run({"app": "counting", "input": {"text": "s"}, "session": "new"})  # left open
        if stop == "ctrl-c":
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM if stop == "sigterm" else signal.SIGINT)
        assert process.wait(timeout=90) == 0
    finally:
        process.kill()
    assert "ignoring RAY_ADDRESS=127.0.0.1:" in log.read_text()
    assert "starting Ray on 127.0.0.1 (no dashboard)" in log.read_text()
    # serve run shut down cleanly, so the replica unloaded; the session's worker too, before its Ray stopped
    assert events.read_text().count("unload:a") == 2
    assert "ending live sessions, if any (their apps unload), then stopping Ray" in log.read_text()
    assert "ended 1 live session(s)" in log.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)  # that Ray, and its proxy, are gone


@pytest.mark.slow
def test_a_second_sigterm_stops_our_ray_without_waiting_for_apps_to_unload(tmp_path):
    """Stopping waits for live sessions' apps to unload; a second signal (Ctrl-C again) cuts that short."""
    from conftest import free_port

    port = free_port()
    config = tmp_path / "slow.yaml"
    config.write_text(
        f"http_options: {{host: 127.0.0.1, port: {port}}}\n"
        "applications:\n"
        "  - {name: slow, route_prefix: /, import_path: inferencesh_ray:build,\n"
        f"     args: {{path: {APPS / 'slow_unload.py'}, data_dir: {tmp_path}}},\n"
        "     deployments: [{name: slow-unload, ray_actor_options: {num_cpus: 0.1}},\n"
        "                   {name: ingress, ray_actor_options: {num_cpus: 0.1}}]}\n"
    )
    events, log = tmp_path / "events.log", tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "inferencesh_ray.local_ray", sys.executable, "-m", "ray.serve.scripts", "run", str(config)],
        cwd=ROOT, env=os.environ | {"INFSH_TEST_EVENTS": str(events)}, stdout=subprocess.DEVNULL,
        stderr=log.open("w"), start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(url), timeout=120)
        inference(api_key="k", base_url=url).run({"app": "slow-unload", "input": {"text": "s"}, "setup": {"unload_s": 600},
                                     "session": "new"})
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: events.exists() and "unload:start:600.0" in events.read_text(), timeout=60)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert time.monotonic() - started < 15, time.monotonic() - started  # not the session release wait (30 s)
    finally:
        process.kill()
    assert "stopping Ray now: apps still unloading are stopped with it" in log.read_text()
    assert "unload:end" not in events.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
