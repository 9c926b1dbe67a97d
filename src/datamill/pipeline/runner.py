"""Run one task in the current process: :func:`run_step` takes a picklable :class:`StepCall` and
returns a :class:`StepResult` listing the files the task wrote.

Executors ship ``PythonCall(run_step, (call,), {})`` to wherever tasks run; there
``run_step(reporter, call)`` loads the step (from the pipeline reference, or from cloudpickled
bytes when the pipeline has none), decodes its inputs, calls it, and encodes its return value.

Outputs are written into ``call.output_dir`` only. Whether they become visible is the caller's
decision: the caller discards the directory of a failed task, so partial outputs never appear.
Exceptions raised by the step propagate unchanged; executors turn them into ``StepFailed``.

Command steps do not run here: the engine runs them on the command executor (which owns their
process group), with :func:`command_argv` and :func:`command_env` from this module.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import string
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cloudpickle

from datamill.coroutine import run_to_end
from datamill.errors import InvalidPipeline
from datamill.pipeline import codecs
from datamill.pipeline.callparams import call_params
from datamill.pipeline.context import Context, NullReporter, Reporter
from datamill.pipeline.inputs import InputFile, InputRef
from datamill.pipeline.loader import load_pipeline
from datamill.pipeline.step import RETURN, Role, Step, is_return_output

__all__ = [
    "ItemInput",
    "NullReporter",
    "OutputFile",
    "Reporter",
    "StepCall",
    "StepResult",
    "UpstreamInput",
    "collect_outputs",
    "command_argv",
    "command_env",
    "decode_outputs",
    "made",
    "prepare_dirs",
    "resolve_step",
    "run_step",
]


_T = TypeVar("_T")

#: The concrete path type here: a value of exactly this type needs no conversion (building a Path
#: from a Path parses it again, which costs more than the rest of a trivial task's call).
_PATH = type(Path())

# Python 3.11's pathlib makes a path from parts already parsed without parsing them again (later
# versions changed these internals: there :func:`child_path` joins as usual).
_PARSED_PARTS = sys.version_info[:2] == (3, 11) and hasattr(_PATH, "_from_parsed_parts")


def child_path(parent: Path, *names: str) -> Path:
    """``parent / name / ...`` without parsing ``parent`` or plain names (no ``/``, not ``.`` or
    ``..``) again: a few paths per task were a tenth of a trivial task's time in the scheduler."""
    if _PARSED_PARTS and type(parent) is _PATH and all(n and "/" not in n and n not in (".", "..") for n in names):
        p: Path = _PATH._from_parsed_parts(parent._drv, parent._root, [*parent._parts, *names])  # type: ignore[attr-defined]
        return p
    return parent.joinpath(*names)


def child_parts(parent: Path, *names: str) -> list[Any] | str:
    """``parent / name / ...`` (as :func:`child_path`) for another process: the parsed parts
    ``[drv, root, parts]`` a path is made from there without parsing (Python 3.11), else its string."""
    if _PARSED_PARTS and type(parent) is _PATH and all(n and "/" not in n and n not in (".", "..") for n in names):
        return [parent._drv, parent._root, [*parent._parts, *names]]  # type: ignore[attr-defined]
    return str(parent.joinpath(*names))


@dataclass(frozen=True)
class OutputFile:
    """One file a task wrote: its name within the task, local path, content type and codec name.

    With ``data`` the output is a value held in memory (its encoded bytes): nothing was written
    at ``path``, and readers decode ``data`` (see :attr:`StepCall.in_memory`).
    """

    name: str
    path: Path
    content_type: str
    codec: str
    data: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if type(self.path) is not _PATH:
            object.__setattr__(self, "path", Path(self.path))


