"""The file endpoints: create (`POST /files`), upload (`PUT` to a signed URL), download.

As the official SDK uses them: `POST /files` answers with a list of file objects, each
with a `uri` (a signed download URL, valid as a task input at once) and an absolute
`upload_url`; a `PUT` of the raw bytes there (no `Authorization`) stores the file,
streamed to storage and checked against the announced size. Each PUT writes a part of
its own: the first to complete makes the file, a later or failed one changes nothing.
Downloads (GET or HEAD) stream back with the file's content type as stored and honour a
single HTTP range.
"""

from __future__ import annotations

import asyncio
import re
from typing import IO, Any, AsyncIterator, Awaitable, Callable, Optional
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response, StreamingResponse

from .envelope import envelope
from .problems import ApiProblem, not_found
from .server_files import ServerFiles
from .storage import DEFAULT_MEDIA_TYPE, MAX_MEDIA_TYPE_CHARS, FileStore, StoredFile, is_media_type
from .store import now_iso
from .zerocopy import EXTENSION as ZERO_COPY

CHUNK = 1 << 20
_LENGTH = re.compile(r"[0-9]{1,18}")
_RANGE = re.compile(r"[ \t]*bytes=([0-9]*)-([0-9]*)[ \t]*")
_PAST_ANY_FILE = 1 << 62
_NOT_QUOTABLE = re.compile(r'[^\x20-\x7e]|["\\]')


class FileRequest(BaseModel):
    """One file to create; other keys the SDK sends (`uri`, `path`, `public`) are ignored."""

    model_config = ConfigDict(extra="allow")

    filename: Optional[str] = Field(None, description="The file's name (default: file)")
    content_type: Optional[str] = Field(None, description="Its media type (default application/octet-stream)")
    size: Optional[int] = Field(None, ge=0, description="Its size in bytes; the upload must match it")

    @field_validator("content_type")
    @classmethod
    def _a_media_type(cls, value: Optional[str]) -> Optional[str]:
        # It is sent back as the download's Content-Type: a CR/LF or a non-Latin-1 character there breaks the response.
        if value and not is_media_type(value):
            raise ValueError(f"{value[:60]!r} is not a media type; give type/subtype with optional ;name=value "
                             f"parameters, e.g. image/png, in at most {MAX_MEDIA_TYPE_CHARS} visible ASCII characters")
        return value


class CreateFiles(BaseModel):
    files: list[FileRequest] = Field(min_length=1, max_length=100)


