"""A server's file policy: which file values an input may name, and where outputs go.

An input file may be a file of the server's own store (its URL, as `POST /files` or an
output gave it: the caller's own file, or any file through a signed URL the server
issued), a well-formed `data:` URI, or, only when the operator allows it, an http(s) URL
on a public address. Nothing else: never a path or `file://` URI on the server's disk,
never an internal address. The ingress checks this before a task is created (422 naming
the field); the app host checks it again when it fetches the file on a replica, where a
remote URL's host is resolved once per connection and the connection made to the very
address checked (a name answering another address by then cannot reach an internal one).
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
from typing import Any, Iterable, Optional, Union
from urllib.parse import ParseResult, parse_qs, unquote, urljoin, urlparse

import anyio
import httpcore
import httpx

from .errors import FieldError
from .file_access import DataUri, FileFetchError, FileScope, as_file_dict, describe_local, parse_data_uri, write_data_uri
from .file_fields import file_slots
from .files import FILE_KEYS
from .json_codec import dumps, loads
from .signing import UrlSigner
from .storage import FileStore, StoredFile, safe_filename

_OWN_URL = re.compile(r"/files/([0-9a-f]{32})/[^/]+$")
_MAX_REDIRECTS = 5
# NAT64 (RFC 6052) reaches IPv4 through IPv6: the well-known prefix embeds the IPv4 address
# in its last 32 bits; the local-use prefix (RFC 8215) is the operator's own, so never public.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")
_Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


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
    """Where an input file's bytes come from: `data` (with `data`), `stored` (with `file`) or `remote`."""

    kind: str
    uri: str
    file: Optional[StoredFile] = None
    data: Optional[DataUri] = None


class ServerFiles:
    stores_outputs = True

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

    def stored_in(self, values: Iterable[Any], owner: str) -> list[tuple[StoredFile, str]]:
        """The files of this server that file values name, each once, with the URI naming it: `owner`'s,
        and another key's named by a link it signed (blocks: reads each file's record)."""
        found: dict[str, tuple[StoredFile, str]] = {}
        for value in values:
            uri = as_file_dict(value).get("uri") if isinstance(value, (str, dict)) else None
            file_id = _own_file_id(uri) if isinstance(uri, str) else None
            if file_id is None or file_id in found:
                continue
            file = self.store.get(file_id)
            if file is not None and (file.owner == owner or self._signed_link(file, uri)):
                found[file_id] = (file, uri)
        return list(found.values())

    def _signed_link(self, file: StoredFile, uri: str) -> bool:
        """Whether `uri` is a download link its owner's key was given (expired or not)."""
        return self._link_refusal(file, urlparse(uri).query) in (None, "this link has expired")

    def _link_refusal(self, file: StoredFile, query: str) -> Optional[str]:
        """Why a download link's query does not sign `file`'s download now; None when it does."""
        given = parse_qs(query)
        return self.signer.check("get", file.id, *(given.get(name, [None])[0] for name in ("expires", "signature")))

    # -- inputs -------------------------------------------------------------------

    def resolve(self, value: Any, owner: str) -> Source:
        """Where an input file value may be read from, for `owner`; FileFetchError says why not."""
        given = as_file_dict(value) if isinstance(value, (str, dict)) else {}
        unknown = sorted(set(given) - set(FILE_KEYS))
        if unknown:  # the replica's File would refuse them, after the task exists
            raise FileFetchError(f"unknown file keys {unknown}; give the file's `uri` (an object takes "
                                 "only uri, content_type, size and filename)")
        if given.get("path"):
            raise FileFetchError("a server takes files by `uri`, never by `path`; upload the file (POST /files) first")
        uri = given.get("uri")
        if not isinstance(uri, str) or not uri:
            raise FileFetchError("a file needs a `uri`: a URL from POST /files, a task output, or a data: URI")
        parsed = _parse_url(uri)
        if parsed.scheme == "data":
            return Source("data", uri, data=parse_data_uri(uri))
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
        hint = "" if parsed.scheme else " (a client uploads a local path for you only if that file exists where it runs)"
        raise FileFetchError(f"{_shorten(uri)} is refused: this server reads {allowed}{hint}")

    async def check(self, schema: dict, data: Any, owner: str) -> list[FieldError]:
        """Every file value of an input that `owner` may not use, with why."""
        errors = []
        for slot in file_slots(schema, data):
            try:
                await asyncio.to_thread(self.resolve, slot.value, owner)
            except FileFetchError as exc:
                errors.append(FieldError(slot.loc, str(exc)))
        return errors

    async def identities(self, schema: dict, data: Any, owner: str) -> Any:
        """A copy of an input with each stored file in it replaced by what the file is (name, type,
        size): a run sent again uploads its files again, under new URIs."""
        copy = loads(dumps(data))
        for slot in file_slots(schema, copy):
            try:
                source = await asyncio.to_thread(self.resolve, slot.value, owner)
            except FileFetchError:
                continue
            if source.kind == "stored":
                stored = source.file
                slot.set({"filename": stored.filename, "content_type": stored.content_type, "size": stored.size})
        return copy

    async def fetch(self, value: Any, workdir: Path, scope: Optional[FileScope] = None) -> dict[str, Any]:
        if scope is None:
            raise FileFetchError("this server fetches files only for a task of a known owner")
        source = await asyncio.to_thread(self.resolve, value, scope.owner)
        given = {key: item for key, item in as_file_dict(value).items() if key != "path"}
        if source.kind == "data":
            path = await asyncio.to_thread(write_data_uri, source.data, workdir)
            return describe_local(path, {"content_type": source.data.content_type, **given})
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
        if stored.owner != owner and self._link_refusal(stored, parsed.query) is not None:
            # Another key's file, without a valid link: as if it did not exist.
            raise FileFetchError(f"no such file: {_shorten(uri)}")
        if not stored.complete:
            raise FileFetchError(f"{_shorten(uri)} is still being uploaded; PUT its bytes to the upload_url first")
        return Source("stored", uri, stored)

    def _check_public(self, parsed: ParseResult) -> None:
        """Refuse a URL whose host is internal now, so the ingress answers 422 (the fetch checks again as it connects)."""
        if self.config.allow_private_urls:
            return
        if not parsed.hostname:
            raise FileFetchError(f"{parsed.geturl()!r} has no host")
        _public_addresses(parsed.hostname, parsed.port or 443)

    async def _download(self, url: str, workdir: Path) -> str:
        limit = self.config.max_file_bytes
        path = workdir / safe_filename(unquote(os.path.basename(urlparse(url).path)), "download")
        transport = None if self.config.allow_private_urls else _PublicTransport()
        try:
            async with httpx.AsyncClient(timeout=120, follow_redirects=False, transport=transport) as client:
                for _ in range(_MAX_REDIRECTS + 1):
                    async with client.stream("GET", url) as response:
                        if response.is_redirect:
                            url = _redirect_target(url, response.headers["location"])
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
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise FileFetchError(f"GET {_shorten(url)} failed ({type(exc).__name__}: {exc})") from exc
        except OSError as exc:  # saving it; the message names no path of the server's
            raise FileFetchError(f"{_shorten(url)} could not be saved on the server ({exc.strerror or type(exc).__name__})") from exc
        raise FileFetchError(f"{_shorten(url)} redirects more than {_MAX_REDIRECTS} times")