@dataclass(frozen=True)
class ItemInput:
    """An input item bound to a local copy of its bytes (``path`` None when not fetched).

    ``path`` and ``source`` may be strings: the :class:`InputFile` makes them Paths when a step uses
    them (most steps on values read the item's name or bytes, and parsing paths cost more).
    """

    ref: InputRef
    path: Path | str | None
    #: a local file with the same bytes (the blob store's): read there, ``path`` linked on first use
    source: Path | str | None = None

    def __post_init__(self) -> None:
        if self.path is not None and type(self.path) is not _PATH and type(self.path) is not str:
            object.__setattr__(self, "path", Path(self.path))

    def file(self) -> InputFile:
        """The :class:`InputFile` a step receives."""
        return InputFile(self.ref, self.path, self.source)


@dataclass(frozen=True)
class UpstreamInput:
    """The outputs of the upstream task(s) one argument reads.

    ``outputs`` holds one tuple of files per upstream task; ``many`` is True when the argument
    receives a list (an aggregate step reading a per-item step), else there is exactly one.
    """

    step: str
    outputs: tuple[tuple[OutputFile, ...], ...]
    many: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "outputs", tuple(tuple(o) for o in self.outputs))
        if not self.many and len(self.outputs) != 1:
            raise ValueError(f"a single upstream input needs exactly one task's outputs, got {len(self.outputs)}")


@dataclass(frozen=True)
class StepCall:
    """Everything needed to run one task somewhere else (picklable).

    The step is found by ``pipeline_ref`` + ``step`` or, when the pipeline has no reference,
    unpickled from ``step_bytes``. ``params`` are the resolved parameters; ``item`` is the
    input item of a per-item task; ``items`` all items for steps that take them; ``upstream``
    maps argument names (or command placeholders) to upstream outputs.
    """

    step: str
    output_dir: Path
    scratch_dir: Path
    pipeline_ref: str | None = None
    step_bytes: bytes | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    item: ItemInput | None = None
    items: tuple[ItemInput, ...] = ()
    upstream: Mapping[str, UpstreamInput] = field(default_factory=dict)
    task_id: str = ""
    #: keep values in memory: the return value comes back as bytes (``OutputFile.data``) when its
    #: codec can say them, and the output and scratch directories are made only if needed (a
    #: step taking ``ctx``, a value that needs a file); nothing is written and read back
    in_memory: bool = False

    def __post_init__(self) -> None:
        if type(self.output_dir) is not _PATH:
            object.__setattr__(self, "output_dir", Path(self.output_dir))
        if type(self.scratch_dir) is not _PATH:
            object.__setattr__(self, "scratch_dir", Path(self.scratch_dir))
        if type(self.items) is not tuple:
            object.__setattr__(self, "items", tuple(self.items))
        if self.pipeline_ref is None and self.step_bytes is None:
            raise ValueError("a StepCall needs pipeline_ref or step_bytes to find its step")


@dataclass(frozen=True)
class StepResult:
    """What a task produced: its output files (sorted by name) and how long the step took."""

    outputs: tuple[OutputFile, ...]
    seconds: float = 0.0


# ---------------------------------------------------------------------------------- finding the step


@functools.lru_cache(maxsize=64)
def _unpickle(data: bytes) -> Step:
    step = cloudpickle.loads(data)
    if not isinstance(step, Step):
        raise InvalidPipeline(f"step_bytes hold a {type(step).__name__}, not a Step")
    return step


#: How long a step loaded from a pipeline reference is used without looking at its file again:
#: loading checks the file (a resolve and a stat) and finds the pipeline in its module, which
#: costs more than a trivial task; a run's tasks come in bursts of thousands.
RESOLVED_FOR_SECONDS = 1.0

_resolved: dict[tuple[str, str], tuple[float, Step]] = {}


