"""Coercion of command-line values without Pydantic, for the values that need none.

Typer turns each parameter's value into its annotated type through a Pydantic ``TypeAdapter``, which
it builds per parameter on every start. Importing Pydantic and building those adapters costs about as
much CPU as all the rest of ``datamill ls`` against a server. Nearly every value datamill's commands
receive is already what its annotation says: a string for a ``str``, a whole number (or a string of
digits) for an ``int``, strings for a ``list[str]``, ``None`` for an option not given. For those,
:class:`QuickCoercion` returns the value Typer would return; for anything else (another type, a
number outside its range, ``"1e3"``, a value from an environment variable for a flag) it hands the
value to Typer's own coercion, so results and error messages stay Typer's.

Typer has no public hook for this. The seam is the slot in which a Typer parameter caches its
coercion (``_runtime_param``, filled on first use); :func:`install` fills it first, from the context
a command makes to parse its arguments (:class:`QuickContext`, the commands' ``context_class``, so
that the help option Click adds on the fly is covered too). A Typer without that slot is left as it
is, and tests/test_light_imports.py then reports Pydantic being loaded.
"""

from typing import Any

import typer

#: Returned by :func:`quick_value` when the value needs Typer's full coercion.
FULL = object()


def quick_value(value: Any, param: Any) -> Any:
    """``value`` as Typer would coerce it for ``param``, when that is plain; else :data:`FULL`."""
    desc = param.type_descriptor
    info = desc.parameter_info
    multi = param.multiple or param.nargs == -1
    if value is None:
        return () if multi else None  # as Typer's RuntimeParam.coerce, before any adapter
    if desc.file_annotation is not None or info.parser is not None:
        return FULL
    annotation = desc.annotation
    if multi:
        if annotation == list[str] and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        return FULL
    if annotation is str:
        return value if isinstance(value, str) else FULL
    if annotation is int:
        number = _whole_number(value)
        if (
            number is None
            or (info.min is not None and number < info.min)
            or (info.max is not None and number > info.max)
        ):
            return FULL  # Typer says what is wrong (or clamps, when asked to)
        return number
    return FULL


def _whole_number(value: Any) -> int | None:
    """An ``int`` (not a bool), or a string of ASCII digits, as an int; else None."""
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


class QuickCoercion:
    """A Typer parameter's coercion: :func:`quick_value` first, Typer's own for the rest."""

    def __init__(self) -> None:
        self._full: Any = None

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        """The value for the command (the signature of Typer's ``RuntimeParam.coerce``)."""
        out = quick_value(value, param)
        if out is not FULL:
            return out
        if self._full is None:
            from typer._coercion import build_runtime_param  # Pydantic is loaded here, when needed

            self._full = build_runtime_param(param.type_descriptor)
        return self._full.coerce(value, param=param, ctx=ctx)


def install(params: list[Any]) -> None:
    """Give each Typer parameter in ``params`` a :class:`QuickCoercion` (others are left alone)."""
    for param in params:
        if getattr(param, "_runtime_param", False) is None and hasattr(param, "type_descriptor"):
            param._runtime_param = QuickCoercion()


class QuickContext(typer.Context):
    """A command's context that gives the command's parameters :class:`QuickCoercion` first."""

    def __init__(self, command: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(command, *args, **kwargs)
        install(command.get_params(self))


def install_tree(command: Any) -> None:
    """Make ``command`` and, for a group, all its subcommands use :class:`QuickContext`."""
    command.context_class = QuickContext
    for sub in getattr(command, "commands", {}).values():
        install_tree(sub)
