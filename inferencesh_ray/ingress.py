"""The ingress deployment: the public HTTP API as a Serve deployment with FastAPI.

It connects to the task store actor (one per database, shared by every ingress
replica, found again by name after a restart) and dispatches tasks to the app
deployments through their handles.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import ray
from ray import serve

from .api import CollapseSlashes, create_api
from .auth import Auth, load_keys
from .catalog import AppCatalog, AppInfo
from .dispatch import Dispatcher, serve_backend
from .server_files import FilesConfig, ServerFiles
from .store import TaskStore

NAMESPACE = "inferencesh_ray"
_log = logging.getLogger("ray.serve")


class RemoteStore:
    """The task store actor, with methods that return awaitables like the in-process store's."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    def __getattr__(self, name: str):
        method = getattr(self._actor, name)
        return lambda *args: method.remote(*args)


def task_store_actor(database: str, retention_s: float, lease_s: float) -> Any:
    """The store actor for this database: created once, found by name afterwards, restarted if it dies."""
    name = "tasks-" + hashlib.sha1(database.encode()).hexdigest()[:12]
    actor_cls = ray.remote(TaskStore).options(
        name=name,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=-1,
        num_cpus=0,
        max_concurrency=10_000,
    )
    return actor_cls.remote(database, retention_s=retention_s, lease_s=lease_s)


@serve.ingress()
class Ingress:
    def __init__(self, apps: list[dict], handles: dict[str, Any], store: dict[str, Any], files: FilesConfig,
                 api_keys_file: str | None = None) -> None:
        self.catalog = AppCatalog([AppInfo(**app) for app in apps])
        self.auth = Auth(load_keys(api_keys_file))
        if self.auth.open:
            _log.warning("no API keys configured: answering requests from this machine (loopback) only")
        store = RemoteStore(task_store_actor(**store))
        self.dispatcher = Dispatcher(store, {name: serve_backend(handle) for name, handle in handles.items()})
        self.files = ServerFiles(files)

    def __serve_build_asgi_app__(self):
        return CollapseSlashes(create_api(self.catalog, self.dispatcher, self.auth, self.files))

    async def __del__(self) -> None:
        await self.dispatcher.close()
