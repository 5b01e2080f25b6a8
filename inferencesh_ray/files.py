"""`File`: the field type for files in app inputs and outputs.

Unlike the official package's `File`, constructing one never downloads anything: the
app host fetches input files to local paths *before* validation, so by the time a
function sees `input.image.path` it is a local file. On the wire and in JSON schema a
File is a string with `"format": "file"`; its serialized form holds only the non-empty
keys among uri, path, content_type, size and filename.
"""

from __future__ import annotations

import mimetypes
import os
from typing import Any, Optional, Union

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import CoreSchema, core_schema

FILE_KEYS = ("uri", "path", "content_type", "size", "filename")
FILE_JSON_SCHEMA = {"type": "string", "format": "file"}


class File:
    """A file: a local `path` the function can open, plus where it lives (`uri`)."""

    def __init__(
        self,
        initializer: Union[str, dict, "File", None] = None,
        *,
        uri: Optional[str] = None,
        path: Optional[Union[str, os.PathLike]] = None,
        content_type: Optional[str] = None,
        size: Optional[int] = None,
        filename: Optional[str] = None,
    ) -> None:
        if isinstance(initializer, File):
            initializer = initializer.to_dict()
        if isinstance(initializer, dict):
            unknown = set(initializer) - set(FILE_KEYS)
            if unknown:
                raise ValueError(f"unknown file keys {sorted(unknown)}; expected some of {list(FILE_KEYS)}")
            uri = initializer.get("uri", uri)
            path = initializer.get("path", path)
            content_type = initializer.get("content_type", content_type)
            size = initializer.get("size", size)
            filename = initializer.get("filename", filename)
        elif isinstance(initializer, str):
            uri = initializer
        elif initializer is not None:
            raise ValueError(f"expected a URI, a path or a file object, got {type(initializer).__name__}")
        if uri and path is None and "://" not in uri and not uri.startswith("data:"):
            # A bare string that is no URI names a local file, as in the official SDK.
            uri, path = None, uri
        if not uri and path is None:
            raise ValueError("a file needs a uri or a path")
        self.uri = uri or None
        self.path = os.fspath(path) if path is not None else None
        self.content_type = content_type
        self.size = size
        self.filename = filename
        if self.path is not None:
            self._fill_metadata()

    @classmethod
    def from_path(cls, path: Union[str, os.PathLike]) -> "File":
        return cls(path=path)

    def exists(self) -> bool:
        return self.path is not None and os.path.isfile(self.path)

    def refresh_metadata(self) -> None:
        """Re-read size, type and name from the local file (after the app rewrote it)."""
        if self.exists():
            self.size = os.path.getsize(self.path)
            self.content_type = mimetypes.guess_type(self.path)[0] or self.content_type
            self.filename = os.path.basename(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in FILE_KEYS if getattr(self, key) is not None}

    def _fill_metadata(self) -> None:
        if self.filename is None:
            self.filename = os.path.basename(self.path) or None
        if self.content_type is None:
            self.content_type = mimetypes.guess_type(self.filename or self.path)[0]
        if self.size is None and self.exists():
            self.size = os.path.getsize(self.path)

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in self.to_dict().items())
        return f"File({fields})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, File) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    # pydantic v2
    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda f: f.to_dict()),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> dict:
        return dict(FILE_JSON_SCHEMA)

    # pydantic.v1
    @classmethod
    def __get_validators__(cls):
        yield cls._validate

    @classmethod
    def __modify_schema__(cls, field_schema: dict) -> None:
        field_schema.clear()
        field_schema.update(FILE_JSON_SCHEMA)

    @classmethod
    def _validate(cls, value: Any) -> "File":
        if isinstance(value, cls):
            return value
        if value in ("", {}):
            raise ValueError("a file is required: give a URI, a path or an object with a uri")
        if hasattr(value, "uri") and hasattr(value, "path") and not isinstance(value, (str, dict)):
            # A File from the official package, or another look-alike.
            value = {key: getattr(value, key, None) for key in FILE_KEYS}
            value = {key: item for key, item in value.items() if item is not None}
        return cls(value)
