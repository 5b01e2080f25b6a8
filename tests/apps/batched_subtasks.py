"""A test app whose batched function runs a sub-task per input and cancels those past a deadline."""

import asyncio

from inferencesh_ray import BaseApp, BaseAppInput, BaseAppOutput, batched


class In(BaseAppInput):
    text: str


class Out(BaseAppOutput):
    text: str


class App(BaseApp):
    async def setup(self) -> None:
        pass

    @batched(max_batch_size=8, max_wait_ms=50)
    async def run(self, inputs: list[In]) -> list[Out]:
        """An input "slow" misses the 0.1 s deadline: a CancelledError comes back in its place."""
        tasks = [asyncio.ensure_future(self._one(item)) for item in inputs]
        _, late = await asyncio.wait(tasks, timeout=0.1)
        for task in late:
            task.cancel()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    async def _one(self, item: In) -> Out:
        if item.text == "slow":
            await asyncio.sleep(10)
        return Out(text=item.text)
