"""How calls and results of the local pool are pickled for the pipe between the parent and a worker.

Two costs of a trivial task are removed here by design:

* What does not change from call to call is sent to a worker once, not with every call: the
  call's function (a step's ``run_step``, or a user's closure pickled by value) and a step pickled
  into ``StepCall.step_bytes`` are *constants*, numbered by the parent (:class:`Constants`) the
  first time it sees them; a call's payload names them by number, and a chunk carries the
  constants that worker has not had yet (:func:`remember` keeps them in the worker).
* Paths are pickled already parsed (:func:`dumps`): the standard pickling of a ``Path`` gives its
  parts, which the other end parses again one by one, and a call and its result hold five paths:
  that cost more than a trivial task's call.

A payload is ``pickle((fn_number, args, kwargs))``; a ``StepCall`` with ``step_bytes`` is
pickled with the number of its step's bytes instead of the bytes.

* A ``StepCall`` and its items go as one flat tuple under one function (:func:`_step_call`), not as
  three dataclasses and two paths: each class pickled names its module and class, which a pickler
  made per call looks up every time (an import look-up each), and that cost more than the data.
  A ``StepResult`` comes back the same way (:func:`_step_result`).
* The scheduler's common call (a step on values, no upstream values) skips even that: it is handed
  over by its fields (:meth:`Constants.step_call`), without a ``StepCall`` made in the parent, and
  its payload is plain data (the template's number, the directories' parsed parts, each item's
  ref fields and paths, the task id) that the chunk carrying it pickles with the others in one go;
  the worker makes the ``StepCall`` from it (:func:`call_parts`). A ``Pickler`` and a reducer per
  call cost more than the data.
* A step's parameters that pickle big (a lookup table, :data:`SHARED_MIN_BYTES` or more) are a
  *shared set*: pickled once by the parent (the tasks of a step share their plan's mapping), sent
  to a worker once with the first chunk that needs them, and unpickled there once. Unlike
  constants, sets come and go with runs: each worker keeps the ones used last, within
  :data:`SHARED_MAX_BYTES` and :data:`SHARED_MAX_SETS` (:class:`SharedSets`), and the parent keeps
  the same account of each worker (the same steps on the same sets, in the order the worker
  receives its chunks), so it knows what to send. A call queued in a worker holds its set, so a set
  let go meanwhile is still there when the call runs.
"""

from __future__ import annotations

import copyreg
import io
import operator
import os
import pickle
import select
import struct
import sys
from collections import OrderedDict, deque
from collections.abc import Mapping
from pathlib import PosixPath, PurePosixPath
from typing import Any

import cloudpickle

from datamill.pipeline.inputs import InputRef
from datamill.pipeline.runner import ItemInput, OutputFile, StepCall, StepResult

__all__ = [
    "MAX_CONSTANTS",
    "MAX_CONSTANT_BYTES",
    "SHARED_MAX_BYTES",
    "SHARED_MAX_SETS",
    "SHARED_MIN_BYTES",
    "SKIP_MAX",
    "Constants",
    "Frames",
    "Outgoing",
    "SharedSets",
    "StepFields",
    "call_parts",
    "dumps",
    "frame",
    "hold",
    "loads",
    "plain_result",
    "remember",
    "sendable",
    "step_result",
    "withdraw",
    "withdrawn",
]

#: how many constants the parent numbers at most (it keeps them, and so does every worker); new
#: ones after that go with every call, as before
MAX_CONSTANTS = 1024
#: a constant pickled bigger than this (a closure holding data) goes with every call: numbered, it
#: and what it holds would be kept by the parent and every worker for their lives
MAX_CONSTANT_BYTES = 1 << 20
#: a call's parameters pickled at least this big are a shared set (smaller ones go with each call)
SHARED_MIN_BYTES = 16 << 10
#: the shared sets a worker keeps at most, in pickled bytes and in number (the last used ones)
SHARED_MAX_BYTES = 256 << 20
SHARED_MAX_SETS = 64
#: the parameter mappings the parent remembers having pickled (the last seen ones)
_SHARED_MEMO = 16
#: the calls' templates the parent remembers having pickled (the last used ones), at most so many
#: and so many pickled bytes; one forgotten and needed again is pickled again under a new number
_TEMPLATE_MEMO = 64
_TEMPLATE_MEMO_BYTES = 64 << 20


