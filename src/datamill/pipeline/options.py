"""A step's options, declared once and checked once.

:class:`StepOptions` holds every option a step can be given, whether by
:func:`~datamill.pipeline.step.step`, :func:`~datamill.pipeline.step.command_step`,
:meth:`~datamill.pipeline.step.Step.configure` or a YAML pipeline, and :meth:`StepOptions.validate`
is the one place they are checked. Its errors are :class:`~datamill.errors.InvalidStepOption`
naming the field (``retries``, ``params.threshold``), so a YAML pipeline can point at the line the
field is on. Messages use the words of the language the options were written in: ``True`` and
``None`` for Python, ``true`` and ``null`` for YAML (see :class:`Spelling`).

What depends on the function or the command line (which argument receives what, whether a
parameter override fits its default's type) is checked where the step is made, with the same
error type.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path
from typing import Any

from datamill.canonical import Unkeyable, canonical_value
from datamill.errors import InvalidPipeline, InvalidStepOption
from datamill.pipeline import codecs

__all__ = ["PYTHON", "YAML", "Spelling", "StepOptions", "check_defaults", "check_name", "check_param", "unknown_param"]

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$")
#: Parameter names and command placeholders: Python identifiers (a step name may also have '-').
IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Names with a fixed meaning in wiring; a step cannot be called one of these.
RESERVED = frozenset({"item", "items", "ctx", "input", "inputs", "output_dir", "scratch", "stem"})
#: Fields a name template may use; see :meth:`~datamill.pipeline.step.Step.published_name`.
TEMPLATE_FIELDS = frozenset({"stem", "item", "step", "ext", "name"})


@dataclass(frozen=True)
class Spelling:
    """How messages write literal values: as the user wrote them, in Python or in YAML."""

    true: str
    false: str
    null: str
    mapping: str


#: Options given in Python (``@step``, ``command_step``, ``Step.configure``).
PYTHON = Spelling(true="True", false="False", null="None", mapping="dict")
#: Options given in a YAML pipeline file.
YAML = Spelling(true="true", false="false", null="null", mapping="mapping")


@dataclass(frozen=True)
class StepOptions:
    """Everything a step can be told besides its function: see :func:`~datamill.pipeline.step.step`.

    ``argv`` and ``base_dir`` are given only for command steps (see
    :func:`~datamill.pipeline.step.command_step`). Values are as given until :meth:`validate`
    returns the checked, normalised copy (``publish`` a tuple, numbers floats, mappings dicts).
    """

    name: str | None = None
    version: str | None = None
    params: Mapping[str, Any] | None = None
    inputs: Mapping[str, str] | None = None
    publish: bool | Sequence[str] = True
    name_template: str | None = None
    aggregate: bool = False
    retries: int = 0
    retry_backoff: float = 1.0
    timeout: float | None = None
    cache: bool = True
    force: bool = False
    codec: str | None = None
    description: str | None = None
    argv: Sequence[str] | None = None
    base_dir: Path | None = None
    image: str | None = None
    env: Mapping[str, str] | None = None
    cpus: float | None = None
    memory: str | None = None
    gpus: str | None = None
    network: str | None = None
    secrets: Sequence[str] | None = None

    def validate(self, spelling: Spelling = PYTHON, *, command: bool = False, container: bool = False) -> StepOptions:
        """The options checked and normalised; ``command``/``container`` say they are for such a step.

        A container step (:func:`~datamill.pipeline.step.container_step`) is a command step whose
        command line runs in ``image``; its command may be left out (the image's own is used).

        Raises:
            InvalidStepOption: the first option that is wrong; ``field`` names it and the message
                says what it must be, in the words of ``spelling``.
        """
        name = check_name(self.name)
        changes = {f: _checked(name, f, check, getattr(self, f), spelling) for f, check in _CHECKS.items()}
        changes["params"] = check_defaults(name, changes["params"])
        checks = _COMMAND_CHECKS if command or container else _PYTHON_CHECKS
        checks = {**checks, **(_CONTAINER_CHECKS if container else _NOT_CONTAINER_CHECKS)}
        if container and self.argv is None:
            checks.pop("argv")  # no command: the image's own, given the input files and the output directory
        for f, check in checks.items():
            changes[f] = _checked(name, f, check, getattr(self, f), spelling)
        return replace(self, name=name, **changes)


class _Problem(Exception):
    """What is wrong with one option's value, without the step's name or the field."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _checked(name: str, field: str, check: Callable[[Any, Spelling], Any], value: Any, s: Spelling) -> Any:
    """``check(value)``, its problem raised as an error naming the step and the field."""
    try:
        return check(value, s)
    except _Problem as p:
        raise InvalidStepOption(
            f"step '{name}': {field} {p.problem}", field=field, problem=p.problem, step=name
        ) from None


def _got(value: Any) -> str:
    return f", got {value!r}"


def _version(value: Any, s: Spelling) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise _Problem("must be a non-empty string like '1' or '2024-05'" + _got(value))
    return value


def _mapping_of(what: str, keys_and_values: type | None) -> Callable[[Any, Spelling], dict[str, Any]]:
    def check(value: Any, s: Spelling) -> dict[str, Any]:
        if value is None:
            return {}
        ok = isinstance(value, Mapping)
        if ok and keys_and_values is not None:
            ok = all(isinstance(k, keys_and_values) and isinstance(v, keys_and_values) for k, v in value.items())
        if not ok:
            raise _Problem(f"must be a {s.mapping} of {what}" + _got(value))
        return dict(value)

    return check


def _publish(value: Any, s: Spelling) -> bool | tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, bool):
        return value
    # A mapping is iterable over its keys, which would read {a: 1} as ["a"]: refuse it.
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise _Problem(f"must be {s.true}, {s.false} or a list of output names" + _got(value))
    names = tuple(value)
    if not all(isinstance(p, str) and p for p in names):
        raise _Problem(f"must be {s.true}, {s.false} or a list of output names" + _got(value))
    return names


