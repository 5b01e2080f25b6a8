"""The ingress deployment: the public HTTP API as a Serve deployment with FastAPI.

It connects to the task store and the session registry (named actors, one of each per
database, shared by every ingress replica, found again by name after a restart) and
dispatches tasks to the app deployments through their handles, or to session workers.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from .api import create_app
from .auth import Auth, load_keys
from .catalog import AppCatalog, AppInfo
from .code_version import LOADED
from .dispatch import Dispatcher, serve_backend
from .listener import Listener
from .local_ray import pin_replica_grpc_to_node_address
from .middleware import MAX_REQUEST_BYTES
from .server_files import FilesConfig, ServerFiles
from .session_worker import RayWorkers, ReplicaOptions, WorkerSpec, call_worker
from .sessions import SessionRegistry
from .sessions_api import Sessions
from .store import TaskStore

NAMESPACE = "inferencesh_ray"
_log = logging.getLogger("ray.serve")


class RemoteActor:
    """An actor whose methods return awaitables, like those of the in-process object it hosts."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    def __getattr__(self, name: str):
        method = getattr(self._actor, name)
        return lambda *args, **kwargs: method.remote(*args, **kwargs)


def named_actor(cls: type, kind: str, database: str, *args: Any, settings: dict[str, Any]) -> RemoteActor:
    """The `kind` actor of this database: created once, found by name afterwards, restarted if it dies.

    `settings` go to its constructor and, since an actor found by name keeps the arguments it
    was made with (an earlier deploy's), to its `configure` too. StaleActor when it runs other
    inferencesh_ray code than this process (it outlived an upgrade).
    """
    name = f"{kind}-" + hashlib.sha1(database.encode()).hexdigest()[:12]
    actor_cls = ray.remote(cls).options(
        name=name,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=-1,
        num_cpus=0,
        max_concurrency=10_000,
    )
    handle = actor_cls.remote(database, *args, **settings)
    # Once, as the replica starts: nothing else waits on this event loop yet.
    if ray.get(handle.configure.remote(**settings)) != LOADED:
        raise StaleActor(f"the {kind} actor {name!r} (namespace {NAMESPACE!r}) runs another inferencesh_ray's "
                         "code, from before an upgrade: stop Ray (`ray stop`) and serve again, or, to keep "
                         f"Ray running, end that actor: ray.kill(ray.get_actor({name!r}, namespace={NAMESPACE!r})) "
                         "(its state is on disk and is read again)")
    return RemoteActor(handle)


class StaleActor(RuntimeError):
    """A detached actor found by name runs other code than this process."""


def made_here(handle: DeploymentHandle) -> DeploymentHandle:
    """A handle to the same deployment that calls it the way this process's Serve settings say.

    A bound handle keeps the options of the process that built the app, as Serve read its
    environment there on import: an app built by `infsh-ray serve PATH`, or by a script
    that imported Serve before `start_ray` turned on its throughput mode, would call its
    replicas through Ray actor calls instead of Serve's gRPC, at a cost of about a fifth of
    the ingress's throughput (benchmarks/README.md).
    """
    return DeploymentHandle(handle.deployment_name, handle.app_name)


@serve.ingress()
class Ingress:
    def __init__(self, apps: list[dict], handles: dict[str, Any], state: dict[str, Any], files: FilesConfig,
                 api_keys_file: str | None = None, max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
        pin_replica_grpc_to_node_address()
        self.catalog = AppCatalog([AppInfo(**app) for app in apps])
        self.auth = Auth(load_keys(api_keys_file))
        if self.auth.open:
            _log.warning("no API keys configured: answering requests from this machine (loopback) only")
        database = state["database"]
        store = named_actor(TaskStore, "tasks", database,
                            settings={"retention_s": state["retention_s"], "lease_s": state["lease_s"]})
        handles = {name: made_here(handle) for name, handle in handles.items()}
        backends = {name: serve_backend(handle) for name, handle in handles.items()}
        self.dispatcher = Dispatcher(store, backends, max_queued_tasks=state["max_queued_tasks"])
        self.files = ServerFiles(files)
        registry = named_actor(SessionRegistry, "sessions", database, RayWorkers(),
                               settings={"limit": state["max_sessions"], "retention_s": state["retention_s"]})
        self.sessions = Sessions(registry, call_worker, self._worker_spec)
        self._replica_options = ReplicaOptions(lambda app: handles[app].actor_options.remote())
        self._asgi = create_app(self.catalog, self.dispatcher, self.auth, self.files, self.sessions, max_request_bytes)
        self._listener = Listener(self._asgi, state["listen"]) if state.get("listen") else None

    async def _worker_spec(self, app: AppInfo) -> WorkerSpec:
        """A session worker for `app`: its code, files and the resources of its deployment's replicas."""
        options = await self._replica_options.get(app.name)
        return WorkerSpec(app.name, app.path, self.files.config, options, app.batching)

    def __serve_build_asgi_app__(self):
        return self._asgi

    async def __del__(self) -> None:
        self.dispatcher.tasks.end_watches()
        if self._listener is not None:
            await self._listener.close()
        await self.dispatcher.close()
        await self.sessions.close()