# Python 3.11's pathlib makes a path from parts already parsed without parsing them again; later
# versions changed these internals, so there a path goes as its string (one parse, not one per part).
_PARSED = sys.version_info[:2] == (3, 11) and hasattr(PurePosixPath, "_from_parsed_parts")


def _path(p: PurePosixPath) -> tuple[Any, tuple[Any, ...]]:
    if _PARSED:
        return _parsed_path, (type(p), p._drv, p._root, p._parts)  # type: ignore[attr-defined]
    return type(p), (str(p),)


def _parsed_path(cls: Any, drv: str, root: str, parts: list[str]) -> PurePosixPath:
    """A path from the parts of one that was parsed already (3.11 only, see ``_PARSED``)."""
    return cls._from_parsed_parts(drv, root, parts)


#: the fields of the dataclasses a call is made of, in the order :func:`_step_call` sends them
_CALL_FIELDS = tuple(StepCall.__dataclass_fields__)
_REF_FIELDS = tuple(InputRef.__dataclass_fields__)


def _flat_path(p: Any) -> Any:
    """A path as its parsed parts (3.11, see ``_PARSED``) or its string; other values as they are."""
    if type(p) is PosixPath:
        return [p._drv, p._root, p._parts] if _PARSED else str(p)  # type: ignore[attr-defined]
    return p


def _unflat_path(p: Any) -> Any:
    if type(p) is list:
        return _parsed(p)
    if type(p) is str:
        return PosixPath(p)
    return p


def _flat_item(i: ItemInput) -> tuple[Any, ...]:
    ref = i.ref.__dict__
    return (tuple([ref[n] for n in _REF_FIELDS]), i.path, i.source)


def _item(flat: tuple[Any, ...]) -> ItemInput:
    """Worker side: an ``ItemInput`` from its ref's fields and its paths (paths, strings, or the
    parsed parts of :meth:`Constants.step_call`)."""
    ref = object.__new__(InputRef)
    ref.__dict__.update(zip(_REF_FIELDS, flat[0], strict=True))
    path, source = flat[1], flat[2]
    if type(path) is list:
        path = _parsed(path)
    if type(source) is list:
        source = _parsed(source)
    item = object.__new__(ItemInput)
    item.__dict__.update(ref=ref, path=path, source=source)
    return item


def _parsed(p: list[Any]) -> PosixPath:
    return _from_parsed_parts(*p)


#: a path from its parsed parts (what :func:`_flat_path` sends on Python 3.11, the only version
#: that sends parts: elsewhere this is never called)
_from_parsed_parts: Any = getattr(PosixPath, "_from_parsed_parts", None)


def _step_call(call: StepCall) -> tuple[Any, tuple[Any, ...]]:
    """A ``StepCall`` as its step's template's number and a flat tuple of what is its own (see the
    module docstring); failing that (items of a subclass, not ours to flatten), one flat tuple of
    its fields, its ``step_bytes`` as a constant's number when it has them (see
    :meth:`Constants.call`), and its parameters as a shared set's number when they are big (see
    :meth:`Constants.share`)."""
    flat = all(type(i) is ItemInput and type(i.ref) is InputRef for i in (*call.items, call.item) if i is not None)
    if flat and _numbering is not None:
        # Big parameters are a shared set of their own (see share()): steps may share a mapping.
        params = _numbering.share(call.params) if call.params else None
        template = _numbering.template(call, params is not None)
        return _call_from_template, (
            template,
            params,
            _flat_path(call.output_dir),
            _flat_path(call.scratch_dir),
            None if call.item is None else _flat_item(call.item),
            tuple([_flat_item(i) for i in call.items]),
            call.upstream or None,
            call.task_id,
        )
    state = dict(call.__dict__)
    number = shared = None
    if call.step_bytes is not None and _numbering is not None:
        number = _numbering.number(call.step_bytes)
        if number is not None:
            state["step_bytes"] = None
    if call.params and _numbering is not None:
        shared = _numbering.share(call.params)
        if shared is not None:
            state["params"] = None
    if not flat:
        # not ours to flatten (a subclass): pickled as usual
        if number is None and shared is None:
            return call.__reduce_ex__(pickle.HIGHEST_PROTOCOL)  # type: ignore[return-value]
        return _rebuild_step_call, (number, state, False, shared)
    state["item"] = None if call.item is None else _flat_item(call.item)
    state["items"] = tuple(_flat_item(i) for i in call.items)
    state["output_dir"] = _flat_path(call.output_dir)
    state["scratch_dir"] = _flat_path(call.scratch_dir)
    return _rebuild_step_call, (number, tuple([state[n] for n in _CALL_FIELDS]), True, shared)