def _name_template(value: Any, s: Spelling) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _Problem("must be a non-empty string" + _got(value))
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as e:
        raise _Problem(f"{value!r} is not a valid template: {e}") from None
    unknown = used - TEMPLATE_FIELDS
    if unknown:
        raise _Problem(
            f"{value!r} uses unknown field(s) {', '.join(sorted(unknown))}; "
            f"available: {', '.join('{' + f + '}' for f in sorted(TEMPLATE_FIELDS))}"
        )
    return value


def _flag(value: Any, s: Spelling) -> bool:
    if not isinstance(value, bool):
        raise _Problem(f"must be {s.true} or {s.false}" + _got(value))
    return value


def _retries(value: Any, s: Spelling) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Problem("must be a whole number ≥ 0" + _got(value))
    return value


def _retry_backoff(value: Any, s: Spelling) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise _Problem("must be a number of seconds ≥ 0" + _got(value))
    return float(value)


def _timeout(value: Any, s: Spelling) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise _Problem(f"must be a number of seconds > 0, or {s.null} for no limit" + _got(value))
    return float(value)


def _codec(value: Any, s: Spelling) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Problem("must be the name of a codec" + _got(value))
    try:
        codecs.get_codec(value)
    except InvalidPipeline as e:
        raise _Problem(f"must name a known codec: {e.message}") from None
    return value


def _description(value: Any, s: Spelling) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _Problem("must be a string" + _got(value))
    return value


def _argv(value: Any, s: Spelling) -> tuple[str, ...]:
    ok = isinstance(value, Sequence) and not isinstance(value, str) and bool(value)
    if not ok or not all(isinstance(a, str) for a in value):
        raise _Problem("must be a non-empty list of strings like ['tool', '{input}', '{output_dir}']" + _got(value))
    return tuple(value)


def _base_dir(value: Any, s: Spelling) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, PathLike)):
        raise _Problem("must be a directory path" + _got(value))
    return Path(value).resolve()


def _none(value: Any, s: Spelling) -> None:
    if value is not None:
        raise _Problem("is only for command steps (command_step(...)); a Python step runs its function")


#: An image reference: ``[registry/]name[:tag][@sha256:...]``, or an image ID.
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")
_MEMORY_RE = re.compile(r"^[0-9]+[bkmgBKMG]?$")
_GPUS_RE = re.compile(r"^(all|[0-9]+(,[0-9]+)*)$")


def _image(value: Any, s: Spelling) -> str:
    if not isinstance(value, str) or not _IMAGE_RE.match(value):
        raise _Problem("must name a container image like 'localhost/tool:1' or 'ghcr.io/org/tool:2.1'" + _got(value))
    return value


def _cpus(value: Any, s: Spelling) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1024:
        raise _Problem(f"must be a number of CPUs > 0 like 1 or 0.5, or {s.null} for no limit" + _got(value))
    return float(value)


def _memory(value: Any, s: Spelling) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if not isinstance(value, str) or not _MEMORY_RE.match(value):
        raise _Problem(f"must be an amount like '512m' or '2g', or {s.null} for no limit" + _got(value))
    return value.lower()


def _gpus(value: Any, s: Spelling) -> str | None:
    if value is None:
        return None
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _GPUS_RE.match(text):
        raise _Problem(f"must be 'all', a number of GPUs, or device indices like '0,1', or {s.null}" + _got(value))
    return text


def _network(value: Any, s: Spelling) -> str:
    if value is None:
        return "none"
    if value not in ("none", "host"):
        raise _Problem("must be 'none' (the default: no network) or 'host'" + _got(value))
    return str(value)


def _secrets(value: Any, s: Spelling) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise _Problem("must be a list of secret names like ['HF_TOKEN']" + _got(value))
    if not all(isinstance(v, str) and IDENTIFIER_RE.match(v) for v in value):
        raise _Problem("must be a list of names made of letters, digits and '_' like ['HF_TOKEN']" + _got(value))
    return tuple(value)


