"""A server's file policy: which file values an input may name, and where outputs go.

An input file may be a file of the server's own store (its URL, as `POST /files` or an
output gave it: the caller's own file, or any file through a signed URL the server
issued), a `data:` URI, or, only when the operator allows it, an http(s) URL on a
public address. Nothing else: never a path or `file://` URI on the server's disk, never
an internal address. The ingress checks this before a task is created (422 naming the
field); the app host checks it again when it fetches the file on a replica.
Output files the app wrote are stored for the task's owner and become signed URLs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, urljoin, urlparse

import httpx

from .errors import FieldError
from .file_access import FileFetchError, FileScope, as_file_dict, decode_data_uri, describe_local
from .file_fields import file_slots
from .signing import UrlSigner
from .storage import FileStore, StoredFile

_OWN_URL = re.compile(r"/files/([0-9a-f]{32})/[^/]+$")
_MAX_REDIRECTS = 5


@dataclass(frozen=True)
class FilesConfig:
    """The file settings every ingress and replica of an application shares."""

    root: str
    signing_key: bytes
    options: dict[str, Any] = field(default_factory=dict)
    url_ttl_s: float = 7 * 24 * 3600
    max_file_bytes: int = 1 << 30
    allow_remote_urls: bool = False
    allow_private_urls: bool = False
    public_url: Optional[str] = None
    """The server's URL as clients reach it (behind a proxy); by default, the URL each request came to."""


@dataclass(frozen=True)
class Source:
    """Where an input file's bytes come from: `data`, `stored` (with `file`) or `remote`."""

    kind: str
    uri: str
    file: Optional[StoredFile] = None


