"""Files on the client side, without I/O: what to upload and how to describe it, which input
values are uploads, and where a download goes.

The input rule is the official SDK's (wire protocol §10), narrowed to the function's file
fields when its schema is known: a string that names an existing local file, a
`data:...;base64,` URI or a base64-looking string is uploaded and replaced by the file's
URI; so is a `File` with a local path (`InputFiles`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import mimetypes
import os
import queue
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Union
from urllib.parse import unquote, urlparse

from ..file_fields import file_slots
from ..files import File
from ._errors import ProtocolError

FileData = Union[str, bytes, "os.PathLike[str]"]

UPLOAD_CHUNK = 1 << 20
"""An upload of a local file is read from disk and sent this much at a time, so memory stays flat."""

_DATA_URI = re.compile(r"^data:([^;]+);base64,(.+)$", re.DOTALL)
_BASE64 = re.compile(r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2}==)?$")


@dataclass
class UploadFileOptions:
    """How to describe an upload to the server (each field optional, as in the official SDK)."""

    filename: Optional[str] = None
    content_type: Optional[str] = None
    path: Optional[str] = None
    public: Optional[bool] = None


@dataclass(frozen=True)
class UploadSource:
    """Bytes to upload, in memory or in a local file, and how the server is told about them."""

    content: Optional[bytes]
    local_path: Optional[str]
    filename: Optional[str]
    content_type: str
    size: int


def looks_like_base64(value: str) -> bool:
    """At least 16 characters of padded base64 that decodes (so words like "hello" are left alone)."""
    if len(value) < 16 or len(value) % 4 or not _BASE64.match(value):
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def upload_source(data: FileData, options: UploadFileOptions) -> UploadSource:
    """What `files.upload(data, options)` sends; ValueError when `data` is none of the accepted forms."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        content = bytes(data)
        return UploadSource(content, None, options.filename, options.content_type or "application/octet-stream", len(content))
    if isinstance(data, os.PathLike):
        data = os.fspath(data)
    if not isinstance(data, str):
        raise TypeError(f"files.upload takes a path, bytes, a data: URI or base64, not {type(data).__name__}")
    if os.path.isfile(data):
        content_type = options.content_type or mimetypes.guess_type(data)[0] or "application/octet-stream"
        filename = options.filename or os.path.basename(data)
        return UploadSource(None, data, filename, content_type, os.path.getsize(data))
    if data.startswith("data:"):
        match = _DATA_URI.match(data)
        if not match:
            raise ValueError("malformed data: URI: expected data:<content type>;base64,<data>")
        content = _b64decode(match.group(2))
        return UploadSource(content, None, options.filename, options.content_type or match.group(1), len(content))
    if looks_like_base64(data):
        content = _b64decode(data)
        return UploadSource(content, None, options.filename, options.content_type or "application/octet-stream", len(content))
    raise ValueError(
        f"cannot upload {data[:80]!r}: it is not an existing file, a data: URI or base64 (bytes work too)"
    )


def file_request(source: UploadSource, options: UploadFileOptions) -> dict[str, Any]:
    """The `POST /files` body: always one file, described as the official SDK describes it."""
    return {
        "files": [
            {
                "uri": "",
                "filename": source.filename,
                "content_type": source.content_type,
                "path": options.path,
                "size": source.size,
                "public": options.public,
            }
        ]
    }


def next_chunk(handle: IO[bytes], left: int) -> bytes:
    """The next piece of a local file's upload: at most UPLOAD_CHUNK of the `left` bytes still to send.

    The size announced to the server was taken before reading; a file that has shrunk
    since fails the upload here, with its name, rather than as a short request body.
    """
    block = handle.read(min(UPLOAD_CHUNK, left))
    if not block:
        raise ValueError(f"{handle.name} ended {left} bytes short of its size: it changed while it was being uploaded")
    return block


def file_chunks(handle: IO[bytes], size: int) -> Iterator[bytes]:
    """The first `size` bytes of an open file, a piece at a time (see next_chunk)."""
    left = size
    while left > 0:
        block = next_chunk(handle, left)
        left -= len(block)
        yield block


