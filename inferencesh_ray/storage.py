"""Where files live: one storage root URL, through fsspec.

`file:///…` (the default, under the server's data directory) keeps files on local disk;
`s3://bucket/prefix` keeps them in S3 (or any S3-protocol store) through s3fs, so every
node of a cluster reads and writes the same files. Each file is two objects under
`ROOT/files/<id>/`: `data` (the bytes) and `meta.json` (owner, filename, content type,
size, and whether its upload finished). Ids are random, so a key never comes from input.
All methods block: async callers run them in a thread.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any, Optional

import fsspec

_FILE_ID = re.compile(r"^[0-9a-f]{32}$")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")
SIGNING_KEY_ENV = "INFERENCESH_RAY_SIGNING_KEY"


def default_root(data_dir: str) -> str:
    return Path(os.path.expanduser(data_dir), "files").resolve().as_uri()


def is_file_id(value: str) -> bool:
    return bool(_FILE_ID.match(value))


def safe_filename(name: Optional[str], default: str = "file") -> str:
    """A filename for URLs and downloads: its last path part, no control characters, at most 200 characters."""
    name = _UNSAFE.sub("_", os.path.basename((name or "").replace("\\", "/"))).strip(" .")
    return name[-200:] or default


@dataclass(frozen=True)
class StoredFile:
    id: str
    owner: str
    filename: str
    content_type: str
    size: int
    """Announced while the upload is pending, then the stored size."""
    created_at: float
    complete: bool = False


class FileStore:
    def __init__(self, root: str, options: Optional[dict[str, Any]] = None) -> None:
        self.root_url = root
        self.fs, self.root = fsspec.core.url_to_fs(root, **(options or {}))

    def create(self, owner: str, filename: Optional[str], content_type: Optional[str], size: int) -> StoredFile:
        """Record a file whose bytes are still to come."""
        file = StoredFile(
            id=uuid.uuid4().hex,
            owner=owner,
            filename=safe_filename(filename),
            content_type=content_type or "application/octet-stream",
            size=size,
            created_at=time.time(),
        )
        self._write_meta(file)
        return file

    def get(self, file_id: str) -> Optional[StoredFile]:
        """The file with this id, or None (also for anything that is not an id)."""
        if not is_file_id(file_id):
            return None
        try:
            with self.fs.open(self._path(file_id, "meta.json"), "rb") as handle:
                return StoredFile(**json.load(handle))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def open_write(self, file: StoredFile) -> IO[bytes]:
        return self.fs.open(self._path(file.id, "data"), "wb")

    def open_read(self, file: StoredFile) -> IO[bytes]:
        return self.fs.open(self._path(file.id, "data"), "rb")

    def local_path(self, file: StoredFile) -> Optional[str]:
        """The path of the file's bytes when they are on this machine's disk (a `file://` root), else None."""
        return self._path(file.id, "data") if "file" in self.fs.protocol else None

    def complete(self, file: StoredFile, size: int) -> StoredFile:
        done = replace(file, size=size, complete=True)
        self._write_meta(done)
        return done

    def put_local(self, owner: str, path: str, filename: Optional[str], content_type: Optional[str]) -> StoredFile:
        """Store a local file (an app's output) for `owner`."""
        file = self.create(owner, filename or os.path.basename(path), content_type, os.path.getsize(path))
        self.fs.put_file(path, self._path(file.id, "data"))
        return self.complete(file, file.size)

    def get_local(self, file: StoredFile, path: str) -> None:
        self.fs.get_file(self._path(file.id, "data"), path)

    def delete(self, file: StoredFile) -> None:
        self.fs.rm(self._path(file.id), recursive=True)

    def signing_key(self) -> bytes:
        """The key that signs file URLs: $INFERENCESH_RAY_SIGNING_KEY, else one kept in the store (made once)."""
        if os.environ.get(SIGNING_KEY_ENV):
            return os.environ[SIGNING_KEY_ENV].encode()
        path = self.root.rstrip("/") + "/.signing-key"
        if not self.fs.exists(path):
            self.fs.makedirs(self.root, exist_ok=True)
            with self.fs.open(path, "wb") as handle:
                handle.write(secrets.token_hex(32).encode())
        with self.fs.open(path, "rb") as handle:
            return handle.read().strip()

    def _path(self, file_id: str, name: str = "") -> str:
        return "/".join([self.root.rstrip("/"), "files", file_id, *([name] if name else [])])

    def _write_meta(self, file: StoredFile) -> None:
        self.fs.makedirs(self._path(file.id), exist_ok=True)
        with self.fs.open(self._path(file.id, "meta.json"), "wb") as handle:
            handle.write(json.dumps(asdict(file)).encode())