class ServerFiles:
    def __init__(self, config: FilesConfig) -> None:
        self.config = config
        self.store = FileStore(config.root, config.options)
        self.signer = UrlSigner(config.signing_key, config.url_ttl_s)

    # -- what clients see ---------------------------------------------------------

    def base_url(self, request: Any) -> str:
        """Where a client reaches this server, for the file URLs it is given."""
        return (self.config.public_url or str(request.base_url)).rstrip("/")

    def file_value(self, file: StoredFile, base_url: str) -> dict[str, Any]:
        """A file as it appears in a task's output: what the official SDK's `File` accepts back."""
        return {
            "uri": self.signer.download_url(base_url, file.id, file.filename),
            "filename": file.filename,
            "content_type": file.content_type,
            "size": file.size,
        }

    # -- inputs -------------------------------------------------------------------

    def resolve(self, value: Any, owner: str) -> Source:
        """Where an input file value may be read from, for `owner`; FileFetchError says why not."""
        given = as_file_dict(value) if isinstance(value, (str, dict)) else {}
        if given.get("path"):
            raise FileFetchError("a server takes files by `uri`, never by `path`; upload the file (POST /files) first")
        uri = given.get("uri")
        if not isinstance(uri, str) or not uri:
            raise FileFetchError("a file needs a `uri`: a URL from POST /files, a task output, or a data: URI")
        parsed = urlparse(uri)
        if parsed.scheme == "data":
            return Source("data", uri)
        if parsed.scheme in ("http", "https"):
            stored = self._own_file(parsed)
            if stored is not None:
                return self._authorize(stored, parsed, owner, uri)
            if self.config.allow_remote_urls:
                self._check_public(parsed)
                return Source("remote", uri)
        allowed = "a URL from POST /files or a task output, or a data: URI"
        if self.config.allow_remote_urls:
            allowed += ", or an http(s) URL on a public address"
        raise FileFetchError(f"{_shorten(uri)} is refused: this server reads {allowed}")

    async def check(self, schema: dict, data: Any, owner: str) -> list[FieldError]:
        """Every file value of an input that `owner` may not use, with why."""
        errors = []
        for slot in file_slots(schema, data):
            try:
                await asyncio.to_thread(self.resolve, slot.value, owner)
            except FileFetchError as exc:
                errors.append(FieldError(slot.loc, str(exc)))
        return errors

    async def fetch(self, value: Any, workdir: Path, scope: Optional[FileScope] = None) -> dict[str, Any]:
        if scope is None:
            raise FileFetchError("this server fetches files only for a task of a known owner")
        source = await asyncio.to_thread(self.resolve, value, scope.owner)
        given = {key: item for key, item in as_file_dict(value).items() if key != "path"}
        if source.kind == "data":
            path, content_type = await decode_data_uri(source.uri, workdir)
            return describe_local(path, {"content_type": content_type, **given})
        if source.kind == "stored":
            stored = source.file
            path = str(workdir / stored.filename)
            await asyncio.to_thread(self.store.get_local, stored, path)
            return describe_local(path, {**given, "filename": stored.filename, "content_type": stored.content_type})
        return describe_local(await self._download(source.uri, workdir), given)

    # -- outputs ------------------------------------------------------------------

    async def publish(self, value: dict[str, Any], scope: Optional[FileScope] = None) -> dict[str, Any]:
        if scope is None:
            raise FileFetchError("this server stores output files only for a task of a known owner")
        stored = await asyncio.to_thread(
            self.store.put_local, scope.owner, value["path"], value.get("filename"), value.get("content_type")
        )
        return self.file_value(stored, scope.base_url)

    # -- internals ----------------------------------------------------------------

    def _own_file(self, parsed) -> Optional[StoredFile]:
        match = _OWN_URL.search(parsed.path)
        return self.store.get(match.group(1)) if match else None

    def _authorize(self, stored: StoredFile, parsed, owner: str, uri: str) -> Source:
        query = parse_qs(parsed.query)
        signed = self.signer.check("get", stored.id, *(query.get(k, [None])[0] for k in ("expires", "signature")))
        if stored.owner != owner and signed is not None:
            # Another key's file, without a valid link: as if it did not exist.
            raise FileFetchError(f"no such file: {_shorten(uri)}")
        if not stored.complete:
            raise FileFetchError(f"{_shorten(uri)} is still being uploaded; PUT its bytes to the upload_url first")
        return Source("stored", uri, stored)

    def _check_public(self, parsed) -> None:
        if self.config.allow_private_urls:
            return
        host = parsed.hostname
        if not host:
            raise FileFetchError(f"{parsed.geturl()!r} has no host")
        try:
            infos = socket.getaddrinfo(host, parsed.port or 443, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise FileFetchError(f"cannot resolve {host}: {exc.strerror}") from exc
        for info in infos:
            address = ipaddress.ip_address(info[4][0].split("%")[0])
            if not address.is_global:
                raise FileFetchError(f"{host} is an internal address ({address}); this server only fetches public URLs")

    async def _download(self, url: str, workdir: Path) -> str:
        limit = self.config.max_file_bytes
        path = workdir / (os.path.basename(urlparse(url).path) or "download")
        async with httpx.AsyncClient(timeout=120, follow_redirects=False) as client:
            for _ in range(_MAX_REDIRECTS + 1):
                async with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers["location"])
                        await asyncio.to_thread(self._check_public, urlparse(url))  # each hop, not just the first
                        continue
                    if response.status_code >= 400:
                        raise FileFetchError(f"GET {_shorten(url)} answered {response.status_code}")
                    received = 0
                    with open(path, "wb") as out:
                        async for chunk in response.aiter_bytes():
                            received += len(chunk)
                            if received > limit:
                                raise FileFetchError(f"{_shorten(url)} is larger than this server's limit of {limit} bytes")
                            out.write(chunk)
                    return str(path)
        raise FileFetchError(f"{_shorten(url)} redirects more than {_MAX_REDIRECTS} times")


def _shorten(uri: str, limit: int = 120) -> str:
    """A URI for an error message: data: URIs and long ones cut short."""
    text = uri.split(",", 1)[0] + ",..." if uri.startswith("data:") else uri
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
