"""Small helpers shared by tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from inferencesh_ray.events import TERMINAL_EVENTS
from inferencesh_ray.host import AppHost, Call
from inferencesh_ray.server_files import FilesConfig, ServerFiles


async def events_of(host: AppHost, call: Call) -> list:
    events = [event async for event in host.run(call)]
    assert isinstance(events[-1], TERMINAL_EVENTS), events
    return events


def host_backend(host: AppHost):
    """A dispatcher backend that runs calls on an in-process host (the Serve replica's job on Ray)."""

    async def run(call: Call, setup_key: str):
        async for event in host.run(call):
            yield event

    return run


def local_files(root, **options) -> ServerFiles:
    """A server's file policy over a local directory, with a fixed signing key."""
    return ServerFiles(FilesConfig(root=Path(root).resolve().as_uri(), signing_key=b"test-key", **options))


class LocalWorkers:
    """Session workers as in-process app hosts: what the Ray actors do, without Ray."""

    def __init__(self) -> None:
        self.hosts: dict = {}
        self._turns: dict = {}
        self._calls: dict = {}

    async def start(self, session_id, spec) -> str:
        self.hosts[session_id] = AppHost.load(spec.path, app_id=spec.app, files=ServerFiles(spec.files))
        self._turns[session_id] = asyncio.Lock()
        self._calls[session_id] = set()
        return f"local-{session_id}"

    async def release(self, session_id) -> None:
        host = self.hosts.pop(session_id, None)
        calls = self._calls.pop(session_id, set())
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        if host is not None:
            await host.close()

    async def call(self, session_id, call):
        from inferencesh_ray.events import Cancelled
        from inferencesh_ray.sessions_api import WorkerLost

        host = self.hosts.get(session_id)
        if host is None:
            raise WorkerLost("its host is gone")
        self._calls[session_id].add(asyncio.current_task())
        try:
            async with self._turns[session_id]:
                async for event in host.run(call):
                    yield event
        except asyncio.CancelledError:
            if session_id in self.hosts:
                raise  # the task itself was cancelled
            yield Cancelled("the session ended")
        finally:
            self._calls.get(session_id, set()).discard(asyncio.current_task())


@dataclass
class Server:
    """One app's real HTTP API, in-process (no Ray), and the parts tests reach into."""

    app: Any
    dispatcher: Any
    store: Any
    workers: LocalWorkers
    sessions: Any


def make_server(app_path, tmp_path, keys=(), files=None, session_limit=4, max_queued_tasks=10_000, **api_options) -> Server:
    from inferencesh_ray.api import create_app
    from inferencesh_ray.auth import Auth
    from inferencesh_ray.catalog import AppCatalog, AppInfo
    from inferencesh_ray.dispatch import Dispatcher
    from inferencesh_ray.loader import load_app
    from inferencesh_ray.schema import functions_schema
    from inferencesh_ray.session_worker import WorkerSpec
    from inferencesh_ray.sessions import SessionRegistry
    from inferencesh_ray.sessions_api import Sessions
    from inferencesh_ray.store import TaskStore

    loaded = load_app(str(app_path))
    files = files or local_files(tmp_path / "files")
    host = AppHost(loaded.app_cls, app_id=loaded.name, files=files)
    info = AppInfo(name=loaded.name, schema=functions_schema(host.discovery), path=str(app_path),
                   setup_takes_config=host.discovery.setup.takes_config)
    store = TaskStore(str(tmp_path / "tasks.sqlite3"))
    dispatcher = Dispatcher(store, {loaded.name: host_backend(host)}, max_queued_tasks=max_queued_tasks)
    workers = LocalWorkers()
    registry = SessionRegistry(str(tmp_path / "tasks.sqlite3"), workers, limit=session_limit, reap_every_s=0.05)

    async def spec(app):
        return WorkerSpec(app.name, app.path, files.config)

    sessions = Sessions(registry, workers.call, spec)
    app = create_app(AppCatalog([info]), dispatcher, Auth(list(keys)), files, sessions, **api_options)
    return Server(app, dispatcher, store, workers, sessions)


def run_api(app_path, tmp_path, body, keys=(), files=None, session_limit=4, max_queued_tasks=10_000, **api_options):
    """Run `await body(client)` against the real HTTP API of one app, in-process (no Ray), in one event loop."""

    async def main():
        server = make_server(app_path, tmp_path, keys, files, session_limit, max_queued_tasks, **api_options)
        transport = httpx.ASGITransport(app=server.app, client=("127.0.0.1", 5000), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            client.workers, client.store = server.workers, server.store
            try:
                return await body(client)
            finally:
                await server.dispatcher.close()

    return asyncio.run(main())


async def wait_terminal(client, task_id, headers=None, tries=300):
    """Poll `GET /tasks/{id}` (every 20 ms) until the task is terminal; return it."""
    from inferencesh_ray.status import TaskStatus

    for _ in range(tries):
        task = (await client.get(f"/tasks/{task_id}", headers=headers)).json()["data"]
        if TaskStatus(task["status"]).is_terminal:
            return task
        await asyncio.sleep(0.02)
    raise AssertionError("task never finished")
