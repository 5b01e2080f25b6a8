"""Signed file URLs: what lets a client without a key download a file, or upload one.

The official SDK downloads output files and PUTs uploads with no `Authorization`
header, so those URLs carry their own credential: `expires` and an HMAC-SHA256
`signature` over the action (`get` or `put`), the file id and the expiry.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Optional
from urllib.parse import urlencode

# Both come from the query string, so anything may arrive: only plain ASCII digits (int() of
# thousands of them raises) and the hex digest we issue (compare_digest refuses non-ASCII).
_EXPIRES = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-f]{40}")
_NOT_URL_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class UrlSigner:
    def __init__(self, key: bytes, ttl_s: float) -> None:
        self._key = key
        self.ttl_s = ttl_s

    def download_url(self, base_url: str, file_id: str, filename: str) -> str:
        # The route reads only the id: the name is there for clients that name a download after
        # the URL, as the official SDK's File does without unquoting it ("my%20photo.png").
        name = _NOT_URL_SAFE.sub("_", filename)
        return f"{base_url}/files/{file_id}/{name if name.strip('.') else 'file'}?{self._query('get', file_id)}"

    def upload_url(self, base_url: str, file_id: str) -> str:
        return f"{base_url}/files/{file_id}/upload?{self._query('put', file_id)}"

    def check(self, action: str, file_id: str, expires: Optional[str], signature: Optional[str]) -> Optional[str]:
        """None when the signature is good and current; otherwise why not."""
        if not _EXPIRES.fullmatch(expires or "") or not _SIGNATURE.fullmatch(signature or ""):
            return "missing or malformed signature"
        if not hmac.compare_digest(self._sign(action, file_id, int(expires)), signature):
            return "bad signature"
        if int(expires) < time.time():
            return "this link has expired"
        return None

    def _query(self, action: str, file_id: str) -> str:
        expires = int(time.time() + self.ttl_s)
        return urlencode({"expires": expires, "signature": self._sign(action, file_id, expires)})

    def _sign(self, action: str, file_id: str, expires: int) -> str:
        message = f"{action}:{file_id}:{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:40]
