"""ASGI middleware around the HTTP API: what every request goes through before routing."""

from __future__ import annotations

import re
from typing import Any

from starlette.exceptions import HTTPException

from .problems import ApiProblem

# A run request's input may carry small files as data: URIs; bigger ones go through POST /files.
MAX_REQUEST_BYTES = 16 << 20
_UPLOAD = re.compile(r"/files/[^/]+/upload$")


class CollapseSlashes:
    """`base_url="http://host:8000/"` makes the SDK request `//apps/run`: route it anyway."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and "//" in scope.get("path", ""):
            scope = dict(scope, path=re.sub("/{2,}", "/", scope["path"]))
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a request body over `max_bytes`, announced or streamed (uploads have a limit of their own)."""

    def __init__(self, app: Any, max_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or _UPLOAD.search(scope.get("path", "")):
            return await self.app(scope, receive, send)
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # Raised while the route reads its body: FastAPI passes HTTPException through to our handler.
                raise HTTPException(413, self._too_large())
            return message

        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await ApiProblem(413, "invalid_request", self._too_large()).response()(scope, receive, send)
        await self.app(scope, limited, send)

    def _too_large(self) -> str:
        return (f"the request body is over this server's limit of {self.max_bytes} bytes; "
                "send large files through POST /files and pass their URI")
