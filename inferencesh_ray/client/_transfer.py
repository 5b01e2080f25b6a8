"""The PUT of an upload's bytes, built the same way by the sync and async clients."""

from __future__ import annotations

from typing import Any, Union

import httpx

from ._base import file_url_request
from ._files import UploadSource


def upload_request(http: Union[httpx.Client, httpx.AsyncClient], url: str, source: UploadSource, content: Any) -> httpx.Request:
    """The PUT of `content` to the upload URL: the bytes themselves, or, for a local file,
    its pieces as they are read (an iterator, async for the async client).

    Streamed pieces are sent with the file's size as Content-Length, where httpx would
    otherwise send a body of unknown length chunked: the server checks the size it was
    told, and an S3-style signed URL refuses a chunked PUT.
    """
    request = file_url_request(http, "PUT", url, content=content, content_type=source.content_type)
    if source.content is None:
        request.headers.pop("Transfer-Encoding", None)
        request.headers["Content-Length"] = str(source.size)
    return request
