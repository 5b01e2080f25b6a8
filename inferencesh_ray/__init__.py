"""inferencesh_ray: serve inference.sh-style apps on Ray Serve.

The app author's API is `BaseApp`, `BaseAppInput`, `BaseAppOutput`, `BaseAppSetup`,
`File`, `Metadata` and `batched`; `AppHost` runs an app in-process; `TaskStatus` numbers
statuses as the official SDK does; `inference` / `async_inference` are the client of a
running server (httpx only).
"""

from .app import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup, Metadata
from .batching import batched
from .client import (
    APIError,
    APIValidationError,
    AsyncInference,
    ConfigurationError,
    ConnectionFailed,
    Inference,
    InferenceError,
    ProtocolError,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TaskRejected,
    UploadFileOptions,
    WaitTimeout,
    async_inference,
    inference,
)
from .errors import AppCodeError, AppError, AppLoadError, FunctionNotFound, InvalidInput
from .files import File
from .host import AppHost, Call
from .status import TaskStatus

__all__ = [
    "APIError",
    "APIValidationError",
    "AppCodeError",
    "AppError",
    "AppHost",
    "AppLoadError",
    "AsyncInference",
    "BaseApp",
    "BaseAppInput",
    "BaseAppOutput",
    "BaseAppSetup",
    "Call",
    "ConfigurationError",
    "ConnectionFailed",
    "File",
    "FunctionNotFound",
    "Inference",
    "InferenceError",
    "InvalidInput",
    "Metadata",
    "ProtocolError",
    "TaskCancelled",
    "TaskError",
    "TaskFailed",
    "TaskRejected",
    "TaskStatus",
    "UploadFileOptions",
    "WaitTimeout",
    "async_inference",
    "batched",
    "inference",
]


def build(args: dict):
    """Build the Serve application (`import_path: inferencesh_ray:build` in a Serve config).

    Imported lazily, so the app model and the dev loop never import Ray.
    """
    from .builder import build as _build

    return _build(args)
