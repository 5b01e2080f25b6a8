"""Sessions on a real local Ray, through the official `inferencesh` client: sticky named actors."""

from __future__ import annotations

import time

import httpx
import pytest
import ray
from conftest import APPS
from inferencesh import inference
from inferencesh.models.errors import APIError
from ray import serve

from inferencesh_ray.session_worker import NAMESPACE, worker_name
from inferencesh_ray.status import TaskStatus

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def server(ray_serve, tmp_path_factory):
    data = tmp_path_factory.mktemp("sessions")
    (data / "keys.txt").write_text("key-a\nkey-b\n")
    args = dict(path=str(APPS / "memory_app.py"), data_dir=str(data), api_keys_file=str(data / "keys.txt"))
    url = ray_serve.deploy("sessions", **args)
    yield url, args
    serve.delete("sessions")


def sdk(url, key="key-a"):
    return inference(api_key=key, base_url=url)


def wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_official_session_handle_keeps_state_and_ends(server, ray_serve):
    url, _ = server
    client = sdk(url)
    with client.session("memory-app", input={"text": "first"}) as session:
        second = session.call(input={"text": "second"})
        assert second["output"]["history"] == ["first", "second"] and second["session_id"] == session.session_id
        info = session.info()
        alive = session.keepalive()
        instance = second["output"]["instance"]
    assert _field(info, "status") == "active" and _field(info, "call_count") == 2
    assert _field(alive, "status") == "active"
    ended = client.sessions.get(session.session_id)
    assert _field(ended, "status") == "ended"
    wait_for(lambda: f"unload:{instance}" in ray_serve.lifecycle())
    with pytest.raises(ValueError):
        ray.get_actor(worker_name(session.session_id), namespace=NAMESPACE)  # its resources are freed


def test_idle_expiry_unloads_and_the_next_call_is_refused(server, ray_serve):
    url, _ = server
    first = sdk(url).run({"app": "memory-app", "input": {"text": "a"}, "session": "new", "session_timeout": 1})
    session, instance = first["session_id"], first["output"]["instance"]
    wait_for(lambda: f"unload:{instance}" in ray_serve.lifecycle(), timeout=15)
    with pytest.raises(APIError) as info:
        sdk(url).run({"app": "memory-app", "input": {"text": "b"}, "session": session})
    assert info.value.status_code == 410 and info.value.code == "SESSION_EXPIRED"


def test_sessions_are_private_to_their_key(server):
    url, _ = server
    first = sdk(url).run({"app": "memory-app", "input": {"text": "mine"}, "session": "new"})
    for call in (lambda c: c.sessions.get(first["session_id"]),
                 lambda c: c.run({"app": "memory-app", "input": {"text": "x"}, "session": first["session_id"]})):
        with pytest.raises(APIError) as info:
            call(sdk(url, "key-b"))
        assert info.value.status_code == 404 and info.value.code == "SESSION_NOT_FOUND"
    assert [s["id"] for s in _list(sdk(url, "key-b").sessions.list())] == []
    sdk(url).sessions.end(first["session_id"])


def test_concurrent_calls_run_in_arrival_order(server):
    url, _ = server
    client = sdk(url)
    first = client.run({"app": "memory-app", "input": {"text": "first"}, "session": "new"})
    session = first["session_id"]
    tasks = [client.run({"app": "memory-app", "input": {"text": str(i), "delay": 0.05 * (5 - i)}, "session": session},
                        wait=False) for i in range(5)]
    done = [client.wait_for_completion(task["id"]) for task in tasks]
    assert done[-1]["output"]["history"] == ["first", "0", "1", "2", "3", "4"]
    client.sessions.end(session)


def test_a_killed_session_actor_ends_the_session(server):
    url, _ = server
    client = sdk(url)
    first = client.run({"app": "memory-app", "input": {"text": "first"}, "session": "new"})
    session = first["session_id"]
    ray.kill(ray.get_actor(worker_name(session), namespace=NAMESPACE))
    with pytest.raises(RuntimeError, match="worker was lost"):
        client.run({"app": "memory-app", "input": {"text": "x"}, "session": session})
    assert _field(client.sessions.get(session), "status") == "ended"
    with pytest.raises(APIError) as info:
        client.run({"app": "memory-app", "input": {"text": "y"}, "session": session})
    assert info.value.status_code == 410 and info.value.code == "SESSION_ENDED"


def test_a_session_survives_a_restart_of_the_ingress(server, ray_serve):
    url, args = server
    client = sdk(url)
    first = client.run({"app": "memory-app", "input": {"text": "before"}, "session": "new"})
    serve.delete("sessions")
    url = ray_serve.deploy("sessions", **args)
    after = sdk(url).run({"app": "memory-app", "input": {"text": "after"}, "session": first["session_id"]})
    assert after["output"]["history"] == ["before", "after"]
    assert after["output"]["pid"] == first["output"]["pid"]  # the same worker process
    assert httpx.delete(f"{url}/sessions/{first['session_id']}", headers={"Authorization": "Bearer key-a"}).status_code == 200
    assert TaskStatus.COMPLETED == after["status"]


def _field(session, name):
    return session[name] if isinstance(session, dict) else getattr(session, name)


def _list(sessions):
    return [s if isinstance(s, dict) else s.model_dump() for s in (sessions or [])]


