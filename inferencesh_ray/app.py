"""What an app author imports: the base classes of an app and its models.

Nothing here is required: an app may subclass the official `inferencesh` classes, or
none at all, and plain pydantic models work as inputs and outputs. These exist so an
app written for us reads like one written for inference.sh.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, List, Optional

from pydantic import BaseModel, ConfigDict, PrivateAttr


class BaseAppInput(BaseModel):
    pass


class BaseAppOutput(BaseModel):
    pass


class BaseAppSetup(BaseModel):
    """The typed setup config of an app; one instance is warm per distinct config."""


class Metadata(BaseModel):
    """Facts about the running task, and `log()` to add a line to its logs."""

    model_config = ConfigDict(extra="allow")

    app_id: Optional[str] = None
    app_version_id: Optional[str] = None
    worker_id: Optional[str] = None
    gpu_ids: Optional[List[str]] = None
    task_id: Optional[str] = None
    session_id: Optional[str] = None
    """The session the task runs in, None outside one."""
    team_id: Optional[str] = None
    user_id: Optional[str] = None

    _log_sink: Optional[Callable[[str], None]] = PrivateAttr(default=None)
    _output_dir: Optional[Callable[[], Path]] = PrivateAttr(default=None)

    @property
    def output_dir(self) -> Path:
        """A directory of this task's own for its output files. The server stores the files
        the outputs name, then deletes the directory when the task ends, so a long-lived
        replica keeps nothing. Outside a server, a new temporary directory, left in place."""
        if self._output_dir is None:
            made = Path(tempfile.mkdtemp(prefix="infsh-out-"))
            self._output_dir = lambda: made
        return self._output_dir()

    def log(self, message: Any) -> None:
        """Record one log line for the running task (printed to stderr outside a task)."""
        text = str(message)
        if self._log_sink is not None:
            self._log_sink(text)
        else:
            import sys

            print(text, file=sys.stderr)

    def update(self, other: "dict[str, Any] | BaseModel") -> None:
        values = other.model_dump() if isinstance(other, BaseModel) else other
        for key, value in values.items():
            setattr(self, key, value)


class BaseApp:
    """Base class of an app: override `setup`, `unload` and add typed functions.

    Every public method that takes one pydantic input model (plus, optionally, a
    `metadata` parameter) and returns a pydantic output model is a function clients
    can call; `run` is the default one.
    """

    async def setup(self) -> None:
        pass

    async def unload(self) -> None:
        pass
