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

The options (``retries=``, ``publish=``, …) are declared and checked once, in
:class:`~datamill.pipeline.options.StepOptions`, for Python steps, command steps,
:meth:`Step.configure` and YAML pipelines alike; the rules above are applied in
:mod:`datamill.pipeline.wiring`.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import inspect
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal, overload

import blake3

from datamill.canonical import canonical_json
from datamill.errors import InvalidPipeline
from datamill.pipeline import codecs
from datamill.pipeline.inputs import InputRef
from datamill.pipeline.options import PYTHON, Spelling, StepOptions, check_defaults, check_param, unknown_param
from datamill.pipeline.wiring import Arg, Role, annotation_name, check_roles, command_args, fail, function_args

__all__ = ["RETURN", "Arg", "Role", "Step", "command_step", "is_return_output", "step"]

#: The output a step's return value is stored under is named ``return<ext>`` (e.g. ``return.json``);
#: published names come from the step's name template, so users rarely see it.
RETURN = "return"


def is_return_output(name: str) -> bool:
    """Whether an output name is the one a return value is stored under (``return`` + extension)."""
    return name == RETURN or name.startswith(RETURN + ".")


@dataclass(frozen=True, eq=False)
class Step:
    """A step: what to run, how to wire it, and how to treat its outputs. Made by :func:`step` or :func:`command_step`.

    Calling a Python step calls its function directly (handy in unit tests).
    """

    name: str
    kind: Literal["python", "command", "http"]
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
    options: StepOptions = field(default_factory=StepOptions, repr=False)
    #: what an HTTP app step sends where: a :class:`datamill.pipeline.apps.AppSpec` (``kind == "http"``;
    #: typed loosely because that module builds on this one)
    app: Any = None

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
                raise unknown_param(self.name, pname, self.params)
            out[pname] = check_param(self.name, pname, self.params[pname], value)
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

        Raises:
            InvalidStepOption: an option that is wrong; the message names the step and the field.
        """
        return configured(self, changes)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the step's function directly (Python steps only)."""
        if self.fn is None:
            raise TypeError(f"step '{self.name}' is a {self.kind} step; run it in a pipeline (pipeline.run(...))")
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        what = getattr(self.fn, "__qualname__", "?") if self.kind == "python" else " ".join(self.argv)
        if self.app is not None:
            what = f"{self.app.method} {self.app.url}"
        return f"<Step {self.name} {self.kind}: {what}>"


# ---------------------------------------------------------------------------------- making steps


def configured(step: Step, changes: Mapping[str, Any], spelling: Spelling = PYTHON) -> Step:
    """``step`` with its options changed; see :meth:`Step.configure`. Messages use ``spelling``."""
    changes = dict(changes)
    command = step.kind == "command"
    new = replace(step.options, **{k: v for k, v in changes.items() if k != "params"})
    if "params" in changes:
        # Overrides are checked like declared parameters, then against this step's own.
        overrides = replace(new, params=changes["params"]).validate(spelling, command=command).params or {}
        new = replace(new, params={**(step.options.params or {}), **step.resolve_params(overrides)})
    if command:
        return make_command_step(new, spelling)
    if step.app is not None:
        remade: Step = step.app.remake(new, step.inputs.get("input"), spelling)
        return remade
    assert step.fn is not None  # a python step always has its function
    return make_step(step.fn, new, spelling)


