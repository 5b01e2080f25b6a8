"""A test app whose `unload` takes as long as its setup says: a shutdown that would wait on it."""

import asyncio

from lifecycle import record

from inferencesh_ray import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup


class AppSetup(BaseAppSetup):
    unload_s: float = 0.0


class Ping(BaseAppInput):
    text: str


class Pong(BaseAppOutput):
    text: str


class App(BaseApp):
    async def setup(self, config: AppSetup) -> None:
        self.unload_s = config.unload_s

    async def unload(self) -> None:
        record(f"unload:start:{self.unload_s}")
        await asyncio.sleep(self.unload_s)
        record(f"unload:end:{self.unload_s}")

    async def run(self, input_data: Ping) -> Pong:
        return Pong(text=input_data.text)
