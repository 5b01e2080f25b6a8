"""How the app host turns file values into local files, and local output files into URIs.

The host calls `fetch` for every file in an input before validation, and `publish`
for every file in an output after the function returns. `LocalFiles` is the dev loop's
policy: local paths, `file://`, `data:` and http(s) inputs, outputs left as local paths.
A server's policy is `server_files.ServerFiles`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol
from urllib.parse import unquote, unquote_to_bytes, urlparse

from .storage import is_media_type


class FileFetchError(Exception):
    """A file value that cannot be made into a local file; the message says why."""


@dataclass(frozen=True)
class FileScope:
    """Whose task a file belongs to, and the server URL its client used (for output URLs)."""

    owner: str
    base_url: str


class FileAccess(Protocol):
    stores_outputs: bool
    """Whether `publish` keeps its own copy of an output file, so the task's output
    directory can go when the task ends; the dev loop's outputs stay where they are."""

    async def fetch(self, value: "str | dict[str, Any]", workdir: Path, scope: Optional[FileScope] = None) -> dict[str, Any]:
        """A file dict (uri, path, content_type, size, filename) whose `path` is a local file."""

    async def publish(self, value: dict[str, Any], scope: Optional[FileScope] = None) -> dict[str, Any]:
        """The file dict a client receives for an output file the app wrote locally."""


def as_file_dict(value: "str | dict[str, Any]") -> dict[str, Any]:
    if isinstance(value, str):
        return {"uri": value}
    return {key: item for key, item in value.items() if item is not None}


def describe_local(path: str, given: dict[str, Any]) -> dict[str, Any]:
    """Fill in filename, content type and size of a local file, keeping what was given."""
    filename = given.get("filename") or os.path.basename(path)
    return {
        **given,
        "path": path,
        "filename": filename,
        "content_type": given.get("content_type") or mimetypes.guess_type(filename)[0] or "application/octet-stream",
        "size": os.path.getsize(path),
    }


@dataclass(frozen=True)
class DataUri:
    content_type: str
    data: bytes


_DATA_URI_FORM = "data:[<media type>][;base64],<data>"


def parse_data_uri(uri: str) -> DataUri:
    """The content type and bytes of a `data:` URI (RFC 2397); FileFetchError says what is wrong."""
    header, comma, payload = uri[len("data:"):].partition(",")
    if not comma:
        raise FileFetchError(f"malformed data: URI: it has no comma before its data; the form is {_DATA_URI_FORM}")
    params = [param.strip() for param in header.split(";")]
    encoded = params[-1].lower() == "base64"
    media_type = params[0].lower() or "text/plain"
    if not is_media_type(media_type):
        raise FileFetchError(f"malformed data: URI: {media_type[:40]!r} is not a media type such as image/png; "
                             f"the form is {_DATA_URI_FORM}")
    data = unquote_to_bytes(payload)
    if encoded:
        try:
            data = base64.b64decode(data, validate=True)  # without validate, characters outside base64 are dropped silently
        except binascii.Error as exc:
            raise FileFetchError(f"malformed data: URI: its data is not valid base64 ({exc})") from exc
    return DataUri(media_type, data)


def write_data_uri(uri: DataUri, workdir: Path) -> str:
    """Write a data: URI's bytes under workdir (blocks); returns the path."""
    path = workdir / f"data{mimetypes.guess_extension(uri.content_type) or ''}"
    path.write_bytes(uri.data)
    return str(path)


async def decode_data_uri(uri: str, workdir: Path) -> tuple[str, str]:
    """Write a `data:` URI's bytes under workdir; returns (path, content type)."""
    parsed = await asyncio.to_thread(parse_data_uri, uri)
    return await asyncio.to_thread(write_data_uri, parsed, workdir), parsed.content_type


class LocalFiles:
    """The dev loop's files: the developer's own disk and URLs, outputs kept local."""

    stores_outputs = False

    async def fetch(self, value: "str | dict[str, Any]", workdir: Path, scope: Optional[FileScope] = None) -> dict[str, Any]:
        given = as_file_dict(value)
        if given.get("path"):
            return self._local(given["path"], given)
        uri = given.get("uri") or ""
        scheme = urlparse(uri).scheme
        if scheme == "data":
            path, content_type = await decode_data_uri(uri, workdir)
            return describe_local(path, {"content_type": content_type, **given})
        if scheme == "file":
            return self._local(unquote(urlparse(uri).path), given)
        if scheme in ("http", "https"):
            return describe_local(await self._download(uri, workdir), given)
        if scheme:
            raise FileFetchError(f"unsupported URI scheme {scheme!r} in {uri!r}")
        return self._local(uri, {k: v for k, v in given.items() if k != "uri"})

    async def publish(self, value: dict[str, Any], scope: Optional[FileScope] = None) -> dict[str, Any]:
        return value

    @staticmethod
    def _local(path: str, given: dict[str, Any]) -> dict[str, Any]:
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(path):
            raise FileFetchError(f"no such file: {path}")
        return describe_local(path, given)

    @staticmethod
    async def _download(url: str, workdir: Path) -> str:
        import httpx

        name = os.path.basename(urlparse(url).path) or "download"
        path = workdir / name
        async with httpx.AsyncClient(follow_redirects=True, timeout=120) as client:
            async with client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise FileFetchError(f"GET {url} answered {response.status_code}")
                with open(path, "wb") as out:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)
        return str(path)