def resolve_step(call: StepCall) -> Step:
    """The step a call names (loads the pipeline reference, or unpickles ``step_bytes``)."""
    if call.step_bytes is not None:
        return _unpickle(call.step_bytes)
    assert call.pipeline_ref is not None  # checked in StepCall.__post_init__
    key = (call.pipeline_ref, call.step)
    now = time.monotonic()
    hit = _resolved.get(key)
    if hit is not None and now - hit[0] < RESOLVED_FOR_SECONDS:
        return hit[1]
    step = load_pipeline(call.pipeline_ref).step(call.step)
    if len(_resolved) > 256:  # a long-lived worker sees many pipelines: keep only recent ones
        _resolved.clear()
    _resolved[key] = (now, step)
    return step


# ---------------------------------------------------------------------------------- decoding inputs


def decode_outputs(outputs: Sequence[OutputFile]) -> Any:
    """The value a downstream step receives for one upstream task's outputs.

    * no outputs → ``None``;
    * only the return value → that value, decoded by its codec;
    * otherwise (named outputs, command outputs) → ``{name: value}`` for every file, the return
      value under its ``return<ext>`` name.
    """
    if not outputs:
        return None
    if len(outputs) == 1 and is_return_output(outputs[0].name):
        return _decode(outputs[0])
    return {o.name: _decode(o) for o in outputs}


def _decode(o: OutputFile) -> Any:
    codec = codecs.get_codec(o.codec)
    if o.data is not None and codec.in_memory:
        return codec.from_bytes(o.data)
    return codec.decode(o.path)


def _upstream_value(up: UpstreamInput) -> Any:
    values = [decode_outputs(o) for o in up.outputs]
    return values if up.many else values[0]


# ---------------------------------------------------------------------------------- running


def prepare_dirs(call: StepCall) -> None:
    """Make the call's output and scratch directories; refuse an output directory with files in it."""
    call.output_dir.mkdir(parents=True, exist_ok=True)
    call.scratch_dir.mkdir(parents=True, exist_ok=True)
    if any(call.output_dir.iterdir()):
        # Leftovers would be reported as this task's outputs.
        raise ValueError(f"output_dir {call.output_dir} is not empty; give each attempt a fresh directory")


def run_step(reporter: Reporter, call: StepCall) -> StepResult:
    """Run one task of a Python step here and now; returns the outputs written to ``call.output_dir``.

    Exceptions from the step propagate as they are (executors record them as ``StepFailed``).
    A command step is refused (:class:`~datamill.errors.InvalidPipeline`): commands run on the
    command executor (``datamill.engine.attempt.run_command_step``), which can stop a command with
    every process it started.
    """
    started = time.perf_counter()
    step = resolve_step(call)
    if step.kind == "command":
        raise InvalidPipeline(
            f"step '{step.name}' is a command step: it runs on the command executor "
            "(datamill.engine.attempt.run_command_step), not in run_step",
            step=step.name,
        )
    if step.kind == "dagster":
        raise InvalidPipeline(
            f"step '{step.name}' is a Dagster step: it runs on the Dagster executor "
            "(datamill.engine.dagster_step.run_dagster_step), not in run_step",
            step=step.name,
        )
    # In memory, a step without ctx needs no directory unless its value needs a file.
    lazy = call.in_memory and not step.takes_ctx
    if not lazy:
        prepare_dirs(call)

    assert step.fn is not None  # python steps always have one
    # values of its own: what the step changes in them, no other call sees (see callparams)
    params = call_params(step.params, call.params)
    item = call.item.file() if call.item is not None else None
    items = [i.file() for i in call.items]
    ctx = (
        None
        if lazy
        else Context(
            step=step.name,
            params=params,
            scratch=call.scratch_dir,
            output_dir=call.output_dir,
            reporter=reporter,
            item=item,
            items=items,
            task_id=call.task_id,
        )
    )
    args, kwargs = _arguments(step, call, params, item, items, ctx)

    # A worker has no display; without this, pyplot in a step could try to open a window.
    _headless_plots()
    result = step.fn(*args, **kwargs)
    if type(result) not in _NEVER_AWAITED and inspect.isawaitable(result):
        result = run_to_end(_await(result))
    if ctx is None:
        return made(StepResult, outputs=_return_value(result, call), seconds=time.perf_counter() - started)
    written = dict(ctx.written)
    if result is not None:
        written.update(_store_return(result, call.output_dir))
    return StepResult(tuple(collect_outputs(call.output_dir, written)), time.perf_counter() - started)


