"""Task keys: one pure function from what a task is to the string its results are cached under.

A task's key is the BLAKE3 hash of the canonical JSON of its parts::

    {"v": 1, "step": "summary", "code": "py:…", "params": {"threshold": 0.5},
     "inputs": [["item:a.csv", "blake3:…"]], "image": null}

→ ``"blake3:<64 hex>"``. Canonical JSON (:mod:`datamill.canonical`) means sorted keys, no
whitespace, UTF-8, and no NaN or infinity. The same parts give the same key in every process and
on every machine (the golden-value tests pin this), so a key seen before is never run again.

What is deliberately *not* part of a key: run ids, timestamps, item metadata, folder paths.
A metadata-only change must not invalidate data tasks (a Data Factory lesson), and a key that
contains a run id caches nothing across runs (a Prefect lesson).

A parameter that has no canonical form (a set, NaN, an arbitrary object) raises
:class:`~datamill.errors.InvalidPipeline` naming it and saying how to fix it. A key is never
silently dropped: silently turning the cache off is worse than failing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import blake3

from datamill.canonical import Unkeyable, canonical_json, canonical_value
from datamill.errors import InvalidPipeline

__all__ = ["KEY_SCHEMA", "KeyMaker", "diff_parts", "key_from_parts", "key_parts", "task_key"]

#: Bumped when the layout of the key parts changes, so old and new keys never collide.
KEY_SCHEMA = 1

InputDigests = Sequence[tuple[str, str]] | Mapping[str, str]


def canonical_params(step_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` as plain JSON data; raises :class:`InvalidPipeline` naming the step and parameter."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if not isinstance(name, str):
            raise InvalidPipeline(f"step '{step_id}': parameter name {name!r} is not a string", step=step_id)
        try:
            out[name] = canonical_value(value, name)
        except Unkeyable as e:
            raise InvalidPipeline(
                f"step '{step_id}' parameter '{e.path}' cannot be part of a task key: {e.problem}; {e.fix}.",
                step=step_id,
                param=name,
            ) from None
    return out


def _inputs(input_digests: InputDigests) -> list[list[str]]:
    """Input (label, digest) pairs as a list; a mapping is sorted by label, a sequence keeps its order."""
    pairs = sorted(input_digests.items()) if isinstance(input_digests, Mapping) else list(input_digests)
    out: list[list[str]] = []
    seen: set[str] = set()
    for pair in pairs:
        label, digest = pair
        if not isinstance(label, str) or not isinstance(digest, str):
            raise TypeError(f"input digests must be (label, digest) string pairs, got {pair!r}")
        if label in seen:
            # Two inputs under one label would make the key ambiguous; it is a caller bug.
            raise ValueError(f"input label {label!r} appears twice")
        seen.add(label)
        out.append([label, digest])
    return out


def key_parts(
    step_id: str,
    step_code: str,
    params: Mapping[str, Any],
    input_digests: InputDigests,
    image_digest: str | None = None,
) -> dict[str, Any]:
    """The named parts a key is hashed from (what ``datamill why`` shows).

    >>> key_parts("s", "py:abc", {"b": 1, "a": (1, 2)}, {"item:a.csv": "blake3:00"})
    {'v': 1, 'step': 's', 'code': 'py:abc', 'params': {'b': 1, 'a': [1, 2]}, 'inputs': [['item:a.csv', 'blake3:00']], 'image': None}
    """  # noqa: E501
    return {
        "v": KEY_SCHEMA,
        "step": str(step_id),
        "code": str(step_code),
        "params": canonical_params(step_id, params),
        "inputs": _inputs(input_digests),
        "image": image_digest,
    }


def key_from_parts(parts: Mapping[str, Any]) -> str:
    """The key of parts made by :func:`key_parts`: ``"blake3:<hex>"``."""
    return "blake3:" + blake3.blake3(canonical_json(parts).encode("utf-8")).hexdigest()


def task_key(
    step_id: str,
    step_code: str,
    params: Mapping[str, Any],
    input_digests: InputDigests,
    image_digest: str | None = None,
) -> str:
    """A task's cache key: ``"blake3:<hex>"`` of the canonical JSON of its parts.

    ``step_id`` names the step, ``step_code`` identifies its code (source digest or declared
    version), ``params`` are the resolved parameters, ``input_digests`` are (label, digest)
    pairs for every input the task reads (a mapping is sorted by label; a sequence keeps its
    order, which matters for aggregate inputs) and ``image_digest`` is the container image's
    digest where there is one.

    Raises:
        InvalidPipeline: a parameter has no canonical form (the message names it and the fix).
    """
    return key_from_parts(key_parts(step_id, step_code, params, input_digests, image_digest))


class KeyMaker:
    """The keys of many tasks of one step: :func:`task_key` with the step's parts encoded once.

    A step's tasks differ only in their inputs, so the canonical JSON of everything else is made
    once and each key only encodes its own inputs. ``KeyMaker(...).key(inputs)`` equals
    ``task_key(..., inputs, ...)`` for the same arguments (a test checks it).

    Raises:
        InvalidPipeline: a parameter has no canonical form (at construction).
    """

    #: the canonical JSON of the parts with no inputs contains this exactly once, before "params"
    _HOLE = '"inputs":[]'

    #: the parameters' place in the canonical JSON of the parts made with none
    _NO_PARAMS = '"params":{}'

    def __init__(
        self,
        step_id: str,
        step_code: str,
        params: Mapping[str, Any],
        image_digest: str | None = None,
        params_json: str | None = None,
    ) -> None:
        """``params_json``, when given, is the canonical JSON of ``params`` made already (the run's
        :class:`~datamill.engine.paramsets.Encoder`): not made again."""
        text = canonical_json(
            key_parts(step_id, step_code, {} if params_json is not None else params, (), image_digest)
        )
        # Keys sort "code" < "image" < "inputs" < "params": the first hole is the top-level one (the
        # code and image are strings, whose quotes are escaped; a parameter could contain one too).
        head, hole, tail = text.partition(self._HOLE)
        assert hole, text
        self._head = (head + '"inputs":').encode("utf-8")
        self._tail = [tail.encode("utf-8")]
        if params_json is not None:
            # With no parameters in them, the parts' only '"params":{}' is the top-level one.
            before, found, after = tail.partition(self._NO_PARAMS)
            assert found, tail
            self._tail = [(before + '"params":').encode("utf-8"), params_json.encode("utf-8"), after.encode("utf-8")]

    def key(self, input_digests: InputDigests) -> str:
        """The key of the step's task reading ``input_digests`` (as :func:`task_key` takes them)."""
        body = canonical_json(_inputs(input_digests)).encode("utf-8")
        # Hashed in three updates, not one joined copy: the tail holds the step's parameters, which
        # may be megabytes (a lookup table), and a copy of them per key cost a third of the hash.
        h = blake3.blake3(self._head)
        h.update(body)
        for part in self._tail:
            h.update(part)
        return "blake3:" + h.hexdigest()


def diff_parts(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Which parts differ between two :func:`key_parts` results, most specific first.

    Returns names like ``"code"``, ``"params.threshold"``, ``"inputs.item:a.csv"`` (an input
    added, removed or changed) and ``"image"``; an empty list means the keys are equal.
    """
    out: list[str] = []
    for part in ("v", "step", "code"):
        if a.get(part) != b.get(part):
            out.append(part)
    pa, pb = a.get("params") or {}, b.get("params") or {}
    # Compare canonical JSON so 1 and True (equal in Python) still count as different.
    out += [
        f"params.{n}"
        for n in sorted(set(pa) | set(pb))
        if n not in pa or n not in pb or canonical_json(pa[n]) != canonical_json(pb[n])
    ]
    ia, ib = dict(map(tuple, a.get("inputs") or [])), dict(map(tuple, b.get("inputs") or []))
    out += [f"inputs.{label}" for label in sorted(set(ia) | set(ib)) if ia.get(label) != ib.get(label)]
    if [lab for lab, _ in a.get("inputs") or []] != [lab for lab, _ in b.get("inputs") or []] and not any(
        o.startswith("inputs.") for o in out
    ):
        out.append("inputs.order")
    if a.get("image") != b.get("image"):
        out.append("image")
    return out
