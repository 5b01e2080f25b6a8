"""Lifecycle events the test apps record: in memory, and (on Ray) in the file $INFSH_TEST_EVENTS names."""

import os

EVENTS: list[str] = []


def record(event: str) -> None:
    EVENTS.append(event)
    path = os.environ.get("INFSH_TEST_EVENTS")
    if path:
        with open(path, "a") as handle:
            handle.write(f"{os.getpid()} {event}\n")