def test_a_redeploy_with_other_settings_reaches_the_registry_it_finds(ray_serve, tmp_path):
    """The registry and the task store are named actors that outlive deploys: a changed
    max_sessions used to be ignored until `ray stop`, the first deploy's arguments kept."""
    args = dict(path=str(APPS / "memory_app.py"), data_dir=str(tmp_path))
    url = ray_serve.deploy("resized", **args)
    opened = sdk(url).run({"app": "memory-app", "input": {"text": "a"}, "session": "new"})
    serve.delete("resized")
    url = ray_serve.deploy("resized", **{**args, "max_sessions": 1})
    try:  # the session still live fills the new limit (one worker is all the test asks of the cluster)
        with pytest.raises(Exception, match="limit of live sessions"):
            sdk(url).run({"app": "memory-app", "input": {"text": "b"}, "session": "new"})
    finally:
        sdk(url).sessions.end(opened["session_id"])
        serve.delete("resized")


def test_a_client_that_leaves_while_its_session_opens_leaves_no_session_behind(ray_serve, tmp_path):
    """Serve cancels a request's actor calls with it when its client leaves: the session being
    opened stayed live with no worker, never idle, filling max_sessions until a restart (then 429s)."""
    url = ray_serve.deploy("leaving", path=str(APPS / "slow_start_app.py"), data_dir=str(tmp_path), max_sessions=1)
    body = {"app": "slow-start-app", "input": {"text": "a"}, "session": "new"}
    marker = ray_serve.events.with_name("slow-start")
    marker.touch()  # the session's worker now takes a minute to start
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/apps/run", json=body, timeout=2)
        marker.unlink()
        time.sleep(1)
        reopened = httpx.post(f"{url}/apps/run", json=body, timeout=60)
        assert reopened.status_code == 200, reopened.text  # the slot the first one took is free again
        session = reopened.json()["data"]["session_id"]
        assert [s["id"] for s in httpx.get(f"{url}/sessions").json()["data"]] == [session]
        httpx.delete(f"{url}/sessions/{session}")
    finally:
        marker.unlink(missing_ok=True)
        serve.delete("leaving")


def test_a_session_ended_by_a_client_that_leaves_still_unloads(ray_serve, tmp_path):
    """Serve cancelled the registry's call with the DELETE, and with it the worker's `unload`
    under way: the worker was killed mid-unload."""
    url = ray_serve.deploy("left-ending", path=str(APPS / "slow_start_app.py"), data_dir=str(tmp_path))
    try:
        opened = httpx.post(f"{url}/apps/run", json={"app": "slow-start-app", "input": {"text": "a"}, "session": "new"},
                            timeout=60).json()["data"]
        done = wait_for(lambda: (task := httpx.get(f"{url}/tasks/{opened['id']}").json()["data"])["output"] and task)
        with pytest.raises(httpx.ReadTimeout):
            httpx.delete(f"{url}/sessions/{opened['session_id']}", timeout=0.3)  # gone while it unloads (1 s)
        wait_for(lambda: f"slow-unload-done:{done['output']['text']}" in ray_serve.lifecycle())
        wait_for(lambda: not _alive(worker_name(opened["session_id"])))
    finally:
        serve.delete("left-ending")


def _alive(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def test_before_our_ray_stops_every_live_session_ends_and_its_app_unloads(server, ray_serve):
    """`infsh-ray serve` and `make serve` call this before stopping the Ray they started."""
    from inferencesh_ray.session_worker import end_all_sessions

    url, _ = server
    opened = sdk(url).run({"app": "memory-app", "input": {"text": "a"}, "session": "new"})
    assert end_all_sessions() >= 1
    assert f"unload:{opened['output']['instance']}" in ray_serve.lifecycle()
    ended = sdk(url).sessions.get(opened["session_id"])
    assert (_field(ended, "status"), _field(ended, "reason")) == ("ended", "the server shut down")
    with pytest.raises(ValueError):
        ray.get_actor(worker_name(opened["session_id"]), namespace=NAMESPACE)


def test_a_session_opened_after_a_redeploy_gets_the_deployments_new_resources(ray_serve, tmp_path):
    """The ingress read a deployment's actor options once and kept them, though a config
    redeploy that changes only them restarts that deployment's replicas, not the ingress."""
    import threading

    import yaml

    from inferencesh_ray.serve_command import _deploy_config, _read_config, _wait_routed, _wait_running

    def deploy(num_cpus: float) -> str:
        config = {"applications": [{
            "name": "resources", "route_prefix": "/resources", "import_path": "inferencesh_ray:build",
            "args": {"path": str(APPS / "memory_app.py"), "data_dir": str(tmp_path)},
            "deployments": [{"name": "memory-app", "ray_actor_options": {"num_cpus": num_cpus}}],
        }]}
        path = tmp_path / "resources.yaml"
        path.write_text(yaml.safe_dump(config))
        _deploy_config(_read_config(path), "127.0.0.1", ray_serve.port)
        assert _wait_running(["resources"], threading.Event(), timeout_s=120)
        assert _wait_routed(f"http://127.0.0.1:{ray_serve.port}", ["resources"], threading.Event())
        return f"http://127.0.0.1:{ray_serve.port}/resources"

    try:
        for cpus in (0.5, 0.25):
            client = sdk(deploy(cpus))
            # Until the redeploy has replaced the replicas, tasks still reach the old ones.
            wait_for(lambda: client.run({"app": "memory-app", "input": {"text": "x"}})["output"]["cpus"] == cpus, 120)
            opened = client.run({"app": "memory-app", "input": {"text": "a"}, "session": "new"})
            client.sessions.end(opened["session_id"])
            assert opened["output"]["cpus"] == cpus
    finally:
        serve.delete("resources")
