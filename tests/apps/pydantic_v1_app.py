"""An app whose models are pydantic.v1 models, with no base class."""

from typing import List, Optional

from pydantic import v1

from inferencesh_ray import File


class In(v1.BaseModel):
    name: str = v1.Field(..., description="Who to greet")
    tags: List[str] = []
    image: Optional[File] = None


class Out(v1.BaseModel):
    greeting: str
    count: int


class App:
    def setup(self):
        self.prefix = "hello"

    async def run(self, data: In) -> Out:
        return Out(greeting=f"{self.prefix} {data.name}", count=len(data.tags))
