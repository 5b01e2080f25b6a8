"""How the app host turns file values into local files, and local output files into URIs.

The host calls `fetch` for every file in an input before validation, and `publish`
for every file in an output after the function returns. `LocalFiles` is the dev loop's
policy: local paths, `file://`, `data:` and http(s) inputs, outputs left as local paths.
A server's policy is `server_files.ServerFiles`.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol
from urllib.parse import unquote, urlparse


class FileFetchError(Exception):
    """A file value that cannot be made into a local file; the message says why."""


@dataclass(frozen=True)
class FileScope:
    """Whose task a file belongs to, and the server URL its client used (for output URLs)."""

    owner: str
    base_url: str


class FileAccess(Protocol):
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


async def decode_data_uri(uri: str, workdir: Path) -> tuple[str, str]:
    """Write a `data:` URI's bytes under workdir; returns (path, content type)."""

    def decode() -> tuple[str, str]:
        try:
            with urllib.request.urlopen(uri) as response:  # the stdlib decodes data: URLs itself
                content_type = response.headers.get_content_type()
                suffix = mimetypes.guess_extension(content_type) or ""
                path = workdir / f"data{suffix}"
                with open(path, "wb") as out:
                    shutil.copyfileobj(response, out)
        except ValueError as exc:
            raise FileFetchError(f"malformed data: URI ({exc})") from exc
        return str(path), content_type

    return await asyncio.to_thread(decode)


class LocalFiles:
    """The dev loop's files: the developer's own disk and URLs, outputs kept local."""

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

