"""The client of an inferencesh_ray server: `Inference` (sync) and `AsyncInference`, built on httpx.

It mirrors the official `inferencesh` SDK's calls, statuses and returned dicts, and
imports neither Ray nor that SDK.
"""

from ._async import AsyncInference, AsyncTaskStream, async_inference
from ._config import API_KEY_ENV, BASE_URL_ENV
from ._errors import (
    APIError,
    APIValidationError,
    ConfigurationError,
    ConnectionFailed,
    InferenceError,
    ProtocolError,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TaskRejected,
    WaitTimeout,
)
from ._files import UploadFileOptions
from ._sync import Inference, TaskStream, inference
from ._tasks import parse_status
from ._wire import Response

__all__ = [
    "API_KEY_ENV",
    "APIError",
    "APIValidationError",
    "AsyncInference",
    "AsyncTaskStream",
    "BASE_URL_ENV",
    "ConfigurationError",
    "ConnectionFailed",
    "Inference",
    "InferenceError",
    "ProtocolError",
    "Response",
    "TaskCancelled",
    "TaskError",
    "TaskFailed",
    "TaskRejected",
    "TaskStream",
    "UploadFileOptions",
    "WaitTimeout",
    "async_inference",
    "inference",
    "parse_status",
]
