"""A test app slow to come and go: its import takes a minute while a marker file sits
beside the test run's lifecycle log (a session's worker, which imports it afresh, is then
slow to start), and its `unload` takes a second."""

import asyncio
import os
import time
import uuid
from pathlib import Path

from lifecycle import record
from pydantic import BaseModel

if "INFSH_TEST_EVENTS" in os.environ and Path(os.environ["INFSH_TEST_EVENTS"]).with_name("slow-start").exists():
    time.sleep(60)


class Say(BaseModel):
    text: str


class App:
    async def setup(self) -> None:
        self.instance = uuid.uuid4().hex[:8]

    async def unload(self) -> None:
        await asyncio.sleep(1)
        record(f"slow-unload-done:{self.instance}")

    def run(self, data: Say) -> Say:
        return Say(text=self.instance)
