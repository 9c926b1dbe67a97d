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
from datamill.pipeline.dagster_job import DagsterJob
from datamill.pipeline.inputs import InputRef
from datamill.pipeline.options import PYTHON, Spelling, StepOptions, check_defaults, check_param, unknown_param
from datamill.pipeline.wiring import Arg, Role, annotation_name, check_roles, command_args, fail, function_args

__all__ = [
    "RETURN",
    "Arg",
    "Role",
    "Step",
    "command_step",
    "container_step",
    "dagster_step",
    "is_return_output",
    "step",
]

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
    kind: Literal["python", "command", "container", "dagster", "http"]
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
    #: a container step's image (as named: a tag; the task key takes its digest at plan time)
    image: str | None = None
    #: a container step's settings: ``command`` (False: the image's own), ``env``, ``cpus``,
    #: ``memory``, ``gpus``, ``network``, ``secrets`` (names)
    container: Mapping[str, Any] = field(default_factory=dict)
    #: what a Dagster step runs (:func:`dagster_step`); None for other kinds
    dagster: DagsterJob | None = None
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

    # The three roles below are asked for several times per task by the scheduler: computed once
    # per step (a step is frozen; ``cached_property`` keeps the answer in its ``__dict__``).

    @functools.cached_property
    def uses_item(self) -> bool:
        """Whether the step takes the input item (``item`` / ``{input}``)."""
        return any(a.role is Role.ITEM for a in self.args)

    @functools.cached_property
    def takes_ctx(self) -> bool:
        """Whether the step takes ``ctx`` (it may write named outputs or use its scratch directory)."""
        return any(a.role is Role.CTX for a in self.args)

    @functools.cached_property
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
        if self.image is not None:
            what = f"{self.image} {what}"
        if self.dagster is not None:
            what = self.dagster.ref + (f" job {self.dagster.job_name}" if self.dagster.job_name else "")
        if self.app is not None:
            what = f"{self.app.method} {self.app.url}"
        return f"<Step {self.name} {self.kind}: {what}>"


# ---------------------------------------------------------------------------------- making steps


def configured(step: Step, changes: Mapping[str, Any], spelling: Spelling = PYTHON) -> Step:
    """``step`` with its options changed; see :meth:`Step.configure`. Messages use ``spelling``."""
    changes = dict(changes)
    command = step.kind == "command"
    container = step.kind == "container"
    new = replace(step.options, **{k: v for k, v in changes.items() if k != "params"})
    if "params" in changes:
        # Overrides are checked like declared parameters, then against this step's own.
        checked = replace(new, params=changes["params"]).validate(spelling, command=command, container=container)
        new = replace(new, params={**(step.options.params or {}), **step.resolve_params(checked.params or {})})
    if command:
        return make_command_step(new, spelling)
    if container:
        return make_container_step(new, spelling)
    if step.dagster is not None:
        return _remake_dagster_step(step, new, spelling)
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
        **option_fields(opts, args),
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


def option_fields(opts: StepOptions, args: Sequence[Arg]) -> dict[str, Any]:
    """The :class:`Step` fields every kind of step takes as they are from its checked options.

    A step aggregates when asked to, or when one of its arguments takes all the items.
    """
    return {
        "version": opts.version,
        "publish": _publish(opts),
        "name_template": opts.name_template,
        "aggregate": bool(opts.aggregate) or any(a.role is Role.ITEMS for a in args),
        "retries": opts.retries,
        "retry_backoff": opts.retry_backoff,
        "timeout": opts.timeout,
        "cache": opts.cache,
        "force": opts.force,
    }


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
        **option_fields(opts, args),
        codec=None,
        base_dir=base,
        scripts=scripts,
        description=opts.description or "",
        options=opts,
    )


#: The arguments a container step's image gets when it has no command: the DMS's shape.
DEFAULT_ARGS = ("{input}", "{output_dir}")
DEFAULT_ARGS_AGGREGATE = ("{inputs}", "{output_dir}")


def make_container_step(options: StepOptions, spelling: Spelling = PYTHON) -> Step:
    """A container step; ``options`` (with ``image``; ``argv`` may be None) are checked here."""
    opts = options.validate(spelling, container=True)
    assert opts.name is not None and opts.image is not None and opts.params is not None and opts.inputs is not None
    explicit = opts.argv is not None
    argv = tuple(opts.argv) if opts.argv is not None else (DEFAULT_ARGS_AGGREGATE if opts.aggregate else DEFAULT_ARGS)
    args = command_args(opts.name, argv, opts.params, opts.inputs)
    check_roles(opts.name, args, opts.aggregate, command=True)
    settings = {
        "command": explicit,
        "env": dict(opts.env or {}),
        "cpus": opts.cpus,
        "memory": opts.memory,
        "gpus": opts.gpus,
        "network": opts.network or "none",
        "secrets": list(opts.secrets or ()),
    }
    # The image's content enters the key as its digest (resolved at plan time), not here; limits do
    # not change results, so they stay out, while the command, variables and network may.
    identity = {"argv": list(argv), "command": explicit, "env": settings["env"], "network": settings["network"]}
    code = "ctr:" + blake3.blake3(canonical_json({**identity, "version": opts.version}).encode("utf-8")).hexdigest()
    return Step(
        name=opts.name,
        kind="container",
        code=code,
        args=args,
        params=dict(opts.params),
        argv=argv,
        **option_fields(opts, args),
        codec=None,
        description=opts.description or "",
        options=opts,
        image=opts.image,
        container=settings,
    )