def _source_code(fn: Callable[..., Any], name: str) -> str:
    """``py:<blake3 of the normalised source>``; raises if the source cannot be read."""
    target = inspect.unwrap(fn)
    try:
        source = inspect.getsource(target)
    except (OSError, TypeError) as e:
        raise fail(
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


def make_step(fn: Callable[..., Any], options: StepOptions, spelling: Spelling = PYTHON) -> Step:
    """A Python step running ``fn``; ``options`` are checked here (messages use ``spelling``)."""
    if isinstance(fn, Step):
        raise InvalidPipeline(f"{fn!r} is already a step; use step.configure(...) to change its options")
    if not callable(fn):
        raise InvalidPipeline(f"@step decorates functions; got a {type(fn).__name__}")
    if options.name is None:
        options = replace(options, name=getattr(fn, "__name__", None))
    opts = options.validate(spelling)
    assert opts.name is not None and opts.params is not None and opts.inputs is not None  # validate() fills them
    step_name = opts.name
    args, defaults, takes_kwargs = function_args(fn, step_name, opts.params, opts.inputs)
    check_roles(step_name, args, opts.aggregate, command=False)
    defaults = check_defaults(step_name, defaults)

    out_codec = opts.codec
    if out_codec is None:
        try:
            ret = inspect.signature(fn).return_annotation
        except (TypeError, ValueError):
            ret = inspect.Signature.empty
        out_codec = codecs.ANNOTATION_CODECS.get(annotation_name(ret))

    if opts.version is not None:
        # With a declared version the source is not read; the qualified name keeps two
        # different functions that share a step name and version apart.
        code = f"py:{getattr(fn, '__qualname__', step_name)}@{opts.version}"
    else:
        code = _source_code(fn, step_name)

    new = Step(
        name=step_name,
        kind="python",
        code=code,
        args=args,
        params=defaults,
        fn=fn,
        version=opts.version,
        publish=_publish(opts),
        name_template=opts.name_template,
        aggregate=opts.aggregate or any(a.role is Role.ITEMS for a in args),
        retries=opts.retries,
        retry_backoff=opts.retry_backoff,
        timeout=opts.timeout,
        cache=opts.cache,
        force=opts.force,
        codec=out_codec,
        takes_kwargs=takes_kwargs,
        description=opts.description if opts.description is not None else inspect.getdoc(fn) or "",
        options=opts,
    )
    # Look like the function to tools (help(), doctest, Sphinx) without being it.
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        if hasattr(fn, attr):
            object.__setattr__(new, attr, getattr(fn, attr))
    object.__setattr__(new, "__wrapped__", fn)
    return new


def _publish(opts: StepOptions) -> bool | tuple[str, ...]:
    # validate() made it a bool or a tuple of names
    return opts.publish if isinstance(opts.publish, bool) else tuple(opts.publish)


def make_command_step(options: StepOptions, spelling: Spelling = PYTHON) -> Step:
    """A command step; ``options`` (with ``argv`` and ``base_dir``) are checked here (messages use ``spelling``)."""
    opts = options.validate(spelling, command=True)
    assert opts.name is not None and opts.argv is not None and opts.base_dir is not None  # validate() checked
    assert opts.params is not None and opts.inputs is not None
    step_name, argv, base = opts.name, tuple(opts.argv), opts.base_dir
    args = command_args(step_name, argv, opts.params, opts.inputs)
    check_roles(step_name, args, opts.aggregate, command=True)
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
            canonical_json({"argv": list(argv), "scripts": scripts, "version": opts.version}).encode("utf-8")
        ).hexdigest()
    )
    return Step(
        name=step_name,
        kind="command",
        code=code,
        args=args,
        params=dict(opts.params),
        argv=argv,
        version=opts.version,
        publish=_publish(opts),
        name_template=opts.name_template,
        aggregate=opts.aggregate or any(a.role is Role.ITEMS for a in args),
        retries=opts.retries,
        retry_backoff=opts.retry_backoff,
        timeout=opts.timeout,
        cache=opts.cache,
        force=opts.force,
        codec=None,
        base_dir=base,
        scripts=scripts,
        description=opts.description or "",
        options=opts,
    )


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
        InvalidPipeline: an invalid option (:class:`~datamill.errors.InvalidStepOption`, naming the
            field) or signature; the message names the step and what to fix.
    """
    options = StepOptions(
        name=name,
        version=version,
        params=params,
        inputs=inputs,
        publish=publish,
        name_template=name_template,
        aggregate=aggregate,
        retries=retries,
        retry_backoff=retry_backoff,
        timeout=timeout,
        cache=cache,
        force=force,
        codec=codec,
        description=description,
    )
    if fn is not None:
        return make_step(fn, options)
    return functools.partial(make_step, options=options)


# ---------------------------------------------------------------------------------- command steps


def _caller_dir(depth: int) -> Path:
    """The directory of the file that called us ``depth`` frames up (the cwd when there is none)."""
    frame = sys._getframe(depth + 1)
    file = frame.f_globals.get("__file__")
    return Path(file).resolve().parent if file else Path.cwd()


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
    base = base_dir if base_dir is not None else _caller_dir(1)
    options = StepOptions(
        name=name,
        version=version,
        params=params,
        inputs=inputs,
        publish=publish,
        name_template=name_template,
        aggregate=aggregate,
        retries=retries,
        retry_backoff=retry_backoff,
        timeout=timeout,
        cache=cache,
        force=force,
        description=description,
        argv=argv,
        base_dir=Path(base) if isinstance(base, str) else base,
    )
    return make_command_step(options)
