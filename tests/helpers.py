"""Small helpers shared by tests."""

from __future__ import annotations

from inferencesh_ray.events import TERMINAL_EVENTS
from inferencesh_ray.host import AppHost, Call


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