def _rebuild_step_call(number: int | None, state: Any, flat: bool, shared: int | None = None) -> StepCall:
    """Worker side: the ``StepCall`` again, its ``step_bytes`` taken from the constants and its
    parameters from the shared set the call holds."""
    call = StepCall.__new__(StepCall)
    if flat:
        state = dict(zip(_CALL_FIELDS, state, strict=True))
        state["item"] = None if state["item"] is None else _item(state["item"])
        state["items"] = tuple(_item(i) for i in state["items"])
        state["output_dir"] = _unflat_path(state["output_dir"])
        state["scratch_dir"] = _unflat_path(state["scratch_dir"])
    if number is not None:
        state["step_bytes"] = _constant(number)
    if shared is not None:
        state["params"] = _shared_set(shared)
    call.__dict__.update(state)
    return call


#: the fields of a ``StepCall`` that are the same for every call of a step in a run (its template's)
_TEMPLATE_FIELDS = ("step", "pipeline_ref", "step_bytes", "params", "in_memory")


def _call_from_template(
    template: int,
    params: int | None,
    output_dir: Any,
    scratch_dir: Any,
    item: tuple[Any, ...] | None,
    items: tuple[tuple[Any, ...], ...],
    upstream: Mapping[str, Any] | None,
    task_id: str,
) -> StepCall:
    """Worker side: the ``StepCall`` again from its step's template (a shared set the call holds)
    and its own fields (see :func:`_step_call`); ``params``: the shared set of its big parameters."""
    call = object.__new__(StepCall)
    state = call.__dict__
    state.update(zip(_TEMPLATE_FIELDS, _shared_set(template), strict=True))
    if params is not None:
        state["params"] = _shared_set(params)
    state["output_dir"] = _unflat_path(output_dir)
    state["scratch_dir"] = _unflat_path(scratch_dir)
    state["item"] = None if item is None else _item(item)
    state["items"] = tuple([_item(i) for i in items])
    state["upstream"] = {} if upstream is None else upstream
    state["task_id"] = task_id
    return call


#: the fields of an output file, in the order :func:`_step_result` sends them
_OUTPUT_FIELDS = tuple(OutputFile.__dataclass_fields__)


def _step_result(result: StepResult) -> tuple[Any, tuple[Any, ...]]:
    """A ``StepResult`` as one flat tuple (its outputs' fields, paths parsed already): a result
    pickled as two dataclasses and a path named three classes, which the parent looked up for every
    result, and that cost more than the rest of a trivial task's result."""
    if not all(type(o) is OutputFile for o in result.outputs):
        return result.__reduce_ex__(pickle.HIGHEST_PROTOCOL)  # type: ignore[return-value]
    outputs = tuple(tuple([_flat_path(v) if n == "path" else v for n, v in o.__dict__.items()]) for o in result.outputs)
    return _rebuild_step_result, (outputs, result.seconds)


def _rebuild_step_result(outputs: tuple[tuple[Any, ...], ...], seconds: float) -> StepResult:
    """Parent side: the ``StepResult`` again (see :func:`_step_result` and :func:`plain_result`)."""
    files = []
    new = object.__new__
    for name, path, content_type, codec, data in outputs:  # the order of _OUTPUT_FIELDS (asserted below)
        o = new(OutputFile)
        # parsed parts made a path here, not through _unflat_path and _parsed: two calls a result less
        path = _from_parsed_parts(*path) if type(path) is list else _unflat_path(path)
        o.__dict__.update(name=name, path=path, content_type=content_type, codec=codec, data=data)
        files.append(o)
    result = new(StepResult)
    result.__dict__.update(outputs=tuple(files), seconds=seconds)
    return result


assert _OUTPUT_FIELDS == ("name", "path", "content_type", "codec", "data"), "_rebuild_step_result names them"

