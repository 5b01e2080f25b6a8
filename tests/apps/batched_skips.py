"""An app with one method per way a batched signature can be wrong (and one list function without @batched)."""

from typing import AsyncGenerator

from pydantic import BaseModel

from inferencesh_ray import batched


class In(BaseModel):
    x: int


class Out(BaseModel):
    y: int


class App:
    @batched(max_batch_size=2, max_wait_ms=0)
    def good(self, items: list[In]) -> list[Out]:
        return [Out(y=item.x) for item in items]

    def lists_unbatched(self, items: list[In]) -> list[Out]:
        return []

    @batched
    def single_input(self, item: In) -> list[Out]:
        return []

    @batched
    def single_output(self, items: list[In]) -> Out:
        return Out(y=0)

    @batched
    def list_of_ints(self, items: list[int]) -> list[Out]:
        return []

    @batched
    async def generator(self, items: list[In]) -> AsyncGenerator[list[Out], None]:
        yield []
