"""A test app with batched functions; each batch records its inputs' texts in BATCHES."""

import asyncio
import threading
from typing import Literal

from lifecycle import EVENTS, record  # noqa: F401  (tests read EVENTS)

from inferencesh_ray import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup, Metadata, batched

BATCHES: list[list[str]] = []


class AppSetup(BaseAppSetup):
    mode: Literal["a", "b"] = "a"


class EmbedInput(BaseAppInput):
    text: str
    fail: bool = False


class EmbedOutput(BaseAppOutput):
    text: str
    batch_size: int
    mode: str


class App(BaseApp):
    async def setup(self, config: AppSetup) -> None:
        record(f"setup:{config.mode}")
        self.mode = config.mode

    async def unload(self) -> None:
        record(f"unload:{self.mode}")

    @batched(max_batch_size=4, max_wait_ms=50)
    async def embed(self, inputs: list[EmbedInput], metadata: list[Metadata]) -> list[EmbedOutput]:
        """Echo each text; an input with `fail` gets an exception in its place."""
        BATCHES.append([item.text for item in inputs])
        print(f"batch of {len(inputs)}")
        for item, meta in zip(inputs, metadata):
            meta.log(f"embedding {item.text}")
        return [ValueError(f"cannot embed {item.text}") if item.fail else self._out(item, len(inputs)) for item in inputs]

    @batched(max_batch_size=8, max_wait_ms=50)
    def embed_sync(self, inputs: list[EmbedInput]) -> list[EmbedOutput]:
        BATCHES.append([item.text for item in inputs])
        record(f"embed_sync:main_thread={threading.current_thread() is threading.main_thread()}")
        print(f"sync batch of {len(inputs)}")
        return [self._out(item, len(inputs)) for item in inputs]

    @batched(max_batch_size=8, max_wait_ms=50)
    async def explode(self, inputs: list[EmbedInput]) -> list[EmbedOutput]:
        raise RuntimeError("the model ran out of memory")

    @batched(max_batch_size=8, max_wait_ms=50)
    async def drop_one(self, inputs: list[EmbedInput]) -> list[EmbedOutput]:
        return [self._out(item, len(inputs)) for item in inputs][:-1]

    @batched(max_batch_size=8, max_wait_ms=50)
    async def slow(self, inputs: list[EmbedInput]) -> list[EmbedOutput]:
        """Takes 0.5 s, recording its start and whether it was cancelled."""
        BATCHES.append([item.text for item in inputs])
        record(f"slow:start:{len(inputs)}")
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            record("slow:cancelled")
            raise
        return [self._out(item, len(inputs)) for item in inputs]

    def single(self, input_data: EmbedInput) -> EmbedOutput:
        return self._out(input_data, 1)

    def _out(self, item: EmbedInput, size: int) -> EmbedOutput:
        return EmbedOutput(text=item.text, batch_size=size, mode=self.mode)
