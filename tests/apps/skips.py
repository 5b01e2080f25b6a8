"""An app with one method per discovery rule that a method can fail."""

from typing import AsyncGenerator

from pydantic import BaseModel

from inferencesh_ray import Metadata


class In(BaseModel):
    x: int


class Out(BaseModel):
    y: int


class App:
    def good(self, data: In) -> Out:
        return Out(y=data.x)

    def with_metadata(self, data: In, metadata) -> Out:
        return Out(y=data.x)

    def _private(self, data: In) -> Out:
        return Out(y=data.x)

    def setup(self) -> None:
        pass

    def no_input_hint(self, data) -> Out:
        return Out(y=1)

    def no_return_hint(self, data: In):
        return Out(y=1)

    def two_inputs(self, a: In, b: In) -> Out:
        return Out(y=1)

    def no_inputs(self) -> Out:
        return Out(y=1)

    def not_a_model(self, data: int) -> Out:
        return Out(y=data)

    def returns_dict(self, data: In) -> dict:
        return {}

    def sync_generator(self, data: In) -> Out:
        yield Out(y=1)

    async def gen_bad_hint(self, data: In) -> AsyncGenerator[int, None]:
        yield 1

    @staticmethod
    def static(data: In) -> Out:
        return Out(y=1)

    def unresolvable(self, data: "Missing") -> Out:  # noqa: F821
        return Out(y=1)

    def metadata_misnamed(self, data: In, meta: Metadata) -> Out:
        return Out(y=1)

    def metadata_first(self, metadata: Metadata, data: In) -> Out:
        return Out(y=1)
