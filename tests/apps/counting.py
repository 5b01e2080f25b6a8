"""A test app that records every lifecycle call, to check setup/unload order and counts."""

import asyncio
import time
from typing import AsyncGenerator, Literal

from lifecycle import EVENTS, record  # noqa: F401  (tests read EVENTS)
from pydantic import BaseModel, Field

from inferencesh_ray import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup, Metadata


class AppSetup(BaseAppSetup):
    mode: Literal["a", "b"] = "a"
    fail: bool = False


class EchoInput(BaseAppInput):
    text: str = Field(description="What to echo")
    times: int = Field(1, ge=1, le=10)


class EchoOutput(BaseAppOutput):
    text: str
    mode: str


class App(BaseApp):
    async def setup(self, config: AppSetup) -> None:
        record(f"setup:{config.mode}")
        if config.fail:
            raise ValueError("setup was told to fail")
        self.mode = config.mode

    async def unload(self) -> None:
        record(f"unload:{self.mode}")

    async def run(self, input_data: EchoInput, metadata: Metadata) -> EchoOutput:
        metadata.log(f"echoing {input_data.text}")
        return EchoOutput(text=input_data.text * input_data.times, mode=self.mode)

    def shout(self, input_data: EchoInput) -> EchoOutput:
        print("shouting", input_data.text)
        return EchoOutput(text=input_data.text.upper(), mode=self.mode)

    async def count(self, input_data: EchoInput) -> AsyncGenerator[EchoOutput, None]:
        for index in range(input_data.times):
            yield EchoOutput(text=f"{input_data.text}{index}", mode=self.mode)

    async def boom(self, input_data: EchoInput) -> EchoOutput:
        raise RuntimeError(f"boom: {input_data.text}")

    async def nothing(self, input_data: EchoInput) -> AsyncGenerator[EchoOutput, None]:
        if False:
            yield

    async def slow(self, input_data: EchoInput) -> EchoOutput:
        record(f"slow:start:{input_data.text}")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            record(f"slow:cancelled:{input_data.text}")
            raise
        return EchoOutput(text="late", mode=self.mode)

    async def progress(self, input_data: EchoInput, metadata: Metadata) -> AsyncGenerator[EchoOutput, None]:
        """Log and yield a snapshot every 0.3 s, so clients can watch them arrive."""
        for index in range(input_data.times):
            metadata.log(f"step {index}")
            yield EchoOutput(text=f"{input_data.text}{index}", mode=self.mode)
            await asyncio.sleep(0.3)

    async def wrong_type(self, input_data: EchoInput) -> EchoOutput:
        return {"text": "not a model"}  # type: ignore[return-value]

    def blocking(self, input_data: EchoInput) -> EchoOutput:
        """A sync function (run in a thread) that blocks for `times` x 0.2 s."""
        record(f"blocking:start:{input_data.text}")
        time.sleep(input_data.times * 0.2)
        record(f"blocking:end:{input_data.text}")
        return EchoOutput(text=input_data.text, mode=self.mode)


class Plain(BaseModel):
    value: int