#: what a plain result's output fields may be: nothing that could fail to pickle in a worker's batch
_PLAIN_TYPES = (str, bytes, type(None))


def plain_result(result: Any) -> tuple[tuple[tuple[Any, ...], ...], float] | None:
    """Worker side: a ``StepResult`` of output files of plain fields as plain data (what
    :func:`_step_result` pickles), to go in the worker's batch as it is and be rebuilt by
    :func:`step_result`; None for any other return value (pickled by itself, as before).

    A result pickled by itself was unpickled by itself in the parent's event loop, one ``loads``
    (and one look-up of the function that rebuilds it) per result; as plain data it is decoded
    with its batch, in the one ``loads`` of the batch."""
    if type(result) is not StepResult or type(result.seconds) is not float:
        return None
    outputs = []
    for o in result.outputs:
        if type(o) is not OutputFile:
            return None
        d = o.__dict__
        if len(d) != len(_OUTPUT_FIELDS):
            return None  # an attribute of its own besides the fields: pickled whole
        name, path, content_type, codec, data = d["name"], d["path"], d["content_type"], d["codec"], d["data"]
        if (
            type(path) is not PosixPath
            or type(name) not in _PLAIN_TYPES
            or type(content_type) not in _PLAIN_TYPES
            or type(codec) not in _PLAIN_TYPES
            or type(data) not in _PLAIN_TYPES
        ):
            return None
        outputs.append((name, _flat_path(path), content_type, codec, data))
    return tuple(outputs), result.seconds


def step_result(plain: tuple[tuple[tuple[Any, ...], ...], float]) -> StepResult:
    """Parent side: the ``StepResult`` of a worker's :func:`plain_result`."""
    return _rebuild_step_result(*plain)


_TABLE: dict[type, Any] = dict(copyreg.dispatch_table)
_TABLE[PosixPath] = _path
_TABLE[PurePosixPath] = _path
_TABLE[StepResult] = _step_result
_CALL_TABLE = dict(_TABLE)
_CALL_TABLE[StepCall] = _step_call

#: the parent's numbering while it pickles a call (one thread: the event loop's)
_numbering: Constants | None = None
#: worker side: constants received, by number (and those not unpickled yet)
_constants: dict[int, Any] = {}
_pending: dict[int, bytes] = {}
#: worker side: the shared sets kept (:func:`hold`), each ``[pickled bytes or None, set or None]``
_holders: dict[int, list[Any]] = {}
#: worker side: the shared sets of the call being unpickled (its own hold on them)
_current: dict[int, list[Any]] = {}


