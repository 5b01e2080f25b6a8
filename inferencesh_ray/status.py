"""Task statuses, numbered exactly as the official `inferencesh` SDK 0.36 numbers them."""

from __future__ import annotations

from enum import IntEnum


class TaskStatus(IntEnum):
    UNKNOWN = 0
    RECEIVED = 1
    QUEUED = 2
    DISPATCHED = 3
    PREPARING = 4
    SERVING = 5
    SETTING_UP = 6
    RUNNING = 7
    CANCELLING = 8
    UPLOADING = 9
    COMPLETED = 10
    FAILED = 11
    CANCELLED = 12
    REJECTED = 13

    @property
    def is_terminal(self) -> bool:
        return self >= TaskStatus.COMPLETED
