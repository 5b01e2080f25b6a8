"""Where the client sends requests, with which key, and how long it waits.

There is deliberately no default server: a client that silently talked to a remote
service when nothing was configured would send inputs somewhere the user never chose.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlparse

import httpx

from ._errors import ConfigurationError

API_KEY_ENV = "INFERENCE_API_KEY"
BASE_URL_ENV = "INFERENCE_BASE_URL"
USER_AGENT = "inferencesh-ray-py/0.1.0"

# Each applies per network operation (connect, one read, one write), as httpx applies them.
DEFAULT_TIMEOUT_S = 30.0
# A stream read waits this long for the next line; the server re-sends the task every
# 15 s while it is idle, so a silent minute means the connection is dead.
DEFAULT_STREAM_TIMEOUT_S = 60.0
# A request the server refused for load (429: nothing was created) is tried again this often.
DEFAULT_MAX_RETRIES = 2

STREAM_HEADERS = {
    "Accept": "application/x-ndjson",
    "Cache-Control": "no-cache",
    "Accept-Encoding": "identity",
}


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    api_key: Optional[str]
    timeout: float
    stream_timeout: float
    max_retries: int = DEFAULT_MAX_RETRIES

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def httpx_timeout(self, read: Optional[float] = None) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=self.timeout if read is None else read)


def resolve_config(
    api_key: Optional[str], base_url: Optional[str], timeout: float, stream_timeout: float,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> ClientConfig:
    """Arguments first, then INFERENCE_API_KEY / INFERENCE_BASE_URL; ConfigurationError without a server."""
    url = (base_url or os.environ.get(BASE_URL_ENV) or "").strip()
    if not url:
        raise ConfigurationError(
            f"no server address: pass base_url=... or set {BASE_URL_ENV} "
            "(for a server on this machine: http://127.0.0.1:8000)"
        )
    if urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
        raise ConfigurationError(f"base URL {url!r} is not an http(s) URL like http://127.0.0.1:8000")
    if timeout <= 0 or stream_timeout <= 0:
        raise ConfigurationError("timeout and stream_timeout must be positive numbers of seconds")
    if max_retries < 0:
        raise ConfigurationError("max_retries must be 0 (never retry) or more")
    # The API key is optional: a server with no keys answers requests from its own machine.
    key = api_key or os.environ.get(API_KEY_ENV) or None
    return ClientConfig(url.rstrip("/"), key, timeout, stream_timeout, max_retries)
