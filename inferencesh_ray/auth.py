"""Bearer API keys: who is calling, and whose tasks they may see.

Keys come from `INFERENCESH_RAY_API_KEYS` (comma-separated) and/or a keys file (one per
line, `#` comments). A key's tasks are visible to that key only: each task records the
key's owner id (a hash, never the key). With no keys configured the server answers only
requests from this machine.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from pathlib import Path
from typing import Optional

from .problems import ApiProblem

ENV_KEYS = "INFERENCESH_RAY_API_KEYS"
LOCAL_OWNER = "local"


def load_keys(keys_file: Optional[str] = None) -> list[str]:
    keys = [key.strip() for key in os.environ.get(ENV_KEYS, "").split(",") if key.strip()]
    if keys_file:
        for line in Path(keys_file).expanduser().read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                keys.append(line)
    return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Auth:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    @property
    def open(self) -> bool:
        """No keys configured: any local caller is the single local owner."""
        return not self._keys

    def owner(self, authorization: Optional[str], client_host: Optional[str]) -> str:
        """The owner id for a request's Authorization header; ApiProblem(401) if refused."""
        if self.open:
            if client_host is None or is_loopback(client_host):
                return LOCAL_OWNER
            raise ApiProblem(
                401, "unauthorized", "this server has no API keys configured, so it only answers requests from its own machine"
            )
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiProblem(401, "unauthorized", "missing API key: send `Authorization: Bearer <key>`")
        given = token.strip().encode()
        # Compare against every key, in constant time each, so timing tells nothing.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise ApiProblem(401, "unauthorized", "invalid API key")
        return "key-" + hashlib.sha256(given).hexdigest()[:24]