#: what a step returns most often, and never awaitable: ``inspect.isawaitable`` asks an ABC, which
#: cost about as much as a trivial step
_NEVER_AWAITED = frozenset({str, bytes, int, float, bool, dict, list, tuple, type(None)})


def made(cls: type[_T], **fields: Any) -> _T:
    """An instance of the frozen dataclass ``cls`` with ``fields`` (all of them), without its ``__init__``.

    For values known to be right already, on the hot path: a frozen dataclass's ``__init__`` sets
    each field through ``object.__setattr__``, which cost more than the rest of a trivial step's
    result (and, in the scheduler, about as much as pickling the call).
    """
    obj: Any = object.__new__(cls)
    obj.__dict__.update(fields)
    result: _T = obj
    return result


_HEADLESS: list[bool] = []


def _headless_plots() -> None:
    """Set ``MPLBACKEND=Agg`` unless set: once per process (reading the environment per call cost
    more than a trivial step)."""
    if not _HEADLESS:
        os.environ.setdefault("MPLBACKEND", "Agg")
        _HEADLESS.append(True)


def _arguments(
    step: Step, call: StepCall, params: dict[str, Any], item: InputFile | None, items: list[InputFile], ctx: Any
) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments a step's function is called with."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for a in step.args:
        value: Any
        if a.role is Role.ITEM:
            if item is None or not item.fetched:
                raise ValueError(f"step '{step.name}' takes 'item' but the call carries no fetched item")
            value = item
        elif a.role is Role.ITEMS:
            value = items
        elif a.role is Role.CTX:
            value = ctx
        elif a.role is Role.PARAM:
            value = params[a.name]
        else:
            if a.name not in call.upstream:
                raise ValueError(f"step '{step.name}' reads '{a.name}' but the call carries no such upstream input")
            value = _upstream_value(call.upstream[a.name])
        if a.positional_only:
            args.append(value)
        else:
            kwargs[a.name] = value
    if step.takes_kwargs:
        for pname, pvalue in params.items():
            kwargs.setdefault(pname, pvalue)

    return args, kwargs


def _return_value(value: Any, call: StepCall) -> tuple[OutputFile, ...]:
    """The outputs of a step run in memory: its value's bytes, or a file when its codec needs one."""
    if value is None:
        return ()
    codec = codecs.codec_for(value)
    data = codec.to_bytes(value) if codec.in_memory else None
    if data is None:
        # The step never saw output_dir: anything there was left by an attempt with this number
        # whose scheduler died (the engine does not look for one before a call on values).
        shutil.rmtree(call.output_dir, ignore_errors=True)
        prepare_dirs(call)
        return tuple(collect_outputs(call.output_dir, _store_return(value, call.output_dir)))
    name = RETURN + codec.ext_for(value)
    path = child_path(call.output_dir, name)
    if type(path) is not _PATH:
        return (OutputFile(name, path, codec.content_type_of(path), codec.name, data),)
    # a path of the concrete type already: what OutputFile's __init__ would check and convert holds
    content_type = codec.content_type_of(path)
    return (made(OutputFile, name=name, path=path, content_type=content_type, codec=codec.name, data=data),)


async def _await(value: Any) -> Any:
    return await value


def _store_return(value: Any, output_dir: Path) -> dict[str, str]:
    """Encode a return value into ``output_dir``; returns {output name: codec name}."""
    codec = codecs.codec_for(value)
    if codec.name == "file":
        src = Path(value).resolve()
        out = output_dir.resolve()
        if src.is_relative_to(out):
            # The step returned one of its own named outputs: it is already there.
            return {src.relative_to(out).as_posix(): "file"}
    name = RETURN + codec.ext_for(value)
    codec.encode(value, output_dir / name)
    return {name: codec.name}


