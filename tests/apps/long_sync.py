"""A sync function that runs for as long as asked, in the thread sync app code runs in."""

import time

from lifecycle import record
from pydantic import BaseModel

from inferencesh_ray import BaseApp


class Wait(BaseModel):
    seconds: float


class Waited(BaseModel):
    seconds: float


class App(BaseApp):
    async def setup(self) -> None:
        record("setup")

    async def unload(self) -> None:
        record("unload")

    def run(self, data: Wait) -> Waited:
        record("run:start")
        time.sleep(data.seconds)
        record("run:end")
        return Waited(seconds=data.seconds)
