"""A test app whose sync code raises StopIteration: next() on an iterator with nothing left."""

from inferencesh_ray import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup, batched


class AppSetup(BaseAppSetup):
    broken: bool = False


class In(BaseAppInput):
    text: str


class Out(BaseAppOutput):
    text: str


class App(BaseApp):
    def setup(self, config: AppSetup) -> None:
        self.table = {} if config.broken else {"a": "A"}
        if config.broken:
            next(iter(self.table))

    def run(self, input_data: In) -> Out:
        return Out(text=self._look_up(input_data.text))

    @batched(max_batch_size=4, max_wait_ms=5)
    def embed(self, inputs: list[In]) -> list[Out]:
        return [Out(text=self._look_up(item.text)) for item in inputs]

    def _look_up(self, text: str) -> str:
        return next(value for key, value in self.table.items() if key == text)
