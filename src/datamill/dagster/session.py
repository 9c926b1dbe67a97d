"""The step session: what a Dagster job running as a datamill step reads and writes.

The worker (:mod:`datamill.dagster.runner`) opens one session per run from its request and makes
it :func:`active`; while it is, :class:`~datamill.dagster.resource.DatamillResource` hands the job
the task's input items as local files and :class:`~datamill.dagster.io_manager.DatamillIOManager`
writes every output into the task's output directory, where the engine picks them up. Each output
is recorded with its Dagster provenance (run id, job, op, asset key, code version), which the
publisher puts into the metadata of the item version it becomes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from datamill.dagster import values

__all__ = ["PROVENANCE_OUTPUT", "DatamillFile", "StepSession", "active"]

#: Where per-output provenance is written, relative to the output directory (the engine reads it).
PROVENANCE_OUTPUT = ".datamill/provenance.json"


@dataclass(frozen=True)
class DatamillFile:
    """One input item version: where it is, what it is, and (as a step) a local copy of its bytes."""

    folder: str
    name: str
    version: int
    digest: str
    size: int = 0
    content_type: str = "application/octet-stream"
    #: a local copy (inside a datamill step); None when read through a client
    path: Path | None = None
    _read: Any = field(default=None, repr=False, compare=False)

    @property
    def stem(self) -> str:
        """The name without its last suffix: ``"a.csv"`` → ``"a"``."""
        return PurePosixPath(self.name).stem

    def read_bytes(self) -> bytes:
        """The item version's bytes."""
        if self.path is not None:
            return self.path.read_bytes()
        data: bytes = self._read()
        return data

    def read_text(self, encoding: str = "utf-8") -> str:
        """The item version's bytes as text."""
        return self.read_bytes().decode(encoding)


def check_name(name: str) -> str:
    """``name`` if it is a relative output name (``a.json``, ``sub/b.txt``); ``ValueError`` otherwise."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or name.startswith(".datamill"):
        raise ValueError(f"{name!r} is not a valid output name: use a relative name like 'counts.json' or 'sub/a.txt'")
    return name


class StepSession:
    """One Dagster run inside a datamill task; see the module docstring."""

    def __init__(self, request: Mapping[str, Any]) -> None:
        self.request = request
        self.output_dir = Path(request["output_dir"])
        self.job = ""
        self.code_version: str | None = request.get("code_version")
        #: output name -> its provenance entry ``{"dagster": {...}}``
        self.provenance: dict[str, dict[str, Any]] = {}
        #: values kept by name without extension, so a downstream op reads what an upstream one returned
        self._values: dict[str, Any] = {}
        self._names: dict[str, str] = {}

    def items(self) -> list[DatamillFile]:
        """The task's input items (one for a per-item step), as local files."""
        return [
            DatamillFile(
                i["folder"],
                i["name"],
                int(i["version"]),
                i["digest"],
                int(i.get("size") or 0),
                i.get("content_type") or "application/octet-stream",
                Path(i["path"]) if i.get("path") else None,
            )
            for i in self.request.get("items") or []
        ]

    def upstream(self, name: str) -> list[Path]:
        """The files of the upstream step wired to ``name`` (``inputs={name: step}``)."""
        got = (self.request.get("upstream") or {}).get(name)
        if got is None:
            known = ", ".join(sorted(self.request.get("upstream") or {})) or "none"
            raise KeyError(f"no upstream input {name!r}; the step's inputs are: {known}")
        return [Path(p) for p in got]

    def write(self, name: str, data: Any, dagster: Mapping[str, Any]) -> str:
        """Write ``data`` (bytes, str, JSON value or a Path) as the output ``name``; returns the name."""
        name = check_name(name)
        target = self.output_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(values.encode(data))
        self.provenance[name] = {"dagster": {**self.defaults(), **dict(dagster)}}
        return name

    def store(self, key: str, value: Any, dagster: Mapping[str, Any]) -> str | None:
        """An IO manager's output: written as ``key`` + its extension, or kept in memory if not storable."""
        self._values[key] = value
        try:
            ext = values.extension_for(value)
        except TypeError:
            return None  # passed between ops in this run only; the caller logs that it is not kept
        name = self.write(key + ext, value, dagster)
        self._names[key] = name
        return name

    def load(self, key: str) -> Any:
        """The value stored under ``key`` in this run; ``KeyError`` if no op of this run produced it."""
        if key in self._values:
            return self._values[key]
        raise KeyError(
            f"{key!r} was not produced in this run: inside a datamill step a job reads only what its own ops "
            "produce and the task's items (the 'datamill' resource)"
        )

    def defaults(self) -> dict[str, Any]:
        """What every output's provenance records besides the op: the job and the code version."""
        return {"job": self.job, "code_version": self.code_version}

    def finish(self, run_id: str) -> None:
        """Record the run id on every output and write the provenance file the engine reads."""
        for entry in self.provenance.values():
            entry["dagster"].setdefault("run_id", run_id)
            entry["dagster"]["run_id"] = entry["dagster"]["run_id"] or run_id
        target = self.output_dir / PROVENANCE_OUTPUT
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.provenance, sort_keys=True), encoding="utf-8")


_ACTIVE: list[StepSession] = []


def active() -> StepSession | None:
    """The session of the datamill step this process runs, or None outside one."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextmanager
def activated(session: StepSession) -> Iterator[StepSession]:
    """Make ``session`` the active one for the duration of the block."""
    _ACTIVE.append(session)
    try:
        yield session
    finally:
        _ACTIVE.remove(session)
