"""A test app that reads its input files and writes output files."""

import hashlib
import tempfile
from typing import List, Optional

from pydantic import BaseModel

from inferencesh_ray import File


class FilesIn(BaseModel):
    image: File
    extra: List[File] = []
    label: str = ""


class Seen(BaseModel):
    sha256: List[str]
    sizes: List[int]
    filenames: List[str]
    content_types: List[str]


class Reversed(BaseModel):
    image: File
    note: Optional[File] = None


class Where(BaseModel):
    node_id: str
    sha256: str


class App:
    def inspect(self, data: FilesIn) -> Seen:
        files = [data.image, *data.extra]
        blobs = [open(f.path, "rb").read() for f in files]
        return Seen(
            sha256=[hashlib.sha256(blob).hexdigest() for blob in blobs],
            sizes=[f.size for f in files],
            filenames=[f.filename for f in files],
            content_types=[f.content_type for f in files],
        )

    def reverse(self, data: FilesIn) -> Reversed:
        """The image's bytes reversed, as a new file."""
        with open(data.image.path, "rb") as handle:
            blob = handle.read()[::-1]
        out = tempfile.NamedTemporaryFile(suffix=".bin", delete=False)
        out.write(blob)
        out.close()
        return Reversed(image=File(path=out.name))

    def missing(self, data: FilesIn) -> Reversed:
        return Reversed(image=File(path="/no/such/output.png"))

    def where(self, data: FilesIn) -> Where:
        """Which Ray node read the file (for the 2-node test)."""
        import ray

        blob = open(data.image.path, "rb").read()
        return Where(node_id=ray.get_runtime_context().get_node_id(), sha256=hashlib.sha256(blob).hexdigest())