def files_router(files: ServerFiles, owner: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(tags=["files"])
    store, limit = files.store, files.config.max_file_bytes

    def describe(file: StoredFile, request: Request, upload: bool = False) -> dict[str, Any]:
        base = files.base_url(request)
        dto = {"id": file.id, **files.file_value(file, base), "created_at": now_iso(file.created_at)}
        if upload:
            dto["upload_url"] = files.signer.upload_url(base, file.id)
        return dto

    async def file_or_404(file_id: str) -> StoredFile:
        file = await asyncio.to_thread(store.get, file_id)
        if file is None:
            raise not_found(f"no file {file_id!r}")
        return file

    @router.post("/files", summary="Create files; PUT each one's bytes to its upload_url")
    async def create_files(body: CreateFiles, request: Request, caller: str = Depends(owner)) -> JSONResponse:
        for index, wanted in enumerate(body.files):
            if wanted.size is not None and wanted.size > limit:
                raise ApiProblem(413, "invalid_request", f"files.{index}.size: {wanted.size} bytes is over this server's limit of {limit}")
        created = [
            await asyncio.to_thread(store.create, caller, wanted.filename, wanted.content_type, wanted.size)
            for wanted in body.files
        ]
        return envelope([describe(f, request, upload=True) for f in created])

    @router.put("/files/{file_id}/upload", summary="Upload a file's bytes (signed URL; no API key needed)")
    async def upload(file_id: str, request: Request, expires: Optional[str] = None, signature: Optional[str] = None) -> JSONResponse:
        refused = files.signer.check("put", file_id, expires, signature)
        if refused is not None:
            raise ApiProblem(403, "forbidden", f"upload refused: {refused}; ask POST /files for a new upload_url")
        file = await file_or_404(file_id)
        if file.complete:
            raise _already_uploaded()
        cap = limit if file.size is None else file.size
        declared = request.headers.get("content-length", "")
        if _LENGTH.fullmatch(declared) and int(declared) > cap:
            raise _too_large(int(declared), cap, file.size is not None)
        try:
            done = await _upload(store, file, request.stream(), cap)
        except ClientDisconnect:
            # Nobody is left to read an answer; handled here so it is not logged as a failure of ours.
            raise ApiProblem(400, "invalid_request", "the client went away before the whole body came; PUT it again") from None
        if done is None:
            raise _already_uploaded()
        return envelope(describe(done, request))

    @router.get("/files/{file_id}", summary="A file you own, with a fresh download URL")
    async def get_file(file_id: str, request: Request, caller: str = Depends(owner)) -> JSONResponse:
        file = await file_or_404(file_id)
        if file.owner != caller:
            raise not_found(f"no file {file_id!r}")
        return envelope(describe(file, request))

    @router.get("/files/{file_id}/{filename}", summary="Download a file (signed URL, or your API key)")
    # HEAD is part of GET in HTTP (RFC 9110), so it is left out of the API description, as Starlette does.
    @router.head("/files/{file_id}/{filename}", include_in_schema=False)
    async def download(file_id: str, filename: str, request: Request, expires: Optional[str] = None,
                       signature: Optional[str] = None) -> Response:
        file = await file_or_404(file_id)
        refused = files.signer.check("get", file_id, expires, signature)
        if refused is not None and not await _owned_by(file, request, owner):
            if refused == "this link has expired":
                raise ApiProblem(403, "forbidden", "this link has expired; GET /files/{id} with your key for a new one")
            raise not_found(f"no file {file_id!r}")
        if not file.complete:
            raise ApiProblem(409, "conflict", "this file's upload has not finished")
        size = file.size or 0
        start, end = _byte_range(request.headers.get("range"), size)
        headers = {
            "accept-ranges": "bytes",
            "content-length": str(end - start),
            # As stored: given as a header, Starlette adds no charset to a text/* type.
            "content-type": _served_type(file.content_type),
            "x-content-type-options": "nosniff",
            "content-disposition": _content_disposition(file.filename),
            "cache-control": "private, max-age=3600",
        }
        status = 200
        if end - start != size:
            status = 206
            headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        path = store.local_path(file)
        zero_copy = path is not None and ZERO_COPY in (request.scope.get("extensions") or {})
        try:
            # Opened before the answer starts, so bytes gone from storage get a clear 410, not a broken 200.
            handle = await asyncio.to_thread(open, path, "rb") if zero_copy else await asyncio.to_thread(store.open_read, file)
        except FileNotFoundError:
            raise ApiProblem(410, "gone", "this file's bytes are no longer in storage; upload it again (POST /files)") from None
        if zero_copy:
            return _ZeroCopyResponse(handle, start, end, status_code=status, headers=headers)
        return StreamingResponse(_read(handle, start, end), status_code=status, headers=headers)

    return router


async def _owned_by(file: StoredFile, request: Request, owner: Callable[..., Awaitable[str]]) -> bool:
    try:
        return await owner(request) == file.owner
    except ApiProblem:
        return False


def _too_large(size: int, limit: int, announced: bool) -> ApiProblem:
    what = "the announced size" if announced else "this server's limit"
    return ApiProblem(413, "invalid_request", f"upload of {size}+ bytes is over {what} of {limit} bytes")


def _already_uploaded() -> ApiProblem:
    return ApiProblem(409, "conflict", "this file is already uploaded; files are immutable, create a new one")


async def _upload(store: FileStore, file: StoredFile, body: AsyncIterator[bytes], limit: int) -> Optional[StoredFile]:
    """Store the body as the file's bytes; None when another upload completed the file first.

    The body goes to a part of its own, made the file's bytes only once whole and checked:
    an upload that fails, or comes second (an SDK retry while the first still streams),
    leaves the file as it was and its part removed.
    """
    announced = file.size is not None
    part, handle = await asyncio.to_thread(store.open_part, file)
    try:
        size = await _write(handle, body, limit, announced)
        if announced and size != file.size:
            raise ApiProblem(400, "invalid_request", f"received {size} bytes, but {file.size} were announced; upload it again")
        return await asyncio.to_thread(store.commit, file, part, size)
    except BaseException:
        await asyncio.to_thread(store.discard, file, part)
        raise


async def _write(handle: IO[bytes], body: AsyncIterator[bytes], limit: int, announced: bool) -> int:
    """Stream the body to storage in 1 MiB writes, never more than `limit` bytes.

    Each write runs in a thread while the next MiB comes in: waiting for it first would
    stop reading the socket (flow control) for as long as storage takes. At most one
    write is in flight, so a slow store still slows the client down instead of piling
    up in memory (about 2 MiB held per upload).
    """
    received, buffer = 0, bytearray()
    writing: Optional[asyncio.Future] = None
    try:
        async for chunk in body:
            received += len(chunk)
            if received > limit:
                raise _too_large(received, limit, announced)
            buffer += chunk
            if len(buffer) >= CHUNK:
                if writing is not None:
                    await asyncio.shield(writing)
                writing, buffer = asyncio.ensure_future(asyncio.to_thread(handle.write, buffer)), bytearray()
        if writing is not None:
            await asyncio.shield(writing)
        if buffer:
            await asyncio.to_thread(handle.write, buffer)
    finally:
        if writing is not None:
            await asyncio.gather(writing, return_exceptions=True)  # never close the handle under a write
        await asyncio.to_thread(handle.close)
    return received


async def _read(handle: IO[bytes], start: int, end: int) -> AsyncIterator[bytes]:
    """The bytes [start, end) of an open file in 1 MiB chunks, each read (in a thread) while the one before is
    being sent; the handle is closed at the end."""
    reading: Optional[asyncio.Future] = None
    left = end - start

    def read_next() -> Optional[asyncio.Future]:
        return asyncio.ensure_future(asyncio.to_thread(handle.read, min(CHUNK, left))) if left > 0 else None

    try:
        await asyncio.to_thread(handle.seek, start)
        reading = read_next()
        while reading is not None:
            chunk = await asyncio.shield(reading)
            if not chunk:
                return
            left -= len(chunk)
            reading = read_next()
            yield chunk
    finally:
        if reading is not None:
            await asyncio.gather(reading, return_exceptions=True)  # never close the handle under a read
        await asyncio.to_thread(handle.close)


class _ZeroCopyResponse(Response):
    """The bytes [start, end) of an open file on local disk, sent by the server with sendfile (zerocopy.py);
    the handle is closed at the end."""

    def __init__(self, handle: IO[bytes], start: int, end: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.handle, self.start, self.end = handle, start, end

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send({"type": ZERO_COPY, "file": self.handle, "offset": self.start, "count": self.end - self.start})
        finally:
            self.handle.close()


def _served_type(content_type: str) -> str:
    # A file recorded before content types were checked may hold one no header can carry.
    return content_type if is_media_type(content_type) else DEFAULT_MEDIA_TYPE


def _content_disposition(filename: str) -> str:
    """`inline` with the name per RFC 6266: an ASCII fallback in which quotes and backslashes are
    replaced (so a name cannot add parameters), and the exact name as UTF-8 `filename*` when they differ."""
    fallback = _NOT_QUOTABLE.sub("_", filename)
    if fallback == filename:
        return f'inline; filename="{filename}"'
    return f"inline; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='', errors='replace')}"


def _byte_range(header: Optional[str], size: int) -> tuple[int, int]:
    """[start, end) of a single `bytes=` range; the whole file without one, or for one RFC 9110 lets a
    server ignore: several ranges, or an invalid one (`bytes=5-2`)."""
    match = _RANGE.fullmatch(header or "")
    if not match or match.group(1) == match.group(2) == "":
        return 0, size
    first, last = (_position(digits) if digits else None for digits in match.groups())
    if first is None:
        start, end = max(0, size - last), size
    elif last is None:
        start, end = first, size
    elif last < first:
        return 0, size
    else:
        start, end = first, min(last + 1, size)
    if start >= end:
        raise ApiProblem(416, "invalid_request", f"range {header[:60]!r} is outside the file's {size} bytes",
                         headers={"content-range": f"bytes */{size}"})
    return start, end


def _position(digits: str) -> int:
    """A range position; one of over 18 digits is past the end of any file (and int() of thousands of digits raises)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else _PAST_ANY_FILE
