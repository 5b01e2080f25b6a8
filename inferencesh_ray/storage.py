"""Where files live: one storage root URL, through fsspec.

`file:///…` (the default, under the server's data directory) keeps files on local disk;
`s3://bucket/prefix` keeps them in S3 (or any S3-protocol store) through s3fs, so every
node of a cluster reads and writes the same files. Each file is two objects under
`ROOT/files/<id>/`: `data` (the bytes) and `meta.json` (owner, filename, content type,
size, and whether its upload finished). Ids are random, so a key never comes from input.
Each upload writes a part of its own (`data.<random>.part`), moved to `data` only when
it is whole and only if the file is not complete by then, so a completed file's bytes
never change. Commits of one file take turns within a process; two processes committing
the same file in the same instant (two ingresses, each given one of two PUTs) remain a
race of one move and one meta.json write. All methods block: async callers run them in a thread.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import secrets
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any, Optional

import fsspec

_FILE_ID = re.compile(r"^[0-9a-f]{32}$")
# Path separators, control characters (C0 and C1), lone surrogates (no UTF-8 for them), and
# bidi controls and line separators (they make a name display as another, e.g. "gpj.exe").
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
# Most filesystems refuse a name over 255 bytes; the fetched input file is named so on a replica.
MAX_FILENAME_BYTES = 200
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))*")
MAX_MEDIA_TYPE_CHARS = 255
DEFAULT_MEDIA_TYPE = "application/octet-stream"
SIGNING_KEY_ENV = "INFERENCESH_RAY_SIGNING_KEY"


def default_root(data_dir: str) -> str:
    return Path(os.path.expanduser(data_dir), "files").resolve().as_uri()


def is_file_id(value: str) -> bool:
    return bool(_FILE_ID.match(value))


def safe_filename(name: Optional[str], default: str = "file") -> str:
    """A filename for URLs, downloads and a replica's disk: its last path part, no control or bidi
    characters, at most MAX_FILENAME_BYTES of UTF-8 (its end kept, so the extension is)."""
    name = _UNSAFE.sub("_", os.path.basename((name or "").replace("\\", "/")))
    # Cut on a character boundary: "ignore" drops the partial character the cut left at the start.
    name = name.encode()[-MAX_FILENAME_BYTES:].decode("utf-8", "ignore")
    return name.strip(" .") or default


def _extension(content_type: str) -> Optional[str]:
    media_type = content_type.split(";")[0].strip().lower()
    return None if media_type == DEFAULT_MEDIA_TYPE else mimetypes.guess_extension(media_type)


def is_media_type(value: str) -> bool:
    """Whether `value` is `type/subtype *(; name=value)` in visible ASCII: safe to send as a Content-Type."""
    return len(value) <= MAX_MEDIA_TYPE_CHARS and _MEDIA_TYPE.fullmatch(value) is not None


@dataclass(frozen=True)
class StoredFile:
    id: str
    owner: str
    filename: str
    content_type: str
    size: Optional[int]
    """Announced while the upload is pending (None: not announced), then the stored size."""
    created_at: float
    complete: bool = False


class FileStore:
    def __init__(self, root: str, options: Optional[dict[str, Any]] = None) -> None:
        self.root_url = root
        self.fs, self.root = fsspec.core.url_to_fs(root, **(options or {}))
        self._local = "file" in self.fs.protocol
        # Commits of one file take turns, so the second sees the first's meta.json (striped by id).
        self._commit_locks = [threading.Lock() for _ in range(64)]

    def create(self, owner: str, filename: Optional[str], content_type: Optional[str], size: Optional[int]) -> StoredFile:
        """Record a file whose bytes are still to come (`size` None: not announced)."""
        # An app's output may name any content type; one that is no media type would break the download's headers.
        content_type = content_type if content_type and is_media_type(content_type) else DEFAULT_MEDIA_TYPE
        file = StoredFile(
            id=uuid.uuid4().hex,
            owner=owner,
            # Unnamed (bytes, a data: URI): the URL's last part still gets an extension, from which
            # the official SDK's File names its download and guesses its type.
            filename=safe_filename(filename, "file" + (_extension(content_type) or "")),
            content_type=content_type,
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

    def open_part(self, file: StoredFile) -> tuple[str, IO[bytes]]:
        """A new part for one upload of `file`, and a handle to write it; then `commit` or `discard` it."""
        part = f"data.{uuid.uuid4().hex}.part"
        return part, self.fs.open(self._path(file.id, part), "wb")

    def commit(self, file: StoredFile, part: str, size: int) -> Optional[StoredFile]:
        """Make a whole part the file's bytes, and the file complete; None (the part removed) when
        another upload completed it first."""
        with self._commit_locks[int(file.id[:8], 16) % len(self._commit_locks)]:
            current = self.get(file.id)
            if current is None or current.complete:
                self.discard(file, part)
                return None
            self.fs.mv(self._path(file.id, part), self._path(file.id, "data"))
            done = replace(current, size=size, complete=True)
            self._write_meta(done)
            return done

    def discard(self, file: StoredFile, part: str) -> None:
        """Remove an upload's part (gone already is fine)."""
        try:
            self.fs.rm_file(self._path(file.id, part))
        except FileNotFoundError:
            pass

    def open_read(self, file: StoredFile) -> IO[bytes]:
        return self.fs.open(self._path(file.id, "data"), "rb")

    def local_path(self, file: StoredFile) -> Optional[str]:
        """The path of the file's bytes when they are on this machine's disk (a `file://` root), else None."""
        return self._path(file.id, "data") if self._local else None

    def put_local(self, owner: str, path: str, filename: Optional[str], content_type: Optional[str]) -> StoredFile:
        """Store a local file (an app's output) for `owner`."""
        file = self.create(owner, filename or os.path.basename(path), content_type, os.path.getsize(path))
        self.fs.put_file(path, self._path(file.id, "data"))  # no upload URL was given out: nothing else writes it
        done = replace(file, complete=True)
        self._write_meta(done)
        return done

    def get_local(self, file: StoredFile, path: str) -> None:
        self.fs.get_file(self._path(file.id, "data"), path)

    def delete(self, file: StoredFile) -> bool:
        """Remove the file; False when it was gone already (another delete came first)."""
        try:
            self.fs.rm(self._path(file.id), recursive=True)
        except FileNotFoundError:
            return False
        return True

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
        path, body = self._path(file.id, "meta.json"), json.dumps(asdict(file)).encode()
        if not self._local:
            self.fs.pipe_file(path, body)  # one PUT: a reader sees the old object or the new one
            return
        # On disk a reader could open it half-written: write beside it, then rename over it.
        temp = f"{path}.{uuid.uuid4().hex}.tmp"
        self.fs.pipe_file(temp, body)
        self.fs.mv(temp, path)
