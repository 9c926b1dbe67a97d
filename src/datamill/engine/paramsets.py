"""Step parameters stored once by their digest, not once per task.

A step's tasks all have the same resolved parameters, and so do the runs a trigger makes, one per
landed item: written on every task row, a 1 MiB lookup table cost 1 MiB of database (and its JSON
encoding) per task. Each distinct parameter set is a row of the ``params`` table instead, keyed by
the BLAKE3 digest of its canonical JSON (:mod:`datamill.canonical`), and a task names it in
``tasks.params_digest`` (None: no parameters). Content-addressed rather than once per run: a run a
trigger makes has a task or two, so a set stored per run would still be stored per task.

A run's own row names its sets the same way (:func:`run_columns`, :func:`run_params`): the
parameters the user gave (``runs.params_digest``) and each step's share of them (``steps`` in
``runs.params_meta``). A table passed as ``table=...`` is one set for all three (the run's, the
step's overrides, the task's resolved parameters when the step has no other), stored once however
many runs a trigger makes with it.

The digest is only the address of the set; a task's key (:mod:`datamill.engine.keys`) still
hashes the parameters themselves, as it always did, so keys recorded before are unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import blake3
import orjson
from sqlalchemy import Connection, cast, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.types import LargeBinary

from datamill.canonical import Unkeyable, canonical_json, canonical_value
from datamill.db.models import ParamSet

__all__ = [
    "INLINE_BYTES",
    "Encoder",
    "decode",
    "encode",
    "load",
    "load_digests",
    "load_listed",
    "params_of",
    "run_columns",
    "run_digests",
    "run_params",
    "run_sets",
    "store",
]

#: A task listing (``GET /runs/{id}/tasks``) carries a set inline up to this many bytes of canonical
#: JSON; a bigger one is read once by its digest (``GET /runs/{id}/params/{digest}``).
INLINE_BYTES = 16 << 10
#: Digests per look-up query (SQLite allows 32,766 variables).
DIGESTS_PER_QUERY = 500
#: a set whose text is at least this long is looked for before it is inserted (see ``_write``)
CHECK_FIRST_BYTES = 64 << 10


def encode(params: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(digest, text)`` of a parameter set: its canonical JSON and that text's ``"blake3:<hex>"``; None when empty.

    A value with no canonical form (NaN, a non-string key) cannot be part of a task key and is
    refused when the key is made; stored without one (a task of a step whose key was never made),
    it is written as the ``json`` module writes it, keys sorted, as the per-task column had it.
    """
    if not params:
        return None
    try:
        text = canonical_json(canonical_value(dict(params)))
    except Unkeyable:
        text = json.dumps(dict(params), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "blake3:" + blake3.blake3(text.encode("utf-8")).hexdigest(), text


class Encoder:
    """The canonical JSON and digests of the parameter sets of one run, each value encoded once.

    A big parameter is in several sets of a run: the parameters the user gave, the step's share of
    them, each step's resolved parameters (a copy, made when it was checked), and it is hashed into
    the plan identity and each step's keys. Encoded for each, a 4 MiB table cost half a second of a
    run's CPU. Here each value is encoded once, by identity (the objects are kept, so an id is never
    another object's), and a set's text is put together from its values' texts, which gives
    exactly :func:`datamill.canonical.canonical_json` of the set. A value and its checked copy
    (:meth:`same`) share one text. Values must not change while the encoder is in use.
    """

    def __init__(self) -> None:
        #: id of a value -> (the value, the value its text is made from, whether that one is canonical)
        self._values: dict[int, tuple[Any, Any, bool]] = {}
        #: id of a value texts are made from -> (it, its canonical JSON)
        self._texts: dict[int, tuple[Any, str]] = {}
        #: id of a set -> (the set, its signature: its names and the ids of its values' sources)
        self._sigs: dict[int, tuple[Mapping[str, Any], tuple[tuple[str, int], ...]]] = {}
        #: a set's signature -> (digest, canonical JSON)
        self._sets: dict[tuple[tuple[str, int], ...], tuple[str, str]] = {}
        #: characters of values encoded so far (each value once: what a run's parameters cost to encode)
        self.encoded = 0

    def same(self, value: Any, canonical: Any) -> None:
        """Record that ``canonical`` is ``value`` as :func:`canonical_value` makes it (checked already).

        Only containers are recorded: a number may have been converted (an int given for a float
        parameter), which changes its text; a container's canonical form has the same text.
        """
        source = canonical
        if isinstance(value, (Mapping, list, tuple)):
            # Checked again for another step (another copy): all its copies share the first one's text.
            entry = self._values.get(id(value))
            source = entry[1] if entry is not None and entry[2] else canonical
            self._values[id(value)] = (value, source, True)
        if id(canonical) not in self._values or canonical is not source:
            self._values[id(canonical)] = (canonical, source, True)

    def canonical_text(self, params: Mapping[str, Any]) -> str:
        """The canonical JSON of the set ``params``; raises :class:`Unkeyable` as :func:`canonical_value` does."""
        return self._set(params)[1]

    def encode(self, params: Mapping[str, Any]) -> tuple[str, str] | None:
        """:func:`encode`, each value encoded once however many sets of the run hold it."""
        if not params:
            return None
        try:
            return self._set(params)
        except Unkeyable:
            return encode(params)

    def _set(self, params: Mapping[str, Any]) -> tuple[str, str]:
        known = self._sigs.get(id(params))
        if known is None:
            if not all(isinstance(k, str) for k in params):
                canonical_value(dict(params))  # raises Unkeyable naming the key
            sig = tuple((k, self._source(params[k])) for k in sorted(params))
            known = self._sigs[id(params)] = (params, sig)
        sig = known[1]
        out = self._sets.get(sig)
        if out is None:
            # Joined as json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) writes a dict.
            text = "{" + ",".join([json.dumps(k, ensure_ascii=False) + ":" + self._texts[i][1] for k, i in sig]) + "}"
            out = self._sets[sig] = ("blake3:" + blake3.blake3(text.encode("utf-8")).hexdigest(), text)
        return out

    def _source(self, value: Any) -> int:
        """The id of the value ``value``'s text is made from, that text made now if it is new."""
        entry = self._values.get(id(value))
        if entry is None:
            entry = self._values[id(value)] = (value, value, False)
        source, canonical = entry[1], entry[2]
        if id(source) not in self._texts:
            # Checked values are canonical already: only encoded. Others are checked here.
            text = canonical_json(source if canonical else canonical_value(source))
            self._texts[id(source)] = (source, text)
            self.encoded += len(text)
        return id(source)


def decode(text: str | bytes) -> dict[str, Any]:
    """A parameter set as :func:`encode` wrote it."""
    try:
        out = orjson.loads(text)
    except orjson.JSONDecodeError:  # what the json module writes and orjson refuses (NaN, ...)
        out = json.loads(text)
    return dict(out)


def store(conn: Connection, sets: Iterable[Mapping[str, Any]], encoder: Encoder | None = None) -> list[str | None]:
    """The digest of each of ``sets`` (None for an empty one), each set not stored yet written once.

    The tasks of one step share their parameters' mapping: it is encoded once per call, not once
    per task (the mappings are kept until the call returns, so an id seen is never a new object's).
    With ``encoder`` (the run's), a set it encoded already is not encoded again.
    """
    seen: dict[int, tuple[Mapping[str, Any], str | None]] = {}
    texts: dict[str, str] = {}
    out: list[str | None] = []
    for params in sets:
        known = seen.get(id(params))
        if known is None:
            encoded = encode(params) if encoder is None else encoder.encode(params)
            known = seen[id(params)] = (params, None if encoded is None else encoded[0])
            if encoded is not None:
                texts[encoded[0]] = encoded[1]
        out.append(known[1])
    _write(conn, texts)
    return out


def _write(conn: Connection, texts: Mapping[str, str]) -> None:
    """Insert the sets of ``texts`` (``digest -> text``) that the table does not have yet.

    One ``INSERT`` that skips the sets already there: a run a trigger makes records a set it
    usually has already, and a statement more per landed item is what that path counts. Sets of
    :data:`CHECK_FIRST_BYTES` or more are looked for first, so that a big one stored before is
    not sent to the database again with every run.
    """
    if not texts:
        return
    big = [d for d, t in texts.items() if len(t) >= CHECK_FIRST_BYTES]
    have = set(load_digests(conn, big)) if big else set()
    new = [{"digest": d, "data": t} for d, t in texts.items() if d not in have]
    if not new:
        return
    # Two writers may store the same set at once (PostgreSQL): the second one's row is the same.
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(ParamSet).on_conflict_do_nothing(index_elements=["digest"]), new)