def collect_outputs(output_dir: Path, codecs_by_name: Mapping[str, str] | None = None) -> list[OutputFile]:
    """Every file under ``output_dir`` as an output, sorted by name (a relative POSIX path).

    ``codecs_by_name`` says which codec wrote which file; the rest are plain files.
    """
    known = dict(codecs_by_name or {})
    root = Path(output_dir)
    out: list[OutputFile] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        codec = codecs.get_codec(known.get(name, "file"))
        out.append(OutputFile(name, path, codec.content_type_of(path), codec.name))
    return sorted(out, key=lambda o: o.name)


# ---------------------------------------------------------------------------------- commands


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _placeholder_values(step: Step, call: StepCall) -> dict[str, list[str] | str]:
    values: dict[str, list[str] | str] = {"output_dir": str(call.output_dir), "scratch": str(call.scratch_dir)}
    params = {**step.params, **dict(call.params)}
    for a in step.args:
        if a.role is Role.ITEM:
            if call.item is None or call.item.path is None:
                raise ValueError(f"step '{step.name}' uses {{input}} but the call carries no fetched item")
            values["input"] = str(call.item.path)
            values["stem"] = call.item.ref.stem
        elif a.role is Role.ITEMS:
            values["inputs"] = [str(i.file().path) for i in call.items]
        elif a.role is Role.PARAM:
            values[a.name] = _param_text(params[a.name])
        elif a.role is Role.INPUT:
            if a.name not in call.upstream:
                raise ValueError(f"step '{step.name}' uses {{{a.name}}} but the call carries no such upstream input")
            values[a.name] = [str(o.path) for outs in call.upstream[a.name].outputs for o in outs]
    return values


def command_argv(call: StepCall, step: Step | None = None) -> list[str]:
    """The command line of a command step with every placeholder filled in.

    A placeholder that is a whole argument and stands for several files (``{inputs}``, an
    upstream step) becomes one argument per file; inside a longer argument they are joined by
    spaces. Scripts named relative to the pipeline file become absolute paths, because the
    command runs in the scratch directory.
    """
    step = step or resolve_step(call)
    if step.kind not in ("command", "container"):
        raise InvalidPipeline(f"step '{step.name}' is not a command step", step=step.name)
    values = _placeholder_values(step, call)
    argv: list[str] = []
    fmt = string.Formatter()
    for a in step.argv:
        parsed = list(fmt.parse(a))
        if len(parsed) == 1 and parsed[0][0] == "" and parsed[0][1] is not None:
            v = values[parsed[0][1]]
            argv.extend(v if isinstance(v, list) else [v])
            continue
        text = []
        for literal, fld, _, _ in parsed:
            text.append(literal)
            if fld is not None:
                v = values[fld]
                text.append(" ".join(v) if isinstance(v, list) else v)
        arg = "".join(text)
        if a in step.scripts and step.base_dir is not None:
            arg = str(step.base_dir / a)
        argv.append(arg)
    return argv


def command_env(call: StepCall, step: Step | None = None) -> dict[str, str]:
    """Variables a command step runs with, on top of the inherited environment.

    ``DATAMILL_OUTPUT_DIR`` and ``DATAMILL_SCRATCH`` (the same as ``{output_dir}``/``{scratch}``)
    and ``DATAMILL_PARAMS`` (the parameters as JSON), as the engine runs them:
    ``CommandCall(argv=command_argv(call), cwd=str(call.scratch_dir), env=command_env(call))``.
    """
    step = step or resolve_step(call)
    return {
        "DATAMILL_OUTPUT_DIR": str(call.output_dir),
        "DATAMILL_SCRATCH": str(call.scratch_dir),
        "DATAMILL_PARAMS": json.dumps({**step.params, **dict(call.params)}, sort_keys=True),
    }
