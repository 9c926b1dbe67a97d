"""Wiring: what each argument of a step (or placeholder of a command) receives.

The rules are in :mod:`datamill.pipeline.step` (by parameter name: ``item``, ``items``, ``ctx``,
parameters, other steps' outputs; for commands the same as placeholders, plus ``{output_dir}``,
``{scratch}`` and ``{stem}``, which the runner fills in). Here they are applied: a function's
signature or a command line becomes a tuple of :class:`Arg`, each with its :class:`Role`.
"""

from __future__ import annotations

import enum
import inspect
import string
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from datamill.errors import InvalidPipeline
from datamill.pipeline.options import IDENTIFIER_RE

__all__ = ["COMMAND_BUILTINS", "Arg", "Role", "annotation_name", "check_roles", "command_args", "function_args"]

#: Placeholders a command line may use besides parameters and step names.
COMMAND_BUILTINS = frozenset({"input", "inputs", "output_dir", "scratch", "stem"})


class Role(enum.StrEnum):
    """What a step argument (or command placeholder) receives."""

    #: the input item (per-item steps)
    ITEM = "item"
    #: all input items, in input order (aggregate steps)
    ITEMS = "items"
    #: the step context
    CTX = "ctx"
    #: a parameter value (part of the task key)
    PARAM = "param"
    #: another step's output
    INPUT = "input"


@dataclass(frozen=True)
class Arg:
    """One argument of a step: its name, what it receives and, for inputs, from which step."""

    name: str
    role: Role
    source: str | None = None
    positional_only: bool = False


def fail(step_name: str, message: str, **detail: Any) -> InvalidPipeline:
    """The error for a step whose function or command line cannot be wired as written."""
    return InvalidPipeline(f"step '{step_name}': {message}", step=step_name, **detail)


def annotation_name(ann: Any) -> str:
    """A return annotation as a bare type name: ``"pd.DataFrame"`` → ``"DataFrame"``, ``dict[str,int]`` → ``"dict"``."""
    if ann is inspect.Signature.empty:
        return ""
    if ann is None or ann is type(None):
        return "None"
    if isinstance(ann, str):
        text = ann.strip().strip("'\"")
    else:
        origin = typing.get_origin(ann)
        target = origin if origin is not None else ann
        text = getattr(target, "__name__", str(target))
    return text.split("[", 1)[0].strip().split(".")[-1]


def _is_context(ann: Any) -> bool:
    return annotation_name(ann) == "Context"


def _param_arg(name: str, p: inspect.Parameter, params: Mapping[str, Any], inputs: Mapping[str, str]) -> Arg | None:
    """What parameter ``p`` receives; None for a keyword-only parameter with a default (a step parameter)."""
    po = p.kind is p.POSITIONAL_ONLY
    if p.name in inputs:
        return Arg(p.name, Role.INPUT, inputs[p.name], po)
    if p.name == "ctx" or _is_context(p.annotation):
        return Arg(p.name, Role.CTX, None, po)
    if p.name in ("item", "items"):
        return Arg(p.name, Role(p.name), None, po)
    if p.name in params:
        return Arg(p.name, Role.PARAM, None, po)
    if p.kind is p.KEYWORD_ONLY:
        if p.default is p.empty:
            raise fail(
                name,
                f"keyword-only parameter '{p.name}' has no default. Give it one to make it a parameter "
                f"(*, {p.name}=...), or make it positional to receive the output of step '{p.name}'",
                param=p.name,
            )
        return None
    return Arg(p.name, Role.INPUT, p.name, po)


def function_args(
    fn: Callable[..., Any], name: str, params: Mapping[str, Any], inputs: Mapping[str, str]
) -> tuple[tuple[Arg, ...], dict[str, Any], bool]:
    """Arguments with their roles, parameter defaults, and whether the function takes ``**kwargs``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise fail(name, f"cannot read the signature of {fn!r}: {e}") from None
    args: list[Arg] = []
    defaults: dict[str, Any] = {}
    takes_kwargs = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            raise fail(name, f"*{p.name} cannot be wired; give each input its own named parameter", param=p.name)
        if p.kind is p.VAR_KEYWORD:
            takes_kwargs = True
            continue
        arg = _param_arg(name, p, params, inputs)
        if arg is None:
            arg = Arg(p.name, Role.PARAM, None, p.kind is p.POSITIONAL_ONLY)
            defaults[p.name] = p.default
        args.append(arg)
    for pname in inputs:
        if pname in ("item", "items", "ctx"):
            raise fail(name, f"inputs= cannot rewire '{pname}'; it always means the {pname}", param=pname)
        if pname not in sig.parameters:
            raise fail(
                name,
                f"inputs= names '{pname}', but {fn.__name__}() has no parameter of that name "
                f"(parameters: {', '.join(sig.parameters) or 'none'})",
                param=pname,
            )
    defaults.update(params)
    return tuple(args), defaults, takes_kwargs


def _placeholders(step_name: str, argv: Sequence[str]) -> list[str]:
    names: list[str] = []
    for a in argv:
        try:
            parsed = list(string.Formatter().parse(a))
        except ValueError as e:
            raise fail(
                step_name, f"command argument {a!r} is not a valid template: {e}; write '{{{{' for '{{'"
            ) from None
        for _, fld, spec, conv in parsed:
            if fld is None:
                continue
            if not IDENTIFIER_RE.match(fld) or spec or conv:
                raise fail(
                    step_name,
                    f"command argument {a!r}: placeholder {{{fld}{'!' + conv if conv else ''}"
                    f"{':' + spec if spec else ''}}} is not a plain name like {{input}}",
                )
            if fld not in names:
                names.append(fld)
    return names


def command_args(
    step_name: str, argv: Sequence[str], params: Mapping[str, Any], inputs: Mapping[str, str]
) -> tuple[Arg, ...]:
    """The arguments a command line's placeholders stand for (built-ins like ``{output_dir}`` left out)."""
    names = _placeholders(step_name, argv)
    for pname in inputs:
        if pname not in names:
            raise fail(step_name, f"inputs= names '{pname}', but the command has no {{{pname}}} placeholder")
    args: list[Arg] = []
    for ph in names:
        if ph in inputs:
            args.append(Arg(ph, Role.INPUT, inputs[ph]))
        elif ph == "input":
            args.append(Arg(ph, Role.ITEM))
        elif ph == "inputs":
            args.append(Arg(ph, Role.ITEMS))
        elif ph in COMMAND_BUILTINS:
            continue
        elif ph in params:
            args.append(Arg(ph, Role.PARAM))
        else:
            args.append(Arg(ph, Role.INPUT, ph))
    if "stem" in names and not any(a.role is Role.ITEM for a in args):
        raise fail(step_name, "uses {stem} without {input}; {stem} is the input item's name without suffix")
    return tuple(args)


def check_roles(step_name: str, args: Sequence[Arg], aggregate: bool, command: bool) -> None:
    """Refuse a step that both maps over items and sees them all, or is aggregate yet takes one item."""
    roles = {a.role for a in args}
    item, items = ("{input}", "{inputs}") if command else ("'item'", "'items'")
    takes = "uses" if command else "takes"
    if Role.ITEM in roles and Role.ITEMS in roles:
        raise fail(step_name, f"{takes} both {item} and {items}; a step either maps over items or sees them all")
    if aggregate and Role.ITEM in roles:
        what = f"use {items}" if command else f"take {items}"
        raise fail(step_name, f"is aggregate but {takes} {item}; an aggregate step sees all items: {what}")