def upload_target(data: Any) -> tuple[dict[str, Any], str]:
    """The created file object and the URL to PUT its bytes to, from `POST /files`'s data."""
    created = data[0] if isinstance(data, list) and data else None
    if not isinstance(created, dict) or not created.get("upload_url") or not created.get("uri"):
        raise ProtocolError("No upload URL provided by the server: POST /files must answer a list of files with `uri` and `upload_url`")
    return created, created["upload_url"]


# -- input pre-processing ----------------------------------------------------------


@dataclass(frozen=True)
class PendingUpload:
    """One input value to upload: a local path, a data: URI or base64, and any names a File gave it."""

    source: str
    filename: Optional[str] = None
    content_type: Optional[str] = None

    @property
    def options(self) -> UploadFileOptions:
        return UploadFileOptions(filename=self.filename, content_type=self.content_type)


class InputFiles:
    """The uploads an input needs, and the input with their URIs in place.

    Without the function's input schema, the official SDK's rule: a string naming a local
    file, a base64 `data:` URI or a base64-looking string, anywhere in the input. With it, a
    string counts only where the schema has a file field, so a text such as
    "stabilityai/sdxl" (16 characters of valid base64) stays text. A `File` with a local
    path is uploaded wherever it is: it says so itself.
    """

    def __init__(self, value: Any, input_schema: Optional[dict[str, Any]] = None) -> None:
        self._value = _as_lists(value)
        self._file_places = None
        if input_schema is not None:
            self._file_places = {(id(slot.container), slot.key) for slot in file_slots(input_schema, self._value)}
        self._found: dict[tuple[int, Any], PendingUpload] = {}
        self._walk(None, None, self._value)

    @property
    def pending(self) -> list[PendingUpload]:
        """Each upload once, in the order met."""
        return list(dict.fromkeys(self._found.values()))

    def filled(self, uris: dict[PendingUpload, str]) -> Any:
        """The input with each upload replaced by its URI (and each remote File by its URI)."""
        return self._fill(None, None, self._value, uris)

    def _walk(self, container: Any, key: Any, value: Any) -> None:
        if isinstance(value, dict):
            for item_key, item in value.items():
                self._walk(value, item_key, item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._walk(value, index, item)
        else:
            pending = _pending(value)
            place = (id(container), key)
            if pending is not None and (isinstance(value, File) or self._file_places is None or place in self._file_places):
                self._found[place] = pending

    def _fill(self, container: Any, key: Any, value: Any, uris: dict[PendingUpload, str]) -> Any:
        if isinstance(value, dict):
            return {item_key: self._fill(value, item_key, item, uris) for item_key, item in value.items()}
        if isinstance(value, list):
            return [self._fill(value, index, item, uris) for index, item in enumerate(value)]
        pending = self._found.get((id(container), key))
        if pending is not None:
            return uris[pending]
        return value.uri if isinstance(value, File) else value


def _as_lists(value: Any) -> Any:
    """Tuples as lists, as JSON will have them (the schema walk reads lists)."""
    if isinstance(value, dict):
        return {key: _as_lists(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_lists(item) for item in value]
    return value


def _pending(value: Any) -> Optional[PendingUpload]:
    if isinstance(value, str):
        # A file, not just any existing path: a text field saying "." must not upload a directory.
        # Only a base64 data: URI: the official SDK tries any string starting "data:", and so fails
        # a text that merely begins with it; the server takes other data: URIs as they are.
        if os.path.isfile(value) or _DATA_URI.match(value) or looks_like_base64(value):
            return PendingUpload(value)
        return None
    if isinstance(value, File):
        source = value.path or (value.uri if value.uri and _DATA_URI.match(value.uri) else None)
        return PendingUpload(source, value.filename, value.content_type) if source else None
    return None


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64: {exc}") from None


# -- downloads ---------------------------------------------------------------------


def download_source(file: Union[str, dict, File]) -> tuple[str, Optional[str]]:
    """(URI, filename) of an output file value: a `{uri, filename, ...}` dict, a File or a URI."""
    if isinstance(file, File):
        uri, filename = file.uri, file.filename
    elif isinstance(file, dict):
        uri, filename = file.get("uri"), file.get("filename")
    else:
        uri, filename = file, None
    if not isinstance(uri, str) or urlparse(uri).scheme not in ("http", "https", "data"):
        raise ValueError(f"nothing to download: {file!r} has no http(s) or data: uri")
    return uri, filename


def download_target(dest: Union[str, "os.PathLike[str]"], uri: str, filename: Optional[str]) -> Path:
    """`dest` itself, or, when it is a directory (or ends with a slash), a file in it named
    after the file (never outside it). Missing directories are created."""
    target = Path(dest)
    if not (target.is_dir() or os.fspath(dest).endswith(("/", os.sep))):
        target.parent.mkdir(parents=True, exist_ok=True)
        return target
    target.mkdir(parents=True, exist_ok=True)
    name = _usable_name(filename or "")
    if not name and not uri.startswith("data:"):
        name = _usable_name(unquote(urlparse(uri).path))
    return target / (name or "download")


def _usable_name(path: str) -> str:
    """The last part of `path` as a file name in a directory, or "" when it names none ("." or "..")."""
    name = os.path.basename(path.replace("\\", "/"))
    return "" if name in (".", "..") else name


def data_uri_bytes(uri: str) -> bytes:
    match = _DATA_URI.match(uri)
    if not match:
        raise ValueError("malformed data: URI: expected data:<content type>;base64,<data>")
    return _b64decode(match.group(2))


DOWNLOAD_WRITE = 256 << 10
"""A download is written to disk this much at a time (httpx hands it over 64 KiB at a time).

Measured on a 2-core VM (ext4): 256 KiB writes cost the kernel less than 64 KiB ones, and
a download ran ~10-15% faster; 1 MiB writes now and then took several times the system
time (the same in a plain write loop), which made downloads through the sync client
slower than unbuffered ones.
"""


class DiskWriter:
    """A download's writes, done by a thread: the next bytes come in while the last go to disk.

    Receiving (httpx parses each 64 KiB in Python) and writing new pages to the page cache
    each take most of a core on a fast link: one after the other, a 200 MB download ran at
    0.67-0.70x of a local copy on a 2-core VM, overlapped at 0.94-1.00x. An async client's
    event loop never waits on the disk either. At most `depth` pieces wait to be written;
    past that, `write` waits (`awrite`, in a thread).
    """

    def __init__(self, handle: IO[bytes], depth: int = 32) -> None:
        self._handle = handle
        self._pieces: queue.Queue[Optional[bytes]] = queue.Queue(depth)
        self._failed: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="infsh-download-writer", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        self._raise_failure()
        self._pieces.put(data)

    async def awrite(self, data: bytes) -> None:
        self._raise_failure()
        try:
            self._pieces.put_nowait(data)
        except queue.Full:
            await asyncio.to_thread(self._pieces.put, data)

    def close(self) -> None:
        """Wait for the pieces still queued (a few MiB at most); raises the first write that failed."""
        self._pieces.put(None)
        self._thread.join()
        self._raise_failure()

    def _run(self) -> None:
        while (piece := self._pieces.get()) is not None:
            if self._failed is None:
                try:
                    self._handle.write(piece)
                except BaseException as exc:  # the disk is full, say: the next write or close raises it
                    self._failed = exc

    def _raise_failure(self) -> None:
        if self._failed is not None:
            raise self._failed


@contextmanager
def partial_file(target: Path) -> Iterator[DiskWriter]:
    """Write to a temporary name beside `target` and move it in place only when complete."""
    part = target.with_name(f".{target.name}.part")
    try:
        with open(part, "wb", buffering=DOWNLOAD_WRITE) as handle:
            writer = DiskWriter(handle)
            try:
                yield writer
            finally:
                writer.close()
        os.replace(part, target)
    finally:
        if part.exists():
            part.unlink()
