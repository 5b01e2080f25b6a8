"""A test app with state: each instance remembers what it was told (for sessions)."""

import asyncio
import os
import uuid
from typing import List, Optional

from lifecycle import record

from inferencesh_ray import BaseApp, BaseAppInput, BaseAppOutput, Metadata


class Say(BaseAppInput):
    text: str
    delay: float = 0.0


class Memory(BaseAppOutput):
    history: List[str]
    instance: str
    pid: int
    session_id: Optional[str] = None
    cpus: Optional[float] = None  # what Ray gave this process, on Ray


class App(BaseApp):
    async def setup(self) -> None:
        self.history: List[str] = []
        self.instance = uuid.uuid4().hex[:8]
        record(f"setup:{self.instance}")

    async def unload(self) -> None:
        record(f"unload:{self.instance}")

    async def run(self, data: Say, metadata: Metadata) -> Memory:
        """Wait `delay` seconds, then remember `text`."""
        try:
            await asyncio.sleep(data.delay)
        except asyncio.CancelledError:
            record(f"cancelled:{data.text}")
            raise
        self.history.append(data.text)
        return Memory(history=list(self.history), instance=self.instance, pid=os.getpid(), session_id=metadata.session_id,
                      cpus=_assigned_cpus())


def _assigned_cpus() -> Optional[float]:
    """What Ray gave this worker process; None outside one (the tests' own process may be Ray's driver)."""
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    return ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
