"""An app written against the official `inferencesh` package, as apps in the wild are."""

import logging
from typing import Optional

from inferencesh import BaseApp, BaseAppInput, BaseAppOutput, File
from pydantic import Field


class AppSetup(BaseAppInput):
    greeting: str = "hi"


class AppInput(BaseAppInput):
    name: str = Field(description="Who to greet")
    image: Optional[File] = Field(None, description="An optional image")


class AppOutput(BaseAppOutput):
    message: str
    image_size: Optional[int] = None
    saved: Optional[File] = None


class App(BaseApp):
    async def setup(self, config):
        self.greeting = config.greeting
        self.seen_context = getattr(self, "context", None) is not None

    async def run(self, input_data: AppInput, metadata) -> AppOutput:
        metadata.log("official app running")
        logging.getLogger("official").warning("a warning from logging")
        size = input_data.image.size if input_data.image else None
        return AppOutput(message=f"{self.greeting} {input_data.name}", image_size=size)

    async def save(self, input_data: AppInput) -> AppOutput:
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
            handle.write(input_data.name)
        return AppOutput(message="saved", saved=File(path=handle.name))
