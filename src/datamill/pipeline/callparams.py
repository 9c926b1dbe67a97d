"""Each call of a step gets parameter values of its own: what one call changes, no other call sees.

The calls of a step share their parameters on the way to where they run: the engine hands every task
of a step its plan's mapping, the local pool sends a worker the step's parameters once per run (the
call's template) and the step's defaults live with the step for the life of the process. A step that
appends to a list parameter or sets a key in a dict parameter would change what the next call of the
step in the same process sees (and, in the scheduler's process, the step's defaults and the values
the next tasks' keys are made from): its outputs would depend on which calls ran before it, and its
key would no longer describe what ran. So :func:`call_params` gives every call its own values:

* immutable values (``str``, ``bytes``, numbers, ``bool``, ``None``, and tuples and frozensets of
  those) are shared as they are: nothing can change them;
* a ``dict``, ``list``, ``set`` or ``bytearray`` of immutable values (a lookup table) is copied, one
  C-level copy (~75 µs a call for a 1 MiB table of strings, ~0.44 ms for 4 MiB, freeing included:
  what a call's own table costs; unpickling it would cost 20 times as much);
* any other value (nested containers, objects) is unpickled for each call from the bytes it was
  pickled to the first time, or deep-copied when it cannot be pickled.

What to do with each value of a mapping is worked out once per mapping (:class:`_Recipe`), not per
call: the mappings a step's calls share are few and live long (a plan's, a worker's template, the
step's defaults). The values are never frozen into read-only types: a step may change its own copy.
A value that can be neither pickled nor copied (a lock, a connection: never a run's parameter, as a
run's parameters are plain JSON data) is the one exception, passed as it is.
"""

from __future__ import annotations

import copy
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["call_params"]

#: types whose values cannot change: shared between calls as they are
_ATOMIC: frozenset[type] = frozenset({str, bytes, int, float, complex, bool, type(None)})
#: how many mappings the recipes are remembered for (the last used; each mapping is kept with its
#: recipe, so that its id is not reused by another one while the recipe is)
_MEMO = 16


def _immutable(value: Any) -> bool:
    """Whether nothing can change ``value`` (so calls may share it)."""
    kind = type(value)
    if kind in _ATOMIC:
        return True
    if kind is tuple or kind is frozenset:
        return all(_immutable(v) for v in value)
    return False


def _flat(value: Any) -> bool:
    """Whether ``value`` is a container whose own copy shares nothing that can change."""
    kind = type(value)
    if kind is bytearray:
        return True
    if kind is dict:
        return _all_immutable(value) and _all_immutable(value.values())
    if kind is list or kind is set:
        return _all_immutable(value)
    return False


def _all_immutable(values: Any) -> bool:
    """Whether every value of the collection ``values`` is immutable (their types first, in C: a big
    table of strings is answered without a Python call per entry)."""
    if set(map(type, values)) <= _ATOMIC:
        return True
    return all(map(_immutable, values))


class _Recipe:
    """How to give a call its own copy of each changeable value of one parameter mapping."""

    __slots__ = ("copies", "pickled")

    def __init__(self, params: Mapping[str, Any]) -> None:
        #: ``(name, value, copier)`` of each changeable value; ``copier(value)`` is the call's own
        self.copies: list[tuple[str, Any, Callable[[Any], Any]]] = []
        #: ``(names, values, pickled)`` of the values unpickled per call: one pickle for them all,
        #: so that a value two parameters share is one value in each call too
        self.pickled: tuple[tuple[str, ...], tuple[Any, ...], bytes] | None = None
        changeable = [(k, v) for k, v in params.items() if not _immutable(v)]
        shared_ids = len({id(v) for _, v in changeable}) < len(changeable)
        deep: list[tuple[str, Any]] = []
        for name, value in changeable:
            if _flat(value) and not shared_ids:
                self.copies.append((name, value, type(value).copy))
            else:
                deep.append((name, value))
        if not deep:
            return
        try:
            data = pickle.dumps(tuple(v for _, v in deep), pickle.HIGHEST_PROTOCOL)
            pickle.loads(data)  # what cannot be loaded back (a class defined in a function) is deep-copied
        except Exception:
            for name, value in deep:
                self.copies.append((name, value, _deep_copier(value)))
            return
        self.pickled = (tuple(n for n, _ in deep), tuple(v for _, v in deep), data)

    def apply(self, params: dict[str, Any]) -> bool:
        """Replace the changeable values of ``params`` (a new dict of the mapping's items) by copies of
        their own; False when ``params`` does not hold the values this recipe was made for."""
        for name, value, copier in self.copies:
            if params.get(name) is not value:
                return False
            params[name] = copier(value)
        if self.pickled is not None:
            names, values, data = self.pickled
            if any(params.get(n) is not v for n, v in zip(names, values, strict=True)):
                return False
            params.update(zip(names, pickle.loads(data), strict=True))
        return True


def _deep_copier(value: Any) -> Callable[[Any], Any]:
    """``copy.deepcopy``, or (a value that cannot be copied either) the value itself."""
    try:
        copy.deepcopy(value)
    except Exception:
        return _same
    return copy.deepcopy


def _same(value: Any) -> Any:
    return value


_recipes: OrderedDict[tuple[int, int], tuple[Mapping[str, Any], Mapping[str, Any], _Recipe]] = OrderedDict()
_lock = threading.Lock()  # calls run in several threads (inline with timeouts, Dask's worker threads)


def call_params(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters one call of a step runs with: ``defaults`` (the step's) with ``given`` (the
    call's) over them, in a new dict whose changeable values are the call's own (see the module's
    text). Parameters of immutable values only (the common case) cost one scan of them."""
    params = {**defaults, **given}
    for value in params.values():
        if type(value) not in _ATOMIC:
            break
    else:
        return params
    key = (id(defaults), id(given))
    with _lock:
        hit = _recipes.get(key)
        if hit is not None:
            _recipes.move_to_end(key)
    if hit is not None and hit[2].apply(params):
        return params
    # A mapping not seen lately, or one whose values were replaced since: a new recipe.
    params = {**defaults, **given}
    recipe = _Recipe(params)
    applied = recipe.apply(params)
    assert applied  # made from these very values
    with _lock:
        _recipes[key] = (defaults, given, recipe)
        _recipes.move_to_end(key)
        while len(_recipes) > _MEMO:
            _recipes.popitem(last=False)
    return params