def _only_container(value: Any, s: Spelling) -> None:
    if value is not None:
        raise _Problem("is only for container steps (container_step(...), or 'image:' in YAML)")


#: One check per field (``name`` and the parameter values are checked with the step's name).
_CHECKS: dict[str, Callable[[Any, Spelling], Any]] = {
    "version": _version,
    "params": _mapping_of("parameter name → value", None),
    "inputs": _mapping_of("argument name → step name", str),
    "publish": _publish,
    "name_template": _name_template,
    "aggregate": _flag,
    "retries": _retries,
    "retry_backoff": _retry_backoff,
    "timeout": _timeout,
    "cache": _flag,
    "force": _flag,
    "codec": _codec,
    "description": _description,
}
#: What a command step has instead of a function; a Python step must not have it.
_COMMAND_CHECKS: dict[str, Callable[[Any, Spelling], Any]] = {"argv": _argv, "base_dir": _base_dir}
_PYTHON_CHECKS: dict[str, Callable[[Any, Spelling], Any]] = {"argv": _none, "base_dir": _none}
#: What a container step has besides its command; no other step may have it.
_CONTAINER_CHECKS: dict[str, Callable[[Any, Spelling], Any]] = {
    "image": _image,
    "env": _mapping_of("variable name → value (strings)", str),
    "cpus": _cpus,
    "memory": _memory,
    "gpus": _gpus,
    "network": _network,
    "secrets": _secrets,
}
_NOT_CONTAINER_CHECKS: dict[str, Callable[[Any, Spelling], Any]] = dict.fromkeys(_CONTAINER_CHECKS, _only_container)


def check_name(name: Any) -> str:
    """``name`` if it can name a step; otherwise :class:`InvalidStepOption` for the field ``name``."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidStepOption(
            f"step name {name!r} is not valid: use letters, digits, '_' and '-', starting with a letter or '_' "
            "(at most 100 characters)",
            field="name",
            step=str(name),
        )
    if name in RESERVED:
        raise InvalidStepOption(
            f"a step cannot be called '{name}': that name has a fixed meaning in wiring "
            f"({', '.join(sorted(RESERVED))}); rename it",
            field="name",
            step=name,
        )
    return name


def check_defaults(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Declared parameter defaults checked: identifier names, values with a canonical form.

    Raises:
        InvalidStepOption: for the field ``params.<name>``.
    """
    out: dict[str, Any] = {}
    for pname, value in params.items():
        if not isinstance(pname, str) or not IDENTIFIER_RE.match(pname):
            raise InvalidStepOption(
                f"step '{name}': parameter name {pname!r} is not a valid identifier",
                field=f"params.{pname}",
                step=name,
                param=str(pname),
            )
        out[pname] = check_param(name, pname, None, value)
    return out


def _type_label(default: Any) -> str:
    if isinstance(default, bool):
        return "bool (true/false)"
    if isinstance(default, int):
        return "int (a whole number)"
    if isinstance(default, float):
        return "float (a number)"
    if isinstance(default, str):
        return "str"
    if isinstance(default, (list, tuple)):
        return "list"
    if isinstance(default, Mapping):
        return "dict"
    return type(default).__name__


def _fits(default: Any, value: Any) -> bool:
    """Whether ``value`` may replace ``default`` (a default of None accepts anything)."""
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, Mapping):
        return isinstance(value, Mapping)
    return type(value) is type(default)


def check_param(step_name: str, pname: str, default: Any, value: Any) -> Any:
    """``value`` checked against the default's type (int → float converted), canonicalised.

    Raises:
        InvalidStepOption: for the field ``params.<pname>``; the message names the step and parameter.
    """
    if not _fits(default, value):
        raise InvalidStepOption(
            f"step '{step_name}' parameter '{pname}': expected {_type_label(default)} like the default "
            f"{default!r}, got {type(value).__name__} {value!r}",
            field=f"params.{pname}",
            step=step_name,
            param=pname,
        )
    if isinstance(default, float):
        # 1 and 1.0 must give one key, so ints are stored as the float the step will see.
        value = float(value)
    try:
        return canonical_value(value, pname)
    except Unkeyable as e:
        raise InvalidStepOption(
            f"step '{step_name}' parameter '{e.path}' cannot be part of a task key: {e.problem}; {e.fix}.",
            field=f"params.{pname}",
            step=step_name,
            param=pname,
        ) from None


def unknown_param(step_name: str, pname: str, known: Iterable[str]) -> InvalidStepOption:
    """The error for an override of a parameter the step does not have."""
    return InvalidStepOption(
        f"step '{step_name}' has no parameter '{pname}' (its parameters: {', '.join(sorted(known)) or 'none'})",
        field=f"params.{pname}",
        step=step_name,
        param=pname,
    )