def _in_batches(digests: Iterable[str | None]) -> Iterator[list[str]]:
    """The distinct digests of ``digests`` (Nones skipped), sorted, :data:`DIGESTS_PER_QUERY` at a time."""
    wanted = sorted({d for d in digests if d})
    for i in range(0, len(wanted), DIGESTS_PER_QUERY):
        yield wanted[i : i + DIGESTS_PER_QUERY]


def load_digests(conn: Connection, digests: Iterable[str]) -> list[str]:
    """Which of ``digests`` the ``params`` table has."""
    out: list[str] = []
    for some in _in_batches(digests):
        out += conn.execute(select(ParamSet.digest).where(ParamSet.digest.in_(some))).scalars()
    return out


def load(conn: Connection, digests: Iterable[str | None]) -> dict[str, dict[str, Any]]:
    """``digest -> parameters`` for the sets named by ``digests`` (Nones skipped), each read and decoded once.

    Tasks that share a set share the one dict: callers read it, never change it.
    """
    out: dict[str, dict[str, Any]] = {}
    for some in _in_batches(digests):
        for digest, text in conn.execute(select(ParamSet.digest, ParamSet.data).where(ParamSet.digest.in_(some))):
            out[digest] = decode(text)
    return out


def _byte_length(conn: Connection) -> Any:
    """The size in bytes (UTF-8) of a set's text, as the database computes it (``length`` counts characters)."""
    if conn.dialect.name == "postgresql":
        return func.octet_length(ParamSet.data)
    return func.length(cast(ParamSet.data, LargeBinary))


