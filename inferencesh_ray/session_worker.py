"""A session's worker on Ray: one named, detached actor hosting one app instance.

It runs the app through the same app host as the Serve replicas, with the resources of
the app's deployment (num_cpus, num_gpus, custom resources, runtime env, read from a
replica). Being named and detached, it outlives the ingress replica that started it,
which finds it again by the session id. Calls run one at a time, in arrival order.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import ray

from .background import spawn
from .events import Cancelled, TaskEvent
from .host import AppHost, Call
from .server_files import FilesConfig, ServerFiles
from .sessions_api import WorkerLost

NAMESPACE = "inferencesh_ray"
_RELEASE_TIMEOUT_S = 30.0
_START_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class WorkerSpec:
    app: str
    path: str
    files: FilesConfig
    options: dict[str, Any] = field(default_factory=dict)
    """Ray actor options: those of the app deployment's replicas."""
    batching: dict[str, Any] = field(default_factory=dict)
    """Settings of @batched functions, as the deployment's."""


class ReplicaOptions:
    """Each app's replica actor options, for its session workers.

    Asked afresh as each session opens: a redeploy that changes only them restarts the app's
    replicas, not the ingress. The replicas answer behind the tasks they hold, so once an
    app has answered, an answer not back within `wait_s` gives way to the last one.
    """

    def __init__(self, ask: Callable[[str], Awaitable[dict[str, Any]]], wait_s: float = 1.0) -> None:
        self._ask = ask
        self._wait_s = wait_s
        self._known: dict[str, dict[str, Any]] = {}
        self._asking: dict[str, asyncio.Future] = {}

    async def get(self, app: str) -> dict[str, Any]:
        asking = self._asking.get(app)
        if asking is None:
            asking = self._asking[app] = spawn(self._fetch(app))  # shared: no one caller's to cancel
        if app not in self._known:
            return await asyncio.shield(asking)
        done, _ = await asyncio.wait({asking}, timeout=self._wait_s)
        if done and asking.exception() is None:
            return asking.result()
        return self._known[app]

    async def _fetch(self, app: str) -> dict[str, Any]:
        try:
            self._known[app] = await self._ask(app)
            return self._known[app]
        finally:
            del self._asking[app]


def worker_name(session_id: str) -> str:
    return f"session-{session_id}"


class SessionWorker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.host = AppHost.load(spec.path, app_id=spec.app, files=ServerFiles(spec.files), batching=spec.batching)
        self._turn = asyncio.Lock()  # FIFO: calls run one at a time, in the order they came
        self._calls: set[asyncio.Task] = set()

    def ready(self) -> bool:
        return True

    async def run(self, call: Call) -> AsyncIterator[list[TaskEvent]]:
        """The call's events, in groups (each group one streamed item), as an app replica sends them."""
        self._calls.add(asyncio.current_task())
        try:
            async with self._turn:
                async with aclosing(self.host.run_grouped(call)) as groups:
                    async for events in groups:
                        yield events
        finally:
            self._calls.discard(asyncio.current_task())

    async def close(self) -> None:
        """Cancel the calls running or waiting, then unload the app."""
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)
        await self.host.close_for_good()  # its log is on the driver's console


class RayWorkers:
    """Session workers as Ray actors (the `Workers` of a registry running on Ray)."""

    async def start(self, session_id: str, spec: WorkerSpec) -> str:
        actor = ray.remote(SessionWorker).options(
            name=worker_name(session_id),
            namespace=NAMESPACE,
            lifetime="detached",
            max_restarts=0,
            max_concurrency=1000,
            **spec.options,
        ).remote(spec)
        try:
            # Ready means imported: a broken app fails here, and a worker with no room to start is given up
            # on in time for the client's 30 s request timeout.
            await asyncio.wait_for(actor.ready.remote(), _START_TIMEOUT_S)
        except asyncio.TimeoutError:
            ray.kill(actor)
            raise TimeoutError(not_started(spec.options)) from None
        except BaseException:
            ray.kill(actor)
            raise
        return worker_name(session_id)

    async def release(self, session_id: str) -> None:
        try:
            actor = ray.get_actor(worker_name(session_id), namespace=NAMESPACE)
        except ValueError:
            return  # already gone
        try:
            await asyncio.wait_for(actor.close.remote(), _RELEASE_TIMEOUT_S)
        except Exception:  # dead, or stuck in unload: it goes either way
            pass
        ray.kill(actor)


