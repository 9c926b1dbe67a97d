"""The base of the records the services and clients return (runs, tasks, dataflows, users, ...).

A record is a frozen, slotted dataclass; :meth:`Record.to_dict` gives its JSON form (what the API
answers and ``--json`` prints) and :meth:`Record.from_dict` reads it back (what the remote client
does with an answer). Keys that today's JSON has only sometimes are listed in ``_optional``: they
are left out of :meth:`to_dict` while None, so the JSON keeps its shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Self, TypeVar


class Record:
    """Attribute access, ``to_dict()`` and ``from_dict()`` for a frozen dataclass."""

    __slots__ = ()

    #: Keys left out of :meth:`to_dict` while their value is None.
    _optional: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: the fields, nested records as dicts, absent optional keys left out."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.name in self._optional:
                continue
            out[f.name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The record of a dict as :meth:`to_dict` makes it; unknown keys are ignored."""
        return build(cls, data)

    # Transitional: code written when these were dicts reads them by key. New code uses attributes.
    def __getitem__(self, key: str) -> Any:
        try:
            value = getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None
        if value is None and key in self._optional:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        """The value of field ``key`` (as a dict's ``get``: ``default`` when absent)."""
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _MISSING) is not _MISSING


_MISSING = object()

R = TypeVar("R", bound=Record)


def build(cls: type[R], data: Mapping[str, Any]) -> R:
    """``cls`` from the keys of ``data`` that are its fields (for ``from_dict`` overrides: a slotted
    dataclass's classmethod cannot call ``super()``)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list) and value and isinstance(value[0], Record):
        return [v.to_dict() for v in value]
    return value
