"""The file endpoints: create (`POST /files`), upload (`PUT` to a signed URL), download.

As the official SDK uses them: `POST /files` answers with a list of file objects, each
with a `uri` (a signed download URL, valid as a task input at once) and an absolute
`upload_url`; a `PUT` of the raw bytes there (no `Authorization`) stores the file,
streamed to storage and checked against the announced size. Downloads stream back with
the file's content type and honour single HTTP ranges.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response, StreamingResponse

from .problems import ApiProblem, not_found
from .server_files import ServerFiles
from .storage import StoredFile
from .store import now_iso
from .zerocopy import EXTENSION as ZERO_COPY

CHUNK = 1 << 20


class FileRequest(BaseModel):
    """One file to create; other keys the SDK sends (`uri`, `path`, `public`) are ignored."""

    model_config = ConfigDict(extra="allow")

    filename: Optional[str] = Field(None, description="The file's name (default: file)")
    content_type: Optional[str] = Field(None, description="Its media type (default application/octet-stream)")
    size: Optional[int] = Field(None, ge=0, description="Its size in bytes; the upload must match it")


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
            await asyncio.to_thread(store.create, caller, wanted.filename, wanted.content_type, wanted.size or 0)
            for wanted in body.files
        ]
        return JSONResponse({"success": True, "data": [describe(f, request, upload=True) for f in created], "messages": []})

    @router.put("/files/{file_id}/upload", summary="Upload a file's bytes (signed URL; no API key needed)")
    async def upload(file_id: str, request: Request, expires: Optional[str] = None, signature: Optional[str] = None) -> JSONResponse:
        refused = files.signer.check("put", file_id, expires, signature)
        if refused is not None:
            raise ApiProblem(403, "forbidden", f"upload refused: {refused}; ask POST /files for a new upload_url")
        file = await file_or_404(file_id)
        if file.complete:
            raise ApiProblem(409, "conflict", "this file is already uploaded; files are immutable, create a new one")
        announced = file.size if file.size else limit
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > announced:
            raise _too_large(int(declared), announced, file.size > 0)
        size = await _write(store, file, request.stream(), announced, file.size > 0)
        if file.size and size != file.size:
            raise ApiProblem(400, "invalid_request", f"received {size} bytes, but {file.size} were announced; upload it again")
        done = await asyncio.to_thread(store.complete, file, size)
        return JSONResponse({"success": True, "data": describe(done, request), "messages": []})

    @router.get("/files/{file_id}", summary="A file you own, with a fresh download URL")
    async def get_file(file_id: str, request: Request, caller: str = Depends(owner)) -> JSONResponse:
        file = await file_or_404(file_id)
        if file.owner != caller:
            raise not_found(f"no file {file_id!r}")
        return JSONResponse({"success": True, "data": describe(file, request), "messages": []})

    @router.get("/files/{file_id}/{filename}", summary="Download a file (signed URL, or your API key)")
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
        start, end = _byte_range(request.headers.get("range"), file.size)
        headers = {
            "accept-ranges": "bytes",
            "content-length": str(end - start),
            "content-disposition": f"inline; filename=\"{file.filename}\"",
            "cache-control": "private, max-age=3600",
        }
        status = 200
        if end - start != file.size:
            status = 206
            headers["content-range"] = f"bytes {start}-{end - 1}/{file.size}"
        path = store.local_path(file)
        if path is not None and ZERO_COPY in (request.scope.get("extensions") or {}):
            return _ZeroCopyResponse(path, start, end, status_code=status, media_type=file.content_type, headers=headers)
        return StreamingResponse(_read(store, file, start, end), status_code=status, media_type=file.content_type,
                                 headers=headers)

    return router


async def _owned_by(file: StoredFile, request: Request, owner: Callable[..., Awaitable[str]]) -> bool:
    if not request.headers.get("authorization"):
        return False
    try:
        return await owner(request) == file.owner
    except ApiProblem:
        return False


def _too_large(size: int, limit: int, announced: bool) -> ApiProblem:
    what = "the announced size" if announced else "this server's limit"
    return ApiProblem(413, "invalid_request", f"upload of {size}+ bytes is over {what} of {limit} bytes")


async def _write(store: Any, file: StoredFile, body: AsyncIterator[bytes], limit: int, announced: bool) -> int:
    """Stream the body to storage in 1 MiB writes, never more than `limit` bytes.

    Each write runs in a thread while the next MiB comes in: waiting for it first would
    stop reading the socket (flow control) for as long as storage takes. At most one
    write is in flight, so a slow store still slows the client down instead of piling
    up in memory (about 2 MiB held per upload).
    """
    received, buffer = 0, bytearray()
    handle = await asyncio.to_thread(store.open_write, file)
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


async def _read(store: Any, file: StoredFile, start: int, end: int) -> AsyncIterator[bytes]:
    """The bytes [start, end) in 1 MiB chunks, each read (in a thread) while the one before is being sent."""
    handle = await asyncio.to_thread(store.open_read, file)
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
    """The bytes [start, end) of a file on local disk, sent by the server with sendfile (zerocopy.py)."""

    def __init__(self, path: str, start: int, end: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path, self.start, self.end = path, start, end

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        handle = await asyncio.to_thread(open, self.path, "rb")
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send({"type": ZERO_COPY, "file": handle, "offset": self.start, "count": self.end - self.start})
        finally:
            handle.close()


def _byte_range(header: Optional[str], size: int) -> tuple[int, int]:
    """[start, end) of a single `bytes=` range; the whole file without one (or for forms we don't serve)."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
    if not match or match.group(1) == match.group(2) == "":
        return 0, size
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last) + 1 if last else size, size)
    else:
        start, end = max(0, size - int(last)), size
    if start >= end:
        raise ApiProblem(416, "invalid_request", f"range {header!r} is outside the file's {size} bytes",
                         headers={"content-range": f"bytes */{size}"})
    return start, end
