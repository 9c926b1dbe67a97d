"""Steps: one unit of computation with a stable identity.

A Python step is a function decorated with :func:`step`; its parameter names say what it
receives::

    @datamill.step
    def summary(item, ctx, *, threshold: float = 0.5) -> dict:   # per-item: maps over input items
        ...

    @datamill.step(publish=False)
    def table(item) -> pd.DataFrame: ...

    @datamill.step
    def report(table, summary) -> str:          # the outputs of steps 'table' and 'summary'
        ...                                     # for the same item

    @datamill.step
    def database(table, items) -> Path:         # 'items' makes it aggregate: one task sees the
        ...                                     # list of 'table' outputs across all items

Wiring, by parameter:

* ``item`` — the input item (an :class:`~datamill.pipeline.inputs.InputFile`); the step maps over items.
* ``items`` — all input items, in input order; the step is aggregate (one task per run).
* ``ctx`` (or any parameter annotated ``Context``) — the :class:`~datamill.pipeline.context.Context`.
* keyword-only parameters with defaults, and names in ``params=`` — parameters (part of the key).
* any other name — the output of the step with that name (or ``inputs={"param": "step"}``).
  An aggregate step receives a list of a per-item step's outputs, in input order; a per-item step
  receives the output for the same item, or an aggregate step's single output.

A step's identity is its name plus its code: the declared ``version=`` when given, otherwise a
digest of the function's source (dedented, parsed and unparsed, decorators dropped, so formatting
and comment edits do not count). **Functions the step calls are not covered** by the source
digest: when you change a helper, bump ``version=`` (or the cache will reuse old results).

A shell-command step is made with :func:`command_step`; its identity is its command line plus
the digest of every script named in it that exists next to the pipeline file.
"""

from __future__ import annotations

import ast
import enum
import fnmatch
import functools
import inspect
import re
import string
import sys
import textwrap
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, overload

import blake3

from datamill.engine.keys import Unkeyable, canonical_json, canonical_value
from datamill.errors import InvalidPipeline
from datamill.pipeline import codecs
from datamill.pipeline.inputs import InputRef

__all__ = ["RETURN", "Arg", "Role", "Step", "command_step", "is_return_output", "step"]

#: The output a step's return value is stored under is named ``return<ext>`` (e.g. ``return.json``);
#: published names come from the step's name template, so users rarely see it.
RETURN = "return"

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$")
_PLACEHOLDER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Names with a fixed meaning in wiring; a step cannot be called one of these.
RESERVED = frozenset({"item", "items", "ctx", "input", "inputs", "output_dir", "scratch", "stem"})
#: Placeholders a command line may use besides parameters and step names.
COMMAND_BUILTINS = frozenset({"input", "inputs", "output_dir", "scratch", "stem"})
_TEMPLATE_FIELDS = frozenset({"stem", "item", "step", "ext", "name"})


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


def is_return_output(name: str) -> bool:
    """Whether an output name is the one a return value is stored under (``return`` + extension)."""
    return name == RETURN or name.startswith(RETURN + ".")