def load_listed(
    conn: Connection, digests: Iterable[str | None], inline_bytes: int
) -> dict[str, tuple[int, dict[str, Any] | None]]:
    """``digest -> (size in bytes of its canonical JSON, parameters or None)`` for the sets named by ``digests``.

    For a listing of many tasks: a set of at most ``inline_bytes`` is read and decoded, a bigger
    one only measured by the database (its text never leaves it), so that a page of tasks sharing
    a 1 MiB table costs neither the server's memory nor the answer a copy of it per task.
    """
    out: dict[str, tuple[int, dict[str, Any] | None]] = {}
    size = _byte_length(conn)
    small = func.substr(ParamSet.data, 1, inline_bytes + 1)  # characters >= bytes: enough to hold any small set
    for some in _in_batches(digests):
        rows = conn.execute(select(ParamSet.digest, size, small).where(ParamSet.digest.in_(some)))
        for digest, n, text in rows:
            out[digest] = (int(n), decode(text) if n <= inline_bytes else None)
    return out


def params_of(found: Mapping[str, dict[str, Any]], digest: str | None) -> dict[str, Any]:
    """A task's parameters from what :func:`load` found for its ``params_digest`` (no digest: none)."""
    return {} if digest is None else found.get(digest, {})


def run_sets(params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The sets a run's parameters (``{"user": ..., "steps": {step: ...}, ...}``) are stored as, in the
    order :func:`run_columns` takes their digests: the user's, then each step's."""
    return [params.get("user") or {}, *(params.get("steps") or {}).values()]


def run_columns(params: Mapping[str, Any], digests: list[str | None]) -> tuple[str | None, dict[str, Any]]:
    """``runs.params_digest`` and ``runs.params_meta`` of a run's parameters, given the digests of
    :func:`run_sets` (as :func:`store` returned them): the rest (image digests) is kept as it is."""
    steps = params.get("steps") or {}
    meta = {k: v for k, v in params.items() if k not in ("user", "steps")}
    meta["steps"] = dict(zip(steps, digests[1:], strict=True))
    return digests[0], meta


def run_digests(params_digest: str | None, meta: Mapping[str, Any] | None) -> list[str | None]:
    """The digests of the sets a run's row names (to :func:`load` them)."""
    return [params_digest, *((meta or {}).get("steps") or {}).values()]


def run_params(
    found: Mapping[str, dict[str, Any]], params_digest: str | None, meta: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A run's parameters as they were recorded (``{"user": ..., "steps": ..., "images": ...}``), from
    what :func:`load` found for :func:`run_digests` (copies: the sets themselves are shared)."""
    rest = dict(meta or {})
    steps = rest.pop("steps", None) or {}
    return {
        "user": dict(params_of(found, params_digest)),
        "steps": {step: dict(params_of(found, d)) for step, d in steps.items()},
        **rest,
    }
