"""Parsing of command-line values: ``KEY=VALUE`` pairs and JSON-or-string values.

>>> parse_pairs(["n=3", "tags=[\\"a\\"]", "who=ana", "empty="])
{'n': 3, 'tags': ['a'], 'who': 'ana', 'empty': ''}
"""

import json
from collections.abc import Iterable
from typing import Annotated, Any

import typer

from datamill.errors import InvalidInput

#: ``--json`` on every listing and show command.
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of a table.")]

#: ``--meta KEY=VALUE``, repeatable.
MetaOption = Annotated[
    list[str] | None,
    typer.Option(
        "--meta",
        "-m",
        metavar="KEY=VALUE",
        help="Metadata to set, repeatable. VALUE is parsed as JSON when it is valid JSON (`n=3` is the "
        "number 3), else taken as a string.",
    ),
]

#: ``--unset KEY`` of the ``meta`` commands, repeatable.
UnsetOption = Annotated[list[str] | None, typer.Option("--unset", metavar="KEY", help="Remove this key, repeatable.")]


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON that metadata can hold; treat such values as plain strings.
    raise ValueError(name)


def parse_value(text: str) -> Any:
    """``"3"`` -> ``3``, ``'["a"]'`` -> ``["a"]``, ``"true"`` -> ``True``, ``"xrd-1"`` -> ``"xrd-1"``."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return text


def parse_pair(pair: str, what: str = "--meta") -> tuple[str, Any]:
    """``"n=3"`` -> ``("n", 3)``; raises :class:`InvalidInput` naming ``what`` when there is no key."""
    key, sep, value = pair.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InvalidInput(
            f"{what} {pair!r} is not KEY=VALUE; write it like {what} instrument=xrd-1 (or n=3, tags='[\"a\"]')",
            value=pair,
        )
    return key, parse_value(value)


def parse_pairs(pairs: Iterable[str] | None, what: str = "--meta") -> dict[str, Any]:
    """Several ``KEY=VALUE`` strings as one dict (a later key wins)."""
    return dict(parse_pair(p, what) for p in pairs or ())
