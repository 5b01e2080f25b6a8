"""A no-op app: measures the framework's own per-task cost."""

from pydantic import BaseModel


class In(BaseModel):
    value: int = 0


class Out(BaseModel):
    value: int


class App:
    async def run(self, data: In) -> Out:
        return Out(value=data.value)
