"""A Serve replica of one app: it hosts the app through the app host and serves every function.

Requests carry their setup config's key as Serve's multiplexed model id, so Serve
routes them to replicas already warm with that config; the host itself runs
`unload` then `setup` when a replica switches config.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import AsyncIterator, Optional

from ray import serve

from .events import TaskEvent
from .host import AppHost, Call
from .local_ray import pin_replica_grpc_to_node_address
from .server_files import FilesConfig, ServerFiles
from .session_worker import replica_actor_options


class AppReplica:
    def __init__(self, app_path: str, app_name: str, files: FilesConfig, batching: Optional[dict] = None) -> None:
        pin_replica_grpc_to_node_address()
        self.host = AppHost.load(app_path, app_id=app_name, files=ServerFiles(files), batching=batching)

    async def run(self, call: Call) -> AsyncIterator[list[TaskEvent]]:
        """The call's events, in groups (each group one streamed item)."""
        await self._warm(serve.get_multiplexed_model_id())
        async with aclosing(self.host.run_grouped(call)) as groups:
            async for events in groups:
                yield events

    def actor_options(self) -> dict:
        """This replica's resources and runtime env: a session of this app gets the same."""
        return replica_actor_options()

    @serve.multiplexed(max_num_models_per_replica=1)
    async def _warm(self, setup_key: str) -> str:
        # Registering the key tells Serve's router this replica is warm with the config;
        # `host.run` does the actual unload/setup, inside the task, with its logs.
        return setup_key

    async def __del__(self) -> None:
        await self.host.close_for_good()