def _public_addresses(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, when every one is public (blocks); FileFetchError otherwise."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, ValueError) as exc:  # ValueError: a name IDNA cannot encode, or with a NUL
        raise FileFetchError(f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}") from exc
    addresses = list(dict.fromkeys(info[4][0].split("%")[0] for info in infos))
    for address in addresses:
        if not _is_public(ipaddress.ip_address(address)):
            raise FileFetchError(f"{host} is an internal address ({address}); this server only fetches public URLs")
    return addresses


def _is_public(address: _Address) -> bool:
    """Global, and so is any IPv4 address it carries (IPv4-mapped, 6to4, Teredo, NAT64)."""
    if not address.is_global or address in _LOCAL_NAT64:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return True
    carried = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
    if address in _NAT64:
        carried.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return all(_is_public(inner) for inner in carried if inner is not None)


class _PublicOnly(httpcore.AsyncNetworkBackend):
    """Connects only to public addresses, and to the very address it checked: resolving the
    name again to connect could answer another one (DNS rebinding). TLS still verifies and
    sends (SNI) the URL's host name: httpcore takes both from the request, not from here."""

    def __init__(self) -> None:
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None,
                          local_address: Optional[str] = None,
                          socket_options: Optional[Iterable[Any]] = None) -> httpcore.AsyncNetworkStream:
        addresses = await anyio.to_thread.run_sync(_public_addresses, host, port)
        for address in addresses[:-1]:
            try:
                return await self._backend.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                       socket_options=socket_options)
            except httpcore.ConnectError:
                continue  # a host with an address this machine cannot reach (often IPv6) may answer on the next
        return await self._backend.connect_tcp(addresses[-1], port, timeout=timeout, local_address=local_address,
                                               socket_options=socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _PublicTransport(httpx.AsyncHTTPTransport):
    """httpx's transport, connecting through _PublicOnly: httpx takes no network backend of
    its own, so its connection pool is replaced by one that does (same TLS context)."""

    def __init__(self) -> None:
        super().__init__()
        self._pool = httpcore.AsyncConnectionPool(ssl_context=httpx.create_ssl_context(), network_backend=_PublicOnly())


def _own_file_id(value: str) -> Optional[str]:
    """The id in a URL of this server's files (any host: a client may reach it by many names), else None."""
    if not value.startswith(("http://", "https://")):
        return None
    try:
        match = _OWN_URL.search(urlparse(value).path)
    except ValueError:
        return None
    return match.group(1) if match else None


def _parse_url(uri: str) -> ParseResult:
    """`uri` parsed, its port checked; FileFetchError for what is no URL (urlparse raises ValueError)."""
    try:
        parsed = urlparse(uri)
        parsed.port  # parsed only when read: a port that is no number in 0-65535 raises here
    except ValueError as exc:
        raise FileFetchError(f"{_shorten(uri)} is not a valid URL ({exc}); give a URL from POST /files, "
                             "a task output, or a data: URI") from exc
    return parsed


def _redirect_target(url: str, location: str) -> str:
    """Where a redirect from `url` leads, if it is an http(s) URL; FileFetchError otherwise."""
    try:
        target = urljoin(url, location)
        scheme = urlparse(target).scheme
    except ValueError as exc:
        raise FileFetchError(f"{_shorten(url)} redirects to {_shorten(location)}, which is not a valid URL ({exc})") from exc
    if scheme not in ("http", "https"):
        raise FileFetchError(f"{_shorten(url)} redirects to {_shorten(target)}; only http(s) redirects are followed")
    return target


def _shorten(uri: str, limit: int = 120) -> str:
    """A URI for an error message: data: URIs and long ones cut short."""
    text = uri.split(",", 1)[0] + ",..." if uri.startswith("data:") else uri
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
