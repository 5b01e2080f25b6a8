"""RFC 9457 problem+json errors, with the codes the official SDK matches on."""

from __future__ import annotations

import json
from typing import Any, Optional

from starlette.responses import Response

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    410: "Gone",
    413: "Payload too large",
    415: "Unsupported media type",
    416: "Range not satisfiable",
    422: "Validation failed",
    429: "Too many requests",
    500: "Internal error",
    503: "Unavailable",
}


class ApiProblem(Exception):
    """An error answered as problem+json; `code` becomes the SDK's `APIError.code`."""

    def __init__(self, status: int, code: str, detail: str, headers: Optional[dict[str, str]] = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers
        self.extra = extra

    def response(self, headers: Optional[dict[str, str]] = None) -> Response:
        body = {
            "type": f"/errors/{self.code}",
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }
        # ASCII-escaped: `requests` assumes no charset for application/problem+json.
        return Response(json.dumps(body), status_code=self.status, media_type="application/problem+json",
                        headers=headers or self.headers)


def not_found(what: str, **extra: Any) -> ApiProblem:
    return ApiProblem(404, "not_found", what, **extra)


def invalid_fields(errors: list[dict[str, str]]) -> ApiProblem:
    """422 naming every bad field: `errors` are `{"loc": "input.image", "message": ...}`."""
    fields = "; ".join(f"{e['loc']}: {e['message']}" for e in errors)
    return ApiProblem(422, "validation_error", f"invalid request: {fields}", errors=errors)
