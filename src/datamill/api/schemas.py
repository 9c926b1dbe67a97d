"""Response models for the OpenAPI document, derived from the store's dataclasses.

They are built from the dataclass fields (plus ``path`` where ``to_dict`` adds it) so the
document cannot drift from what handlers return; handlers send ``to_dict()`` output directly.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, create_model

from datamill.dataflows.records import (
    BatchCell,
    BatchCounts,
    BatchInfo,
    BatchRow,
    BatchStatus,
    DataflowInfo,
    DataflowVersionInfo,
    RecentRun,
    VersionRun,
)
from datamill.engine.records import PipelineInfo, PlanInfo, RunInfo, TaskInfo, WhyInfo
from datamill.events import EventRecord
from datamill.record import Record
from datamill.store.store import FolderInfo, ItemInfo, VersionInfo
from datamill.store.users import NewToken


def model_of(
    cls: type,
    name: str,
    drop: tuple[str, ...] = (),
    add: dict[str, Any] | None = None,
    add_optional: dict[str, Any] | None = None,
) -> type[BaseModel]:
    """A pydantic model with the fields of dataclass ``cls`` (minus ``drop``, plus ``add`` and the
    not-required ``add_optional``). A field with a default is not required: a record leaves its
    ``_optional`` keys out of its JSON while they are None."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in drop:
            continue
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        fields[f.name] = (hints[f.name], None if has_default else ...)
    for key, typ in (add or {}).items():
        fields[key] = (typ, ...)
    for key, typ in (add_optional or {}).items():
        fields[key] = (typ, None)
    model: type[BaseModel] = create_model(name, __doc__=(cls.__doc__ or "").strip(), **fields)
    return model


FolderOut = model_of(FolderInfo, "Folder")
ItemOut = model_of(ItemInfo, "Item", drop=("extra",), add={"path": str})


class ItemPageOut(BaseModel):
    """One page of a folder's items and the cursor of the next page (null: this was the last)."""

    items: list[ItemOut]  # type: ignore[valid-type]  # a model built at run time
    next: str | None


VersionOut = model_of(VersionInfo, "Version", add={"path": str})
EventOut = model_of(EventRecord, "Event")
TokenOut = model_of(NewToken, "NewToken")
RunOut = model_of(RunInfo, "Run")
TaskOut = model_of(TaskInfo, "Task")
#: a task as a run's task list has it: its parameter set named, carried inline only when small
ListedTaskOut = model_of(
    TaskInfo,
    "ListedTask",
    drop=("params",),
    add={"params_digest": str | None, "params_size": int, "params": dict[str, Any] | None},
)
PlanOut = model_of(PlanInfo, "Plan")
WhyOut = model_of(WhyInfo, "Why")
PipelineOut = model_of(PipelineInfo, "Pipeline")
RecentRunOut = model_of(RecentRun, "RecentRun")
VersionRunOut = model_of(VersionRun, "VersionRun")
DataflowOut = model_of(
    DataflowInfo,
    "Dataflow",
    drop=("recent_runs",),
    add_optional={"recent_runs": list[RecentRunOut] | None},  # type: ignore[valid-type]
)
DataflowVersionOut = model_of(
    DataflowVersionInfo,
    "DataflowVersion",
    drop=("runs",),
    add={"runs": list[VersionRunOut]},  # type: ignore[valid-type]
)

BatchCountsOut = model_of(BatchCounts, "BatchCounts")
BatchOut = model_of(BatchInfo, "Batch", drop=("counts",), add={"counts": BatchCountsOut})
BatchCellOut = model_of(BatchCell, "BatchCell")
BatchRowOut = model_of(BatchRow, "BatchRow", drop=("cells",), add={"cells": list[BatchCellOut]})  # type: ignore[valid-type]
BatchStatusOut = model_of(
    BatchStatus,
    "BatchStatus",
    drop=("counts", "rows"),
    add={"counts": BatchCountsOut, "rows": list[BatchRowOut]},  # type: ignore[valid-type]
)


def plain(data: Record | Sequence[Record]) -> Any:
    """A record (or a list of them) as JSON-able data, for a ``JSONResponse``."""
    return data.to_dict() if isinstance(data, Record) else [r.to_dict() for r in data]


def fast_json(data: Any) -> Response:
    """``data`` as a JSON response written by orjson: a listing of many thousands of rows in a fraction
    of what the json module takes. What orjson refuses (an integer beyond 64 bits in metadata or a
    parameter) the json module writes, as before."""
    try:
        return Response(orjson.dumps(data), media_type="application/json")
    except TypeError:
        return JSONResponse(data)


def list_of(model: type[BaseModel]) -> Any:
    """``list[model]`` for a ``response_model`` (a model built at run time is no static type)."""
    return list[model]  # type: ignore[valid-type]


class UserOut(BaseModel):
    """A user."""

    id: int | None
    name: str
    is_admin: bool


class Done(BaseModel):
    """An acknowledgement."""

    ok: bool = True


class EventsOut(BaseModel):
    """A page of events and the cursor to ask from next (it may pass events you may not see)."""

    events: list[EventOut]  # type: ignore[valid-type]
    next: int
