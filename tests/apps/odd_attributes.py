"""An app whose class holds what is callable but no method, and methods that cannot be functions."""

import operator
import threading
from typing import Optional

from pydantic import BaseModel, ConfigDict


class Tensor:
    """Stands for numpy.ndarray, torch.Tensor, PIL.Image: valid in a model, but no JSON type."""


class In(BaseModel):
    x: int = 0


class Out(BaseModel):
    y: int = 0


class Frame(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    pixels: Optional[Tensor] = None


class RawOut(BaseModel):
    frames: list[Frame] = []


class App:
    Input = In  # aliases of the models, and a factory: classes, never functions
    _cache_factory = dict
    _lock = threading.Lock()
    pick = operator.itemgetter(0)  # callable, but without a signature to read

    def run(self, data: In) -> Out:
        return Out(y=len(self._cache_factory()) + data.x)

    def keyword_only(self, *, data: In) -> Out:
        return Out(y=data.x)

    def raw(self, data: In) -> RawOut:
        return RawOut()