@dataclass(frozen=True, eq=False)
class Step:
    """A step: what to run, how to wire it, and how to treat its outputs. Made by :func:`step` or :func:`command_step`.

    Calling a Python step calls its function directly (handy in unit tests).
    """

    name: str
    kind: Literal["python", "command"]
    code: str
    args: tuple[Arg, ...]
    params: Mapping[str, Any]
    fn: Callable[..., Any] | None = None
    argv: tuple[str, ...] = ()
    version: str | None = None
    publish: bool | tuple[str, ...] = True
    name_template: str | None = None
    aggregate: bool = False
    retries: int = 0
    retry_backoff: float = 1.0
    timeout: float | None = None
    cache: bool = True
    force: bool = False
    codec: str | None = None
    takes_kwargs: bool = False
    base_dir: Path | None = None
    scripts: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ wiring

    @property
    def inputs(self) -> dict[str, str]:
        """Upstream wiring: argument name → the step whose output it receives."""
        return {a.name: a.source for a in self.args if a.role is Role.INPUT and a.source is not None}

    @property
    def upstream(self) -> tuple[str, ...]:
        """Names of the steps this one reads from, without repeats, in argument order."""
        return tuple(dict.fromkeys(self.inputs.values()))

    @property
    def uses_item(self) -> bool:
        """Whether the step takes the input item (``item`` / ``{input}``)."""
        return any(a.role is Role.ITEM for a in self.args)

    @property
    def uses_items(self) -> bool:
        """Whether the step takes all input items (``items`` / ``{inputs}``)."""
        return any(a.role is Role.ITEMS for a in self.args)

    # ------------------------------------------------------------------ parameters

    def resolve_params(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """All parameters with ``overrides`` applied, checked against the defaults' types.

        An ``int`` is accepted (and converted) where the default is a ``float``; a default of
        ``None`` accepts anything.

        Raises:
            InvalidPipeline: an unknown parameter, a value of the wrong type, or a value with no
                canonical form; the message names the step and the parameter.
        """
        out = dict(self.params)
        for pname, value in (overrides or {}).items():
            if pname not in self.params:
                known = ", ".join(sorted(self.params)) or "none"
                raise InvalidPipeline(
                    f"step '{self.name}' has no parameter '{pname}' (its parameters: {known})",
                    step=self.name,
                    param=pname,
                )
            out[pname] = _check_param(self.name, pname, self.params[pname], value)
        return out

    # ------------------------------------------------------------------ outputs

    def return_codec(self) -> codecs.Codec | None:
        """The codec of the return value when the step declares it (``-> dict``, ``codec=``), else None."""
        return codecs.get_codec(self.codec) if self.codec else None

    def publishes(self, output_name: str) -> bool:
        """Whether ``output_name`` (as the task wrote it) is published to the destination folder.

        ``publish`` may be True/False or a list of output names or glob patterns; ``"return"``
        matches the return value's output.
        """
        if isinstance(self.publish, bool):
            return self.publish
        return any(
            (pattern == RETURN and is_return_output(output_name)) or fnmatch.fnmatchcase(output_name, pattern)
            for pattern in self.publish
        )

    def published_name(self, output_name: str, item: InputRef | None, pipeline_name: str = "") -> str:
        """The name an output gets in the destination folder, from the step's name template.

        Template fields: ``{stem}`` (the item's name without suffix; the pipeline name for aggregate
        steps), ``{item}`` (the item's name), ``{step}``, ``{ext}`` (the output's extension) and
        ``{name}`` (the output's own name; ``<step><ext>`` for the return value). Defaults: per-item
        ``"{stem}.{step}{ext}"`` for the return value and ``"{stem}.{name}"`` for named outputs;
        aggregate ``"{step}{ext}"`` and ``"{name}"``. A '/' in the result publishes into a subfolder.

        >>> s = Step("summary", "python", "py:x", (), {})
        >>> s.published_name("return.json", InputRef(None, None, "Raw", "a.csv", 1, "d", 1, "text/csv"))
        'a.summary.json'
        """
        returned = is_return_output(output_name)
        ext = output_name[len(RETURN) :] if returned else codecs.file_ext(PurePosixPath(output_name).name)
        fields = {
            "stem": item.stem if item is not None else (pipeline_name or self.name),
            "item": item.name if item is not None else (pipeline_name or self.name),
            "step": self.name,
            "ext": ext,
            "name": f"{self.name}{ext}" if returned else output_name,
        }
        template = self.name_template
        if template is None:
            if item is not None:
                template = "{stem}.{step}{ext}" if returned else "{stem}.{name}"
            else:
                template = "{step}{ext}" if returned else "{name}"
        name = template.format(**fields)
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InvalidPipeline(
                f"step '{self.name}': name template {template!r} gives {name!r} for output {output_name!r}, "
                "which is not a valid file name",
                step=self.name,
            )
        return name

    # ------------------------------------------------------------------ copies

    def configure(self, **changes: Any) -> Step:
        """A copy with options changed (what YAML pipelines do with ``run:`` steps).

        ``params`` overrides are checked against this step's parameters and merged into them.
        """
        opts = dict(self.options)
        if "params" in changes:
            merged = self.resolve_params(changes.pop("params") or {})
            opts["params"] = {**dict(opts.get("params") or {}), **merged}
        opts.update(changes)
        if self.kind == "command":
            return command_step(opts.pop("name"), opts.pop("argv"), **opts)
        assert self.fn is not None  # a python step always has its function
        return _make_step(self.fn, **opts)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the step's function directly (Python steps only)."""
        if self.fn is None:
            raise TypeError(f"step '{self.name}' is a command step; run it with datamill.pipeline.runner.run_step")
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        what = getattr(self.fn, "__qualname__", "?") if self.kind == "python" else " ".join(self.argv)
        return f"<Step {self.name} {self.kind}: {what}>"


# ---------------------------------------------------------------------------------- checks


def _fail(step_name: str, message: str, **detail: Any) -> InvalidPipeline:
    return InvalidPipeline(f"step '{step_name}': {message}", step=step_name, **detail)


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


def _check_param(step_name: str, pname: str, default: Any, value: Any) -> Any:
    """``value`` checked against the default's type (int → float converted), canonicalised."""
    ok: bool
    if default is None:
        ok = True
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            # 1 and 1.0 must give one key, so ints are stored as the float the step will see.
            value = float(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    elif isinstance(default, Mapping):
        ok = isinstance(value, Mapping)
    else:
        ok = type(value) is type(default)
    if not ok:
        raise InvalidPipeline(
            f"step '{step_name}' parameter '{pname}': expected {_type_label(default)} like the default "
            f"{default!r}, got {type(value).__name__} {value!r}",
            step=step_name,
            param=pname,
        )
    try:
        return canonical_value(value, pname)
    except Unkeyable as e:
        raise InvalidPipeline(
            f"step '{step_name}' parameter '{e.path}' cannot be part of a task key: {e.problem}; {e.fix}.",
            step=step_name,
            param=pname,
        ) from None


def _check_name(name: Any, what: str = "step") -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidPipeline(
            f"{what} name {name!r} is not valid: use letters, digits, '_' and '-', starting with a letter or '_' "
            "(at most 100 characters)",
            step=str(name),
        )
    if name in RESERVED:
        raise InvalidPipeline(
            f"a step cannot be called '{name}': that name has a fixed meaning in wiring "
            f"({', '.join(sorted(RESERVED))}); rename it",
            step=name,
        )
    return name


def _check_options(
    name: str,
    *,
    version: Any,
    publish: Any,
    name_template: Any,
    aggregate: Any,
    retries: Any,
    retry_backoff: Any,
    timeout: Any,
    cache: Any,
    force: Any,
) -> tuple[str | None, bool | tuple[str, ...], float, float | None]:
    """Validate the shared options; returns normalised (version, publish, retry_backoff, timeout)."""
    if version is not None and (not isinstance(version, str) or not version.strip()):
        raise _fail(name, f"version must be a non-empty string like '1' or '2024-05', got {version!r}")
    if isinstance(publish, str):
        publish = [publish]
    if not isinstance(publish, bool):
        if not isinstance(publish, Iterable) or not all(isinstance(p, str) and p for p in publish):
            raise _fail(name, f"publish must be True, False or a list of output names, got {publish!r}")
        publish = tuple(publish)
    if name_template is not None:
        if not isinstance(name_template, str) or not name_template:
            raise _fail(name, f"name_template must be a non-empty string, got {name_template!r}")
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(name_template) if f is not None}
        except ValueError as e:
            raise _fail(name, f"name_template {name_template!r} is not a valid template: {e}") from None
        unknown = used - _TEMPLATE_FIELDS
        if unknown:
            raise _fail(
                name,
                f"name_template {name_template!r} uses unknown field(s) {', '.join(sorted(unknown))}; "
                f"available: {', '.join('{' + f + '}' for f in sorted(_TEMPLATE_FIELDS))}",
            )
    for opt, val in (("aggregate", aggregate), ("cache", cache), ("force", force)):
        if not isinstance(val, bool):
            raise _fail(name, f"{opt} must be True or False, got {val!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise _fail(name, f"retries must be a whole number ≥ 0, got {retries!r}")
    if isinstance(retry_backoff, bool) or not isinstance(retry_backoff, (int, float)) or not retry_backoff >= 0:
        raise _fail(name, f"retry_backoff must be a number of seconds ≥ 0, got {retry_backoff!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf")
    ):
        raise _fail(name, f"timeout must be a number of seconds > 0 (or None for no limit), got {timeout!r}")
    return version, publish, float(retry_backoff), None if timeout is None else float(timeout)


def _check_defaults(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pname, value in params.items():
        if not isinstance(pname, str) or not _PLACEHOLDER_RE.match(pname):
            raise _fail(name, f"parameter name {pname!r} is not a valid identifier", param=str(pname))
        out[pname] = _check_param(name, pname, None, value)
    return out


# ---------------------------------------------------------------------------------- python steps


def _annotation_name(ann: Any) -> str:
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
    return _annotation_name(ann) == "Context"


def _source_code(fn: Callable[..., Any], name: str) -> str:
    """``py:<blake3 of the normalised source>``; raises if the source cannot be read."""
    target = inspect.unwrap(fn)
    try:
        source = inspect.getsource(target)
    except (OSError, TypeError) as e:
        raise _fail(
            name,
            f"cannot read the source of {getattr(target, '__qualname__', target)!r} to key the cache ({e}). "
            "Pass version='1' to @step (and bump it whenever the code changes).",
        ) from None
    source = textwrap.dedent(source)
    normalised = source
    try:
        tree = ast.parse(source)
        node = tree.body[0] if tree.body else None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # Drop decorators so changing retries=/publish= does not invalidate results, and
            # unparse so whitespace and comments do not either.
            node.decorator_list = []
            normalised = ast.unparse(node)
    except SyntaxError:
        pass  # e.g. a lambda in the middle of an expression: digest the raw text
    return "py:" + blake3.blake3(normalised.encode("utf-8")).hexdigest()


def _analyse(
    fn: Callable[..., Any], name: str, params: Mapping[str, Any], inputs: Mapping[str, str]
) -> tuple[tuple[Arg, ...], dict[str, Any], bool]:
    """Arguments with their roles, parameter defaults, and whether the function takes ``**kwargs``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise _fail(name, f"cannot read the signature of {fn!r}: {e}") from None
    args: list[Arg] = []
    defaults: dict[str, Any] = {}
    takes_kwargs = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            raise _fail(name, f"*{p.name} cannot be wired; give each input its own named parameter", param=p.name)
        if p.kind is p.VAR_KEYWORD:
            takes_kwargs = True
            continue
        po = p.kind is p.POSITIONAL_ONLY
        if p.name in inputs:
            args.append(Arg(p.name, Role.INPUT, inputs[p.name], po))
        elif p.name == "ctx" or _is_context(p.annotation):
            args.append(Arg(p.name, Role.CTX, None, po))
        elif p.name == "item":
            args.append(Arg(p.name, Role.ITEM, None, po))
        elif p.name == "items":
            args.append(Arg(p.name, Role.ITEMS, None, po))
        elif p.name in params:
            args.append(Arg(p.name, Role.PARAM, None, po))
        elif p.kind is p.KEYWORD_ONLY:
            if p.default is p.empty:
                raise _fail(
                    name,
                    f"keyword-only parameter '{p.name}' has no default. Give it one to make it a parameter "
                    f"(*, {p.name}=...), or make it positional to receive the output of step '{p.name}'",
                    param=p.name,
                )
            args.append(Arg(p.name, Role.PARAM, None, po))
            defaults[p.name] = p.default
        else:
            args.append(Arg(p.name, Role.INPUT, p.name, po))
    for pname in inputs:
        if pname in ("item", "items", "ctx"):
            raise _fail(name, f"inputs= cannot rewire '{pname}'; it always means the {pname}", param=pname)
        if pname not in sig.parameters:
            raise _fail(
                name,
                f"inputs= names '{pname}', but {fn.__name__}() has no parameter of that name "
                f"(parameters: {', '.join(sig.parameters) or 'none'})",
                param=pname,
            )
    defaults.update(params)
    return tuple(args), defaults, takes_kwargs


def _make_step(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    version: str | None = None,
    params: Mapping[str, Any] | None = None,
    inputs: Mapping[str, str] | None = None,
    publish: bool | Sequence[str] = True,
    name_template: str | None = None,
    aggregate: bool = False,
    retries: int = 0,
    retry_backoff: float = 1.0,
    timeout: float | None = None,
    cache: bool = True,
    force: bool = False,
    codec: str | None = None,
    description: str | None = None,
) -> Step:
    if isinstance(fn, Step):
        raise InvalidPipeline(f"{fn!r} is already a step; use step.configure(...) to change its options")
    if not callable(fn):
        raise InvalidPipeline(f"@step decorates functions; got a {type(fn).__name__}")
    step_name = _check_name(name if name is not None else getattr(fn, "__name__", None))
    version, publish_n, backoff, timeout_n = _check_options(
        step_name,
        version=version,
        publish=publish,
        name_template=name_template,
        aggregate=aggregate,
        retries=retries,
        retry_backoff=retry_backoff,
        timeout=timeout,
        cache=cache,
        force=force,
    )
    if params is not None and not isinstance(params, Mapping):
        raise _fail(step_name, f"params must be a dict of name → default value, got {params!r}")
    if inputs is not None and (
        not isinstance(inputs, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in inputs.items())
    ):
        raise _fail(step_name, f"inputs must be a dict of parameter name → step name, got {inputs!r}")
    args, defaults, takes_kwargs = _analyse(fn, step_name, params or {}, inputs or {})
    roles = {a.role for a in args}
    if Role.ITEM in roles and Role.ITEMS in roles:
        raise _fail(step_name, "takes both 'item' and 'items'; a step either maps over items or sees them all")
    if aggregate and Role.ITEM in roles:
        raise _fail(step_name, "is aggregate but takes 'item'; an aggregate step sees all items: take 'items'")
    defaults = _check_defaults(step_name, defaults)

    if codec is not None:
        codecs.get_codec(codec)  # raises for an unknown codec name
        out_codec: str | None = codec
    else:
        try:
            ret = inspect.signature(fn).return_annotation
        except (TypeError, ValueError):
            ret = inspect.Signature.empty
        out_codec = codecs.ANNOTATION_CODECS.get(_annotation_name(ret))

    if version is not None:
        # With a declared version the source is not read; the qualified name keeps two
        # different functions that share a step name and version apart.
        code = f"py:{getattr(fn, '__qualname__', step_name)}@{version}"
    else:
        code = _source_code(fn, step_name)

    options: dict[str, Any] = {
        "name": step_name,
        "version": version,
        "params": dict(params or {}),
        "inputs": dict(inputs or {}),
        "publish": publish,
        "name_template": name_template,
        "aggregate": aggregate,
        "retries": retries,
        "retry_backoff": retry_backoff,
        "timeout": timeout,
        "cache": cache,
        "force": force,
        "codec": codec,
        "description": description,
    }
    new = Step(
        name=step_name,
        kind="python",
        code=code,
        args=args,
        params=defaults,
        fn=fn,
        version=version,
        publish=publish_n,
        name_template=name_template,
        aggregate=aggregate or Role.ITEMS in roles,
        retries=retries,
        retry_backoff=backoff,
        timeout=timeout_n,
        cache=cache,
        force=force,
        codec=out_codec,
        takes_kwargs=takes_kwargs,
        description=description if description is not None else inspect.getdoc(fn) or "",
        options=options,
    )
    # Look like the function to tools (help(), doctest, Sphinx) without being it.
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        if hasattr(fn, attr):
            object.__setattr__(new, attr, getattr(fn, attr))
    object.__setattr__(new, "__wrapped__", fn)
    return new


@overload
def step(fn: Callable[..., Any], /) -> Step: ...


@overload
def step(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    version: str | None = None,
    params: Mapping[str, Any] | None = None,
    inputs: Mapping[str, str] | None = None,
    publish: bool | Sequence[str] = True,
    name_template: str | None = None,
    aggregate: bool = False,
    retries: int = 0,
    retry_backoff: float = 1.0,
    timeout: float | None = None,
    cache: bool = True,
    force: bool = False,
    codec: str | None = None,
    description: str | None = None,
) -> Callable[[Callable[..., Any]], Step]: ...


def step(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    version: str | None = None,
    params: Mapping[str, Any] | None = None,
    inputs: Mapping[str, str] | None = None,
    publish: bool | Sequence[str] = True,
    name_template: str | None = None,
    aggregate: bool = False,
    retries: int = 0,
    retry_backoff: float = 1.0,
    timeout: float | None = None,
    cache: bool = True,
    force: bool = False,
    codec: str | None = None,
    description: str | None = None,
) -> Step | Callable[[Callable[..., Any]], Step]:
    """Make a function a pipeline step; use bare (``@step``) or with options (``@step(retries=2)``).

    Args:
        name: the step's name (default: the function's name); other steps wire to it by this name.
        version: the step's code version. Without it the key uses a digest of the function's source,
            which does NOT cover helper functions it calls: bump ``version`` when they change.
        params: parameter defaults, e.g. ``{"threshold": 0.5}``; keyword-only arguments with
            defaults are parameters too. Values passed later must have the default's type.
        inputs: explicit wiring, ``{"argument": "step name"}``.
        publish: True/False, or the output names (glob patterns; ``"return"`` for the return value)
            to publish to the destination folder.
        name_template: how published outputs are named; see :meth:`Step.published_name`.
        aggregate: one task over all items instead of one per item (implied by an ``items`` argument).
        retries: how many times a failed task is retried.
        retry_backoff: seconds before the first retry (doubling after each).
        timeout: seconds a task may run; None for no limit.
        cache: False to always run (results are still recorded).
        force: True to run even when the key is cached.
        codec: the codec of the return value when the annotation does not say it.
        description: shown in listings (default: the docstring).

    Raises:
        InvalidPipeline: an invalid option or signature; the message names the step and what to fix.
    """
    opts: dict[str, Any] = {
        "name": name,
        "version": version,
        "params": params,
        "inputs": inputs,
        "publish": publish,
        "name_template": name_template,
        "aggregate": aggregate,
        "retries": retries,
        "retry_backoff": retry_backoff,
        "timeout": timeout,
        "cache": cache,
        "force": force,
        "codec": codec,
        "description": description,
    }
    if fn is not None:
        return _make_step(fn, **opts)
    return functools.partial(_make_step, **opts)


# ---------------------------------------------------------------------------------- command steps


def _caller_dir(depth: int) -> Path:
    """The directory of the file that called us ``depth`` frames up (the cwd when there is none)."""
    frame = sys._getframe(depth + 1)
    file = frame.f_globals.get("__file__")
    return Path(file).resolve().parent if file else Path.cwd()


def _placeholders(step_name: str, argv: Sequence[str]) -> list[str]:
    names: list[str] = []
    for a in argv:
        try:
            parsed = list(string.Formatter().parse(a))
        except ValueError as e:
            raise _fail(
                step_name, f"command argument {a!r} is not a valid template: {e}; write '{{{{' for '{{'"
            ) from None
        for _, fld, spec, conv in parsed:
            if fld is None:
                continue
            if not _PLACEHOLDER_RE.match(fld) or spec or conv:
                raise _fail(
                    step_name,
                    f"command argument {a!r}: placeholder {{{fld}{'!' + conv if conv else ''}"
                    f"{':' + spec if spec else ''}}} is not a plain name like {{input}}",
                )
            if fld not in names:
                names.append(fld)
    return names


def command_step(
    name: str,
    argv: Sequence[str],
    *,
    version: str | None = None,
    params: Mapping[str, Any] | None = None,
    inputs: Mapping[str, str] | None = None,
    publish: bool | Sequence[str] = True,
    name_template: str | None = None,
    aggregate: bool = False,
    retries: int = 0,
    retry_backoff: float = 1.0,
    timeout: float | None = None,
    cache: bool = True,
    force: bool = False,
    base_dir: str | Path | None = None,
    description: str | None = None,
    codec: str | None = None,
) -> Step:
    """A step that runs a command line: ``command_step("conv", ["python", "conv.py", "{input}", "{output_dir}"])``.

    Placeholders: ``{input}`` (the item's local file; per-item), ``{inputs}`` (all items' files;
    aggregate), ``{output_dir}`` (write outputs here), ``{scratch}`` (a temporary directory),
    ``{stem}`` (the item's name without suffix), ``{<param>}`` (a parameter from ``params=``)
    and ``{<step>}`` (the output files of another step, or ``inputs={"placeholder": "step"}``).
    A placeholder that is a whole argument and stands for several files expands to several arguments.

    Every file written to ``{output_dir}`` is an output. The task key covers the command line
    and the digest of every argument that names an existing file relative to ``base_dir`` (by
    default the directory of the file calling ``command_step``, i.e. the pipeline file), so
    editing a script re-runs the step. Programs found on ``PATH`` are not covered: pass
    ``version=`` and bump it when the tool changes.
    """
    del codec  # accepted so Step.configure can pass every option through; command outputs are files
    step_name = _check_name(name)
    if isinstance(argv, str) or not isinstance(argv, Sequence) or not argv:
        raise _fail(step_name, f"argv must be a non-empty list of strings, got {argv!r}")
    if not all(isinstance(a, str) for a in argv):
        raise _fail(step_name, f"every command argument must be a string, got {list(argv)!r}")
    version, publish_n, backoff, timeout_n = _check_options(
        step_name,
        version=version,
        publish=publish,
        name_template=name_template,
        aggregate=aggregate,
        retries=retries,
        retry_backoff=retry_backoff,
        timeout=timeout,
        cache=cache,
        force=force,
    )
    params = dict(params or {})
    inputs = dict(inputs or {})
    defaults = _check_defaults(step_name, params)
    base = Path(base_dir).resolve() if base_dir is not None else _caller_dir(1)
    names = _placeholders(step_name, argv)
    for pname in inputs:
        if pname not in names:
            raise _fail(step_name, f"inputs= names '{pname}', but the command has no {{{pname}}} placeholder")
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
        elif ph in defaults:
            args.append(Arg(ph, Role.PARAM))
        else:
            args.append(Arg(ph, Role.INPUT, ph))
    roles = {a.role for a in args}
    if Role.ITEM in roles and Role.ITEMS in roles:
        raise _fail(step_name, "uses both {input} and {inputs}; a step either maps over items or sees them all")
    if aggregate and Role.ITEM in roles:
        raise _fail(step_name, "is aggregate but uses {input}; an aggregate step sees all items: use {inputs}")
    if "stem" in names and Role.ITEM not in roles:
        raise _fail(step_name, "uses {stem} without {input}; {stem} is the input item's name without suffix")

    scripts: dict[str, str] = {}
    for a in argv:
        if "{" in a or not a or Path(a).is_absolute():
            continue
        candidate = base / a
        if candidate.is_file():
            scripts[a] = "blake3:" + blake3.blake3(candidate.read_bytes()).hexdigest()
    code = (
        "cmd:"
        + blake3.blake3(
            canonical_json({"argv": list(argv), "scripts": scripts, "version": version}).encode("utf-8")
        ).hexdigest()
    )
    options: dict[str, Any] = {
        "name": step_name,
        "argv": list(argv),
        "version": version,
        "params": params,
        "inputs": inputs,
        "publish": publish,
        "name_template": name_template,
        "aggregate": aggregate,
        "retries": retries,
        "retry_backoff": retry_backoff,
        "timeout": timeout,
        "cache": cache,
        "force": force,
        "base_dir": base,
        "description": description,
    }
    return Step(
        name=step_name,
        kind="command",
        code=code,
        args=tuple(args),
        params=defaults,
        argv=tuple(argv),
        version=version,
        publish=publish_n,
        name_template=name_template,
        aggregate=aggregate or Role.ITEMS in roles,
        retries=retries,
        retry_backoff=backoff,
        timeout=timeout_n,
        cache=cache,
        force=force,
        codec=None,
        base_dir=base,
        scripts=scripts,
        description=description or "",
        options=options,
    )
