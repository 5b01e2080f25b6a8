"""A stand-in for the text embeddings example: its functions and shapes, with a model that only waits.

Each forward pass of up to `batch_size` texts waits `forward_ms`, one pass at a time as on
one device, using no CPU, as if a fast accelerator ran it, and gives 384 floats per text. Served
by `embeddings_serving.py --stand-in MS`, it measures what the serving stack alone carries
at a GPU's pace on a machine without one.
"""

from __future__ import annotations

import asyncio
import math
import random

from pydantic import Field

from inferencesh_ray import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup, batched

DIMENSIONS = 384
_VECTOR = [random.Random(0).uniform(-0.1, 0.1) for _ in range(DIMENSIONS)]


class AppSetup(BaseAppSetup):
    batch_size: int = Field(64, ge=1, le=1024, description="Texts per forward pass")
    forward_ms: float = Field(12.4, ge=0, description="How long one forward pass takes")


class EmbedInput(BaseAppInput):
    texts: list[str] = Field(min_length=1, max_length=4096)


class EmbedOutput(BaseAppOutput):
    embeddings: list[list[float]]
    dimensions: int
    model: str


class App(BaseApp):
    async def setup(self, config: AppSetup) -> None:
        self.config = config
        self.device = asyncio.Lock()

    async def embed(self, input_data: EmbedInput) -> EmbedOutput:
        return _embedded(await self._encode(len(input_data.texts)))

    @batched(max_batch_size=16, max_wait_ms=5)
    async def embed_batched(self, inputs: list[EmbedInput]) -> list[EmbedOutput]:
        vectors = await self._encode(sum(len(item.texts) for item in inputs))
        outputs, start = [], 0
        for item in inputs:
            outputs.append(_embedded(vectors[start:start + len(item.texts)]))
            start += len(item.texts)
        return outputs

    async def _encode(self, count: int) -> list[list[float]]:
        for _ in range(math.ceil(count / self.config.batch_size)):
            async with self.device:
                await asyncio.sleep(self.config.forward_ms / 1000)
        return [list(_VECTOR) for _ in range(count)]  # distinct lists, as a tensor's tolist() gives


def _embedded(vectors: list[list[float]]) -> EmbedOutput:
    return EmbedOutput(embeddings=vectors, dimensions=DIMENSIONS, model="stand-in")
