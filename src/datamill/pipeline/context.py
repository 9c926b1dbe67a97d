"""The :class:`Context` a step receives (``ctx``): parameters, a scratch directory, progress, a log,
the item being processed, and a place to write named outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Protocol

from datamill.errors import InvalidPipeline
from datamill.pipeline import codecs
from datamill.pipeline.inputs import InputFile
from datamill.pipeline.step import RETURN

__all__ = ["Context", "NullReporter", "Reporter", "check_output_name"]


class Reporter(Protocol):
    """Where a running task sends progress and log lines (the executor provides it)."""

    def progress(self, fraction: float, message: str) -> None:
        """The task is ``fraction`` (0..1) done; ``message`` says what it is doing."""

    def log(self, line: str) -> None:
        """One line of the task's log."""


class NullReporter:
    """A reporter that drops everything (for calling steps outside an executor)."""

    def progress(self, fraction: float, message: str) -> None:
        """Ignore progress."""

    def log(self, line: str) -> None:
        """Ignore a log line."""


class _ReporterHandler(logging.Handler):
    """Sends each formatted log record to the reporter as one line."""

    def __init__(self, reporter: Reporter) -> None:
        super().__init__(logging.DEBUG)
        self.reporter = reporter
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.reporter.log(self.format(record))
        except Exception:  # a broken reporter must not fail the step
            self.handleError(record)


def check_output_name(name: Any) -> str:
    """``name`` if it is a valid output file name (one plain file name, not reserved), else InvalidPipeline."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise InvalidPipeline(
            f"output name {name!r} is not valid: use one plain file name like 'summary.csv' (no '/', not '.' or '..')"
        )
    if any(ord(c) < 32 for c in name):
        raise InvalidPipeline(f"output name {name!r} contains control characters; use a plain file name")
    if name == RETURN or name.startswith(RETURN + "."):
        raise InvalidPipeline(f"output name {name!r} is reserved for the step's return value; choose another name")
    return name


class Context:
    """What a step gets as ``ctx``.

    Attributes:
        step: the step's name.
        task_id: the planned task id, e.g. ``"summary[Raw Data/a.csv]"`` (empty outside a run).
        params: the resolved parameters (read-only).
        scratch: a private temporary directory, discarded after the task.
        item: the input item of a per-item step (None for aggregate steps).
        items: all input items, for steps that take ``items``.
        log: a :class:`logging.Logger` whose lines go to the task's log.
    """

    def __init__(
        self,
        *,
        step: str,
        params: Mapping[str, Any],
        scratch: Path,
        output_dir: Path,
        reporter: Reporter | None = None,
        item: InputFile | None = None,
        items: Sequence[InputFile] = (),
        task_id: str = "",
    ) -> None:
        self.step = step
        self.task_id = task_id
        self.params: Mapping[str, Any] = MappingProxyType(dict(params))
        self.scratch = Path(scratch)
        self.item = item
        self.items: tuple[InputFile, ...] = tuple(items)
        self._output_dir = Path(output_dir)
        self._reporter: Reporter = reporter if reporter is not None else NullReporter()
        self._codecs: dict[str, str] = {}
        # A Logger made directly (not via logging.getLogger) is not registered globally, so one per
        # task does not leak, and it never propagates into the host application's handlers.
        self.log = logging.Logger(f"datamill.step.{step}", logging.DEBUG)
        self.log.propagate = False
        self.log.addHandler(_ReporterHandler(self._reporter))

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress: ``fraction`` from 0 to 1 (clamped), and what is happening."""
        try:
            f = float(fraction)
        except (TypeError, ValueError):
            raise InvalidPipeline(f"progress takes a number from 0 to 1, got {fraction!r}") from None
        f = 0.0 if f != f else max(0.0, min(1.0, f))  # NaN counts as 0
        self._reporter.progress(f, str(message))

    def output(self, name: str) -> Path:
        """The path to write the named output ``name`` to (e.g. one CSV per Excel sheet).

        The file becomes an output of the task (decoded downstream as a :class:`~pathlib.Path`)
        if it exists when the step returns.
        """
        check_output_name(name)
        self._codecs.setdefault(name, "file")
        return self._output_dir / name

    def write(self, name: str, data: Any) -> Path:
        """Write ``data`` as the named output ``name`` and return its path.

        ``bytes`` and ``str`` are written as they are (and decoded downstream as bytes / str);
        other values go through their codec (a DataFrame as Parquet, a dict as JSON, ...), and
        ``name`` gets the codec's extension when it has none.
        """
        check_output_name(name)
        codec = codecs.codec_for(data)
        ext = codec.ext_for(data)
        if not PurePosixPath(name).suffix and codec.name not in ("bytes", "text"):
            name += ext
        elif codec.name not in ("bytes", "text", "file") and codecs.file_ext(name).lower() != ext.lower():
            raise InvalidPipeline(
                f"ctx.write({name!r}, <{type(data).__name__}>) would store {codec.name} data in a "
                f"'{codecs.file_ext(name)}' file; name it '{PurePosixPath(name).stem}{ext}', or write the "
                "format you want yourself to ctx.output(name)"
            )
        path = self._output_dir / name
        codec.encode(data, path)
        self._codecs[name] = codec.name
        return path

    @property
    def written(self) -> Mapping[str, str]:
        """Named outputs asked for so far: name → codec name."""
        return MappingProxyType(self._codecs)

    def __repr__(self) -> str:
        return f"<Context {self.task_id or self.step}>"