def dumps(obj: Any, *, call: bool = False) -> bytes:
    """``obj`` pickled with the standard pickler, paths as strings."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _CALL_TABLE if call else _TABLE
    pickler.dump(obj)
    return buf.getvalue()


def loads(data: bytes) -> Any:
    """What :func:`dumps` (or cloudpickle) made."""
    return pickle.loads(data)


#: a step's call by its fields (:meth:`Constants.step_call`): its template (step, pipeline reference,
#: step bytes, parameters, ``in_memory``), its output and scratch directories, its item and items as
#: ``(ref, path, source)``, its task id
StepFields = tuple[
    tuple[str, "str | None", "bytes | None", Mapping[str, Any], bool],
    tuple["list[Any] | str", "list[Any] | str"],
    "tuple[InputRef, Any, Any] | None",
    tuple[tuple[InputRef, Any, Any], ...],
    str,
]


class Constants:
    """The parent's numbering of constants: object → number, and each one's pickled bytes."""

    def __init__(self) -> None:
        # Keyed by id(); the object itself is kept, so its id is never reused by another one.
        self._numbers: dict[int, tuple[int, Any]] = {}
        #: number → the constant pickled (what a worker receives)
        self.data: dict[int, bytes] = {}
        self._used: list[int] = []
        # Parameter mappings pickled lately, by id() (each kept, so its id is not reused): number
        # of its shared set and the pickled bytes, or None for a small one sent with each call.
        self._sets: OrderedDict[int, tuple[Any, int | None, bytes | None]] = OrderedDict()
        self._set_count = 0
        self._used_sets: list[tuple[int, bytes]] = []
        # Templates of steps' calls pickled lately (see template()), by their fields (the objects
        # kept, so that their ids are not reused): number of its shared set, and its bytes.
        self._templates: OrderedDict[tuple[Any, ...], tuple[tuple[Any, ...], int, bytes]] = OrderedDict()
        self._template_bytes = 0
        #: the last :meth:`step_call`'s function and template (the objects) and what it named: the
        #: function's number, the template's and the parameters' sets, the constants and sets used.
        #: A step's calls come one after the other with the same two objects, and looking them up
        #: again (three memos and their LRU moves) cost more than the rest of a call's handover.
        self._last_step: tuple[Any, Any, tuple[int, int, int | None, tuple[int, ...], Any]] | None = None

    def template(self, call: StepCall, shared_params: bool = False) -> int:
        """The number of the shared set holding ``call``'s template: what every call of its step in
        its run has alike (the step, how to find it, its parameters; :data:`_TEMPLATE_FIELDS`),
        pickled once per step and run, sent to a worker once like any shared set, and kept there as
        one (a worker that lost it, or a new one, is sent it again with the next call that needs it).
        ``shared_params``: the parameters are a shared set of their own (:meth:`share`), not in it.

        The tasks of a step share their plan's parameter mapping and the pipeline's ``step_bytes``,
        so the key is by identity for those (the objects are kept with the key). Raises what
        pickling the template raises (the call then goes by cloudpickle, as a whole).
        """
        return self.template_of(
            call.step, call.pipeline_ref, call.step_bytes, call.params, call.in_memory, shared_params
        )

    def template_of(
        self,
        step: str,
        pipeline_ref: str | None,
        step_bytes: bytes | None,
        params: Mapping[str, Any],
        in_memory: bool,
        shared_params: bool = False,
    ) -> int:
        """:meth:`template` from the template's fields (:data:`_TEMPLATE_FIELDS`)."""
        fields = (step, pipeline_ref, step_bytes, params, in_memory)
        key = (step, pipeline_ref, id(step_bytes), id(params), in_memory)
        hit = self._templates.get(key)
        if hit is not None:
            self._templates.move_to_end(key)
            n, data = hit[1], hit[2]
        else:
            # A plain dict: the plan's mapping may be a read-only view; the worker gets its items.
            data = dumps((*fields[:3], None if shared_params else dict(fields[3]), fields[4]))
            n, self._set_count = self._set_count, self._set_count + 1
            self._templates[key] = (fields, n, data)
            self._template_bytes += len(data)
            while len(self._templates) > 1 and (
                len(self._templates) > _TEMPLATE_MEMO or self._template_bytes > _TEMPLATE_MEMO_BYTES
            ):
                _, (_, _, old) = self._templates.popitem(last=False)
                self._template_bytes -= len(old)
        self._used_sets.append((n, data))
        return n

    def share(self, params: Mapping[str, Any]) -> int | None:
        """The number of ``params`` as a shared set (pickled once per mapping); None when it is small.

        The tasks of a step share their plan's mapping, so it is pickled once per run and step. A
        mapping seen again after it was forgotten gets a new number (and is sent again).
        """
        hit = self._sets.get(id(params))
        if hit is not None:
            self._sets.move_to_end(id(params))
            n, data = hit[1], hit[2]
        else:
            try:
                data = dumps(dict(params))
            except Exception:  # goes with the call, pickled as the call is (cloudpickle, maybe)
                data = None
            n = None
            if data is not None and len(data) >= SHARED_MIN_BYTES:
                n, self._set_count = self._set_count, self._set_count + 1
            else:
                data = None
            self._sets[id(params)] = (params, n, data)
            if len(self._sets) > _SHARED_MEMO:
                self._sets.popitem(last=False)
        if n is None or data is None:
            return None
        self._used_sets.append((n, data))
        return n

    def number(self, obj: Any) -> int | None:
        """``obj``'s number (pickling and numbering it when first seen); None when the table is full."""
        hit = self._numbers.get(id(obj))
        if hit is not None:
            self._used.append(hit[0])
            return hit[0]
        if len(self.data) >= MAX_CONSTANTS:
            return None
        data = _pickle_constant(obj)
        if len(data) > MAX_CONSTANT_BYTES:
            return None
        n = len(self.data)
        self._numbers[id(obj)] = (n, obj)
        self.data[n] = data
        self._used.append(n)
        return n

    def call(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[bytes, tuple[int, ...], tuple[tuple[int, bytes], ...]]:
        """The payload of ``fn(reporter, *args, **kwargs)``, the constants it names and the shared
        sets it names (``(number, pickled)``)."""
        global _numbering
        self._last_step = None  # the memos' order moves here: step_call() looks them up again
        self._used = []
        self._used_sets = []
        n = self.number(fn)
        own = getattr(fn, "__module__", "").startswith("datamill.")
        parts = (n, None if n is not None else fn, args, kwargs)
        payload: bytes | None = None
        if own:
            # datamill's own calls (the engine's run_step on a StepCall of plain data) by the
            # standard pickler: cloudpickle's checks of every object cost more than a trivial task.
            _numbering = self
            try:
                payload = dumps(parts, call=True)
            except Exception:  # e.g. a lambda in the arguments: cloudpickle below
                payload = None
            finally:
                _numbering = None
        if payload is None:
            self._used_sets = []  # cloudpickle sends the parameters with the call
            payload = cloudpickle.dumps(parts, pickle.HIGHEST_PROTOCOL)
        return payload, tuple(dict.fromkeys(self._used)), tuple(dict(self._used_sets).items())

    def step_call(
        self, fn: Any, fields: StepFields
    ) -> tuple[tuple[Any, ...], tuple[int, ...], tuple[tuple[int, bytes], ...]] | None:
        """The payload of ``fn(reporter, StepCall(...))`` for a step's call on values without
        upstream values, as plain data (not pickled: it is pickled with its chunk, see
        :func:`call_parts`), the constants it names and the shared sets it names; None when the
        call does not have that form (then it goes as a ``StepCall`` through :meth:`call`).

        ``fields`` (:data:`StepFields`): ``template``, the call's step, pipeline reference, step
        bytes, parameters and ``in_memory``
        (its step's, alike for all its calls in a run); ``dirs``: its output and scratch directories
        as strings or parsed parts (``pipeline.runner.child_parts``; the worker makes them paths);
        ``item`` and ``items``: ``(ref, path, source)`` each, paths as strings or paths. Only plain
        data goes (an item's metadata a dict: JSON from the database), so a chunk of such payloads
        pickled in one go does not fail; if one does all the same, that call fails (:func:`sendable`).

        The same ``template`` object as the last call's (a scheduler makes one per step and run)
        names the same sets as that call, looked up once: what it names holds for as long as the
        objects do (a set or template the memos let go meanwhile is still sent with its bytes).
        """
        template, dirs, item, items, task_id = fields
        if item is not None and (type(item[0]) is not InputRef or type(item[0].metadata) is not dict):
            return None  # a subclass, or metadata that is not plain JSON data: the general way
        for i in items:
            if type(i[0]) is not InputRef or type(i[0].metadata) is not dict:
                return None
        last = self._last_step
        if last is not None and last[0] is fn and last[1] is template:
            n, number, shared, needs, sets = last[2]
        else:
            self._used = []
            self._used_sets = []
            got = self.number(fn)
            if got is None:
                return None
            n = got
            params = template[3]
            try:
                shared = self.share(params) if params else None
                number = self.template_of(*template, shared is not None)
            except Exception:  # not picklable by the standard pickler: cloudpickle, through call()
                return None
            needs, sets = tuple(dict.fromkeys(self._used)), tuple(dict(self._used_sets).items())
            self._last_step = (fn, template, (n, number, shared, needs, sets))
        payload = (
            n,
            number,
            shared,
            dirs[0],
            dirs[1],
            None if item is None else _plain_item(item),
            tuple([_plain_item(i) for i in items]),
            None,  # no upstream values: the arguments of _call_from_template from here on
            task_id,
        )
        return payload, needs, sets


def sendable(entry: tuple[int, bool, Any, tuple[int, ...]]) -> tuple[int, bool, Any, tuple[int, ...]]:
    """A chunk's entry ``(seq, eager, payload, sets)`` whose plain payload (:meth:`Constants.step_call`)
    pickles; else one that fails the call on the worker, saying why (a chunk is pickled in one go,
    and one call's data must not fail the others)."""
    payload = entry[2]
    if type(payload) is not tuple:
        return entry
    try:
        pickle.dumps(payload, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        text = f"The call could not be pickled to send it to a worker process ({type(exc).__name__}: {exc})."
        return (entry[0], entry[1], pickle.dumps((None, _unsendable, (text,), {}), pickle.HIGHEST_PROTOCOL), entry[3])
    return entry


def _unsendable(reporter: Any, text: str) -> None:
    """Worker side: the call of an entry that could not be pickled (:func:`sendable`) fails with why."""
    raise TypeError(text)


def _plain_item(i: tuple[InputRef, Any, Any]) -> tuple[Any, ...]:
    """An item of :meth:`Constants.step_call` as plain data: its ref's fields, its paths flat."""
    return (_ref_values(i[0].__dict__), _flat_path(i[1]), _flat_path(i[2]))


#: an ``InputRef``'s ``__dict__`` → its fields' values, in the order of :data:`_REF_FIELDS` (one C call)
_ref_values = operator.itemgetter(*_REF_FIELDS)


class SharedSets:
    """Which shared sets a worker keeps: the last used ones, within :data:`SHARED_MAX_BYTES` and
    :data:`SHARED_MAX_SETS`. The parent keeps one per worker, stepped as it sends each chunk; the
    worker its own, stepped as it receives each chunk: the same steps in the same order, so both
    agree on what the worker has."""

    __slots__ = ("sizes", "total")

    def __init__(self) -> None:
        self.sizes: OrderedDict[int, int] = OrderedDict()
        self.total = 0

    def use(self, n: int, size: int) -> tuple[bool, list[int]]:
        """Note that a call uses set ``n`` (``size`` pickled bytes, counted when it is new): whether
        it was kept already, and the sets let go to make room (never ``n`` itself)."""
        held = n in self.sizes
        if held:
            self.sizes.move_to_end(n)
        else:
            self.sizes[n] = size
            self.total += size
        gone: list[int] = []
        while len(self.sizes) > 1 and (self.total > SHARED_MAX_BYTES or len(self.sizes) > SHARED_MAX_SETS):
            old, old_size = self.sizes.popitem(last=False)
            self.total -= old_size
            gone.append(old)
        return held, gone


#: worker side: what this worker keeps of the shared sets (the parent's mirror of it agrees)
_kept = SharedSets()


def hold(names: tuple[int, ...], sent: Mapping[int, bytes]) -> tuple[tuple[int, list[Any]], ...]:
    """Worker side: the shared sets named by a call of a chunk just received, as ``(number, holder)``
    for the call to keep until it runs; ``sent``: the sets the chunk brought (those the parent's
    account says this worker does not keep)."""
    out = []
    for n in names:
        data = sent.get(n)
        held, gone = _kept.use(n, 0 if data is None else len(data))
        if not held:
            if data is None:
                raise RuntimeError(f"shared parameter set {n} was neither sent nor kept")
            _holders[n] = [data, None]
        out.append((n, _holders[n]))
        for g in gone:
            _holders.pop(g, None)
    return tuple(out)


def _shared_set(n: int) -> Any:
    """Worker side: shared set ``n`` of the call being unpickled, unpickled once in this worker."""
    holder = _current[n]
    if holder[1] is None:
        holder[1] = pickle.loads(holder[0])
        holder[0] = None
    return holder[1]


def _pickle_constant(obj: Any) -> bytes:
    if isinstance(obj, bytes) or getattr(obj, "__module__", "").startswith("datamill."):
        try:
            return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        except Exception:  # cloudpickle below says what is wrong, if anything
            pass
    return cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL)


def remember(defs: dict[int, bytes]) -> None:
    """Worker side: keep the constants a chunk brought (unpickled when a call first uses one, so
    that one that cannot be loaded here fails that call, not the worker)."""
    _pending.update(defs)


def _constant(n: int) -> Any:
    data = _pending.pop(n, None)
    if data is not None:
        _constants[n] = pickle.loads(data)
    return _constants[n]


def call_parts(
    payload: bytes | tuple[Any, ...], shared: tuple[tuple[int, list[Any]], ...] = ()
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """Worker side: ``(fn, args, kwargs)`` of a payload (pickled bytes, or the plain data of
    :meth:`Constants.step_call`); ``shared``: the sets it holds (:func:`hold`)."""
    global _current
    _current = dict(shared)
    try:
        if type(payload) is tuple:  # a step's call as plain data (Constants.step_call)
            return _constant(payload[0]), (_call_from_template(*payload[1:]),), {}
        n, fn, args, kwargs = pickle.loads(payload)  # type: ignore[arg-type]  # bytes: the tuple went above
    finally:
        _current = {}
    return (_constant(n) if n is not None else fn), args, kwargs


# ---------------------------------------------------------------------------------- the parent's end of a pipe

_SIZE = struct.Struct("!i")  # multiprocessing.Connection's framing: a signed 4-byte length first ...
_BIG = struct.Struct("!Q")  # ... or -1 and an 8-byte length


def frame(data: bytes) -> bytes:
    """``data`` as one message a worker's ``Connection.recv_bytes`` reads (its length first)."""
    n = len(data)
    head = _SIZE.pack(n) if n <= 0x7FFFFFFF else _SIZE.pack(-1) + _BIG.pack(n)
    return head + data


class Outgoing:
    """The parent's messages to one worker, on a non-blocking socket: written at once when the
    socket takes them (one ``write`` for a frame and its bytes), else kept, in order, and written
    as the socket drains (:meth:`flush`, when the event loop says it is writable).

    The parent never blocks writing: a worker may itself be blocked writing a big result to the
    parent, and a parent blocked writing big arguments to that worker would never read it.
    """

    __slots__ = ("fd", "parts")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        #: what is not written yet, oldest first
        self.parts: deque[memoryview] = deque()

    def send(self, data: bytes) -> bool:
        """Send ``data`` as one message; False when some of it waits for :meth:`flush`. Raises
        OSError when the worker is gone."""
        framed = frame(data)
        if self.parts:
            self.parts.append(memoryview(framed))
            return False
        try:
            n = os.write(self.fd, framed)
        except BlockingIOError:
            n = 0
        if n == len(framed):
            return True
        self.parts.append(memoryview(framed)[n:])
        return False

    def flush(self) -> bool:
        """Write what waits, as much as the socket takes now; True once nothing waits."""
        parts = self.parts
        while parts:
            view = parts[0]
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                return False
            if n < len(view):
                parts[0] = view[n:]
                return False
            parts.popleft()
        return True


#: the most sequence numbers in one withdrawal: its message fits in PIPE_BUF, written whole or not at all
SKIP_MAX = 500


def withdraw(fd: int, tag: int, seqs: list[int]) -> int:
    """Write withdrawals of ``seqs`` to a worker's control pipe (non-blocking); how many of them
    went (the rest did not: the pipe is full). Raises OSError when the worker is gone."""
    done = 0
    for at in range(0, len(seqs), SKIP_MAX):
        part = seqs[at : at + SKIP_MAX]
        try:
            os.write(fd, frame(bytes((tag,)) + struct.pack(f"!{len(part)}q", *part)))
        except BlockingIOError:
            break
        done += len(part)
    return done


def withdrawn(data: bytes) -> tuple[int, ...]:
    """Worker side: the sequence numbers of a withdrawal's message (without its tag)."""
    return struct.unpack(f"!{len(data) // 8}q", data)


class Frames:
    """The messages of one worker as they arrive: each read takes what the socket holds (one system
    call per wake-up of the event loop, however many messages), complete messages are cut out."""

    __slots__ = ("buf", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()

    def read(self) -> bool:
        """One read of what is there (call it only when the socket is readable); False at its end."""
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:  # a wake-up with nothing to read (the socket is non-blocking)
            return True
        if not data:
            return False
        self.buf += data
        return True

    def ready(self) -> bool:
        """Whether the socket can be read now without waiting."""
        return bool(select.select([self.fd], [], [], 0)[0])

    def messages(self) -> list[bytes]:
        """The complete messages read so far, in order (a partial one stays for the next read)."""
        out: list[bytes] = []
        buf = self.buf
        at, end = 0, len(buf)
        while end - at >= 4:
            (n,) = _SIZE.unpack_from(buf, at)
            head = 4
            if n == -1:
                if end - at < 12:
                    break
                (n,) = _BIG.unpack_from(buf, at + 4)
                head = 12
            if end - at - head < n:
                break
            out.append(bytes(buf[at + head : at + head + n]))
            at += head + n
        if at:
            del buf[:at]
        return out
