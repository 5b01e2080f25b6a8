"""A task's files, and deleting tasks: the official SDK's `tasks.files`, `tasks.delete_files`
and `tasks.delete`.

A task's files are the files of this server that its input names (uploads, other tasks'
outputs) and those it output. Deleting a file deletes it for every task that names it,
as the SDK says; only its owner's key may delete it. Only a finished task is deleted, or
has its files deleted: a running one may still read or write them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from .catalog import AppCatalog
from .dispatch import Dispatcher
from .envelope import envelope
from .file_fields import file_slots
from .problems import ApiProblem, not_found
from .server_files import ServerFiles
from .status import TaskStatus
from .storage import StoredFile
from .store import now_iso

ROLES = ("input", "output")


def task_files_router(catalog: AppCatalog, dispatcher: Dispatcher, files: ServerFiles,
                      owner: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(tags=["tasks"])

    async def task_or_404(task_id: str, caller: str, finished: bool = False) -> dict[str, Any]:
        task = await dispatcher.tasks.get(task_id, caller)
        if task is None:
            raise not_found(f"no task {task_id!r}")
        if finished and not TaskStatus(task["status"]).is_terminal:
            raise ApiProblem(409, "invalid_transition", f"task {task_id} has not finished, and may still use its "
                             "files; cancel it first (POST /tasks/{id}/cancel)")
        return task

    async def files_of(task: dict[str, Any], role: Optional[str], caller: str) -> list[tuple[str, StoredFile, str]]:
        """(role, file, the URI the task names it by) for each file in the task's file fields of `role`
        (both if None): the caller's, and another key's named by a link that key shared."""
        if role not in (None, *ROLES):
            raise ApiProblem(400, "invalid_request", f"role must be `input` or `output`, not {role!r}")
        found = []
        for side in ROLES if role is None else (role,):
            schema = catalog.schema_of(task, side)
            # A task of a function no longer served: every string may be a file field, or its files are lost.
            values = _strings(task.get(side)) if schema is None else [s.value for s in file_slots(schema, task.get(side))]
            found += [(side, file, uri) for file, uri in await asyncio.to_thread(files.stored_in, values, caller)]
        return found

    async def delete_files(found: list[tuple[str, StoredFile, str]], caller: str) -> dict[str, list]:
        deleted: list[str] = []
        skipped: list[dict[str, str]] = []
        for file in {file.id: file for _, file, _ in found}.values():  # an input that is also an output: once
            if file.owner != caller:
                skipped.append({"id": file.id, "reason": "another key's file: only its owner may delete it"})
                continue
            if await asyncio.to_thread(files.store.delete, file):
                deleted.append(file.id)
        return {"deleted": deleted, "skipped": skipped}

    @router.get("/tasks/{task_id}/files", summary="The files a task's input names and those it output")
    async def list_files(task_id: str, request: Request, role: Optional[str] = None,
                         caller: str = Depends(owner)) -> JSONResponse:
        task = await task_or_404(task_id, caller)
        base = files.base_url(request)
        listed = [
            {"id": file.id, "created_at": now_iso(file.created_at), "role": side,
             # Another key's file, named by a link it shared: that link, not a new one.
             **(files.file_value(file, base) if file.owner == caller else
                {"uri": uri, "filename": file.filename, "content_type": file.content_type, "size": file.size})}
            for side, file, uri in await files_of(task, role, caller)
        ]
        return envelope(listed)

    @router.delete("/tasks/{task_id}/files", summary="Delete a finished task's files (yours), keeping the task")
    async def delete_task_files(task_id: str, role: Optional[str] = None, caller: str = Depends(owner)) -> JSONResponse:
        task = await task_or_404(task_id, caller, finished=True)
        result = await delete_files(await files_of(task, role, caller), caller)
        return envelope(result)

    @router.delete("/tasks/{task_id}", summary="Delete a finished task; with ?files=true its files (yours) too")
    async def delete_task(task_id: str, with_files: bool = Query(False, alias="files"),
                          caller: str = Depends(owner)) -> JSONResponse:
        task = await task_or_404(task_id, caller, finished=True)
        data: dict[str, Any] = {"id": task_id}
        if with_files:
            data["files"] = await delete_files(await files_of(task, None, caller), caller)
        if not await dispatcher.delete(task_id, caller):
            raise not_found(f"no task {task_id!r}")  # deleted meanwhile, through another ingress
        return envelope(data)

    return router


def _strings(document: Any) -> list[str]:
    found, stack = [], [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            found.append(item)
    return found
