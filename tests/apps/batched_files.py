"""A test app with batched functions on input files: one reads them after the model's work, one returns them,
one writes each task's output in its own `metadata.output_dir`."""

import asyncio

from lifecycle import EVENTS, record  # noqa: F401  (tests read EVENTS)

from inferencesh_ray import BaseApp, BaseAppInput, BaseAppOutput, File, Metadata, batched


class In(BaseAppInput):
    doc: File


class Size(BaseAppOutput):
    size: int


class Same(BaseAppOutput):
    doc: File


class App(BaseApp):
    async def setup(self) -> None:
        pass

    @batched(max_batch_size=8, max_wait_ms=50)
    async def read(self, inputs: list[In]) -> list[Size]:
        """Works on the batch for 0.3 s, then reads each file."""
        record(f"read:start:{len(inputs)}")
        await asyncio.sleep(0.3)
        return [Size(size=len(open(item.doc.path, "rb").read())) for item in inputs]

    @batched(max_batch_size=8, max_wait_ms=50)
    async def echo(self, inputs: list[In]) -> list[Same]:
        return [Same(doc=item.doc) for item in inputs]

    @batched(max_batch_size=8, max_wait_ms=50)
    async def write(self, inputs: list[In], metadata: list[Metadata]) -> list[Same]:
        outputs = []
        for item, meta in zip(inputs, metadata):
            path = meta.output_dir / "out.txt"  # one name for every task: each has its own directory
            path.write_bytes(open(item.doc.path, "rb").read().upper())
            outputs.append(Same(doc=File(path=str(path))))
        return outputs