def container_step(
    name: str,
    image: str,
    command: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cpus: float | None = None,
    memory: str | None = None,
    gpus: str | int | None = None,
    network: str = "none",
    secrets: Sequence[str] | None = None,
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
    description: str | None = None,
    codec: str | None = None,
) -> Step:
    """A step that runs ``image`` as a container: ``container_step("up", "localhost/tool:1", ["up", "{input}"])``.

    ``command`` takes the placeholders of :func:`command_step` (``{input}``, ``{inputs}``,
    ``{output_dir}``, ``{stem}``, parameters, other steps), filled with paths *inside* the
    container: inputs are mounted read-only under ``/in`` (other steps' outputs under ``/up``) and
    ``{output_dir}`` is ``/out``, the one writable directory; every file written there is an
    output. Without ``command`` the image's own command runs with the input file(s) and ``/out``
    as its arguments (an image as a dataflow's whole implementation).

    ``env`` sets variables; ``secrets`` names secrets whose values the server takes from its
    environment variables ``DATAMILL_SECRET_<NAME>`` when the task runs and passes through a private
    env file (never on a command line, in the key or in the log). ``network`` is ``"none"``
    (default) or ``"host"``; ``cpus``, ``memory`` (``"512m"``) and ``gpus`` (``"all"``, a count, or
    ``"0,1"``) limit the container.

    The task key covers the image's **digest** (not its tag: retagging an image to other content
    reruns its tasks), the command line, ``env``, ``network`` and ``version``; the image must be
    allowed by the ``allowed_images`` setting.
    """
    del codec  # accepted so Step.configure can pass every option through; container outputs are files
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
        argv=command,
        image=image,
        env=env,
        cpus=cpus,
        memory=memory,
        gpus=None if gpus is None else str(gpus),
        network=network,
        secrets=secrets,
    )
    return make_container_step(options)


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


# ---------------------------------------------------------------------------------- Dagster steps


def make_dagster_step(options: StepOptions, job: DagsterJob, spelling: Spelling = PYTHON) -> Step:
    """A Dagster step running ``job``; ``options`` are checked here (messages use ``spelling``).

    Its only parameter is ``config``, the Dagster run config (a mapping; part of the task key).
    """
    opts = options.validate(spelling)
    assert opts.name is not None and opts.params is not None and opts.inputs is not None  # validate() fills them
    step_name = opts.name
    unknown = set(opts.params) - {"config"}
    if unknown:
        raise fail(
            step_name,
            f"a Dagster step has one parameter, 'config' (the run config), not {', '.join(sorted(unknown))}",
            param=sorted(unknown)[0],
        )
    params = {"config": opts.params.get("config", {})}
    if not isinstance(params["config"], Mapping):
        raise fail(step_name, f"config must be a mapping (Dagster run config), got {params['config']!r}")
    args: list[Arg] = [Arg("items", Role.ITEMS) if opts.aggregate else Arg("item", Role.ITEM)]
    args += [Arg(arg, Role.INPUT, source) for arg, source in opts.inputs.items()]
    args.append(Arg("config", Role.PARAM))
    return Step(
        name=step_name,
        kind="dagster",
        code=job.code(opts.version),
        args=tuple(args),
        params=check_defaults(step_name, params),
        **option_fields(opts, args),
        codec=None,
        description=opts.description or "",
        options=opts,
        dagster=job,
    )


def _remake_dagster_step(step: Step, options: StepOptions, spelling: Spelling) -> Step:
    assert step.dagster is not None
    return make_dagster_step(options, step.dagster, spelling)


def dagster_step(
    job: str,
    *,
    job_name: str | None = None,
    assets: Sequence[str] | None = None,
    config: Mapping[str, Any] | None = None,
    name: str | None = None,
    version: str | None = None,
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
) -> Step:
    """A step that runs a Dagster job: ``dagster_step("my_project.definitions:defs", job_name="daily")``.

    ``job`` is ``module:attr`` naming a ``Definitions``, a job or a list of assets; ``job_name``
    picks a job of a ``Definitions``, ``assets`` an asset selection (asset keys, ``"a/b"`` for
    multi-part keys); neither: every asset of the ``Definitions`` (or the job itself). ``config`` is
    the Dagster run config (the step's parameter ``config``). The job runs with
    ``execute_in_process`` in a worker subprocess, with the resources ``datamill``
    (:class:`datamill.dagster.DatamillResource`: the task's input items as local files) and
    ``io_manager`` (:class:`datamill.dagster.DatamillIOManager`: every output becomes a task
    output) bound for the run. Per item by default (one Dagster run per input item);
    ``aggregate=True``: one run over all items.

    The module is looked up in ``base_dir`` (default: the directory of the calling file) and then
    on ``sys.path``, without being imported. The task key covers the job, the selection, the run
    config and the digest of the module's source (every ``.py`` file of its top-level package), or
    ``version=`` when given. The step is named ``name``, else ``job_name``, else ``dagster``.
    Needs the ``datamill[dagster]`` extra where tasks run.
    """
    base = Path(base_dir) if base_dir is not None else _caller_dir(1)
    step_name = name or (job_name if isinstance(job_name, str) and job_name else "dagster")
    options = StepOptions(
        name=step_name,
        version=version,
        params={"config": dict(config or {})},
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
    )
    opts = options.validate()
    assert opts.name is not None
    return make_dagster_step(opts, DagsterJob.parse(opts.name, job, job_name, assets, base.resolve(), version))
