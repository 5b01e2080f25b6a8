"""Which inferencesh_ray code a process loaded.

The task store and the session registry are detached actors: they outlive deploys, and
after an upgrade they keep running the code they started with, which a new ingress may
no longer speak. Each says what it loaded, so an ingress can refuse to start against
one that differs, saying what to do, rather than fail every request.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def _fingerprint() -> str:
    digest = hashlib.sha1()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


# Read once, on import: what this process runs, whatever is on disk later.
LOADED = _fingerprint()
