"""The `{"success": true, "data": ..., "messages": [...]}` envelope every JSON answer but an
error's comes in: the official SDK reads `data`, and hands `messages` to `on_message`."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from starlette.responses import JSONResponse

from .json_codec import dumps


class _Envelope(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)


def envelope(data: Any, headers: Optional[dict[str, str]] = None, messages: Sequence[dict] = ()) -> JSONResponse:
    return _Envelope({"success": True, "data": data, "messages": list(messages)}, headers=headers)