def not_started(options: dict[str, Any]) -> str:
    """Why a worker was not running in time: most often, no node has room for what it asks."""
    asks = {name: options[name] for name in ("num_cpus", "num_gpus", "memory", "resources") if options.get(name)}
    return (f"not running within {_START_TIMEOUT_S:.0f} s: a session's worker asks for what its app's "
            f"deployment asks ({asks or 'nothing'}), and no node may have that free; the server can ask less "
            f"(`infsh-ray serve --num-cpus 0.5`, or the deployment's ray_actor_options) or add nodes")


def end_all_sessions(reason: str = "the server shut down") -> int:
    """End the live sessions of every registry on this Ray, each worker's `unload` run; how
    many. For the Ray we started, before it stops: it would kill the workers, unload unrun."""
    ended = 0
    try:
        registries = [named["name"] for named in ray.util.list_named_actors(all_namespaces=True)
                      if named["namespace"] == NAMESPACE and named["name"].startswith("sessions-")]
    except Exception:  # this Ray is going already
        return 0
    for name in registries:
        try:
            registry = ray.get_actor(name, namespace=NAMESPACE)
            ended += ray.get(registry.end_all.remote(reason), timeout=_RELEASE_TIMEOUT_S + 10)
        except Exception:  # a registry gone or stuck: the Ray's stop takes its workers anyway
            pass
    return ended


# Actor handles by session, so a call costs no name lookup in the GCS (a blocking round trip).
_handles: "OrderedDict[str, Any]" = OrderedDict()
_HANDLES_KEPT = 1024


def _worker(session_id: str) -> Any:
    if session_id in _handles:
        _handles.move_to_end(session_id)
        return _handles[session_id]
    try:
        actor = ray.get_actor(worker_name(session_id), namespace=NAMESPACE)
    except ValueError as exc:
        raise WorkerLost("its actor no longer exists") from exc
    _handles[session_id] = actor
    if len(_handles) > _HANDLES_KEPT:
        _handles.popitem(last=False)
    return actor


async def call_worker(session_id: str, call: Call) -> AsyncIterator[TaskEvent]:
    """Run a call on a session's worker, from an ingress replica."""
    stream = _worker(session_id).run.options(num_returns="streaming").remote(call)
    try:
        async for ref in stream:
            for event in await ref:
                yield event
    except ray.exceptions.TaskCancelledError:
        yield Cancelled("the session ended")
    except ray.exceptions.RayActorError as exc:
        _handles.pop(session_id, None)
        raise WorkerLost(str(exc).splitlines()[0]) from exc
    finally:
        ray.cancel(stream)  # a no-op once it has finished; stops the worker's call when we stop early


def replica_actor_options() -> dict[str, Any]:
    """This actor's resources and runtime env, as Ray actor options (a replica's, for its sessions)."""
    context = ray.get_runtime_context()
    resources = dict(context.get_assigned_resources())
    options: dict[str, Any] = {"num_cpus": resources.pop("CPU", 0), "num_gpus": resources.pop("GPU", 0)}
    if "memory" in resources:
        options["memory"] = resources.pop("memory")
    custom = {name: amount for name, amount in resources.items() if "_group_" not in name}
    if custom:
        options["resources"] = custom
    runtime_env = dict(context.runtime_env or {})
    if runtime_env:
        options["runtime_env"] = runtime_env
    return options
