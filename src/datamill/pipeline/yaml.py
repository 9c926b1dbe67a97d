"""YAML pipelines, checked completely before anything runs.

.. code-block:: yaml

    name: tabular
    description: CSV files to summaries and one database
    steps:
      - name: summary
        run: mypackage.steps:summary          # a Python function, decorated or not
        params: {threshold: 0.7}               # overrides the function's defaults
      - name: convert
        command: [python, scripts/convert.py, "{input}", "{output_dir}"]
        version: "2"
        retries: 2
        timeout: 60
      - name: database
        run: steps.py:build_database           # a file next to this one
        inputs: {tables: convert}
        aggregate: true
        publish: [return]

A step with ``image:`` runs a container (``command:`` optional: without it the image's own command
gets the input file(s) and the output directory); it may also set ``env``, ``cpus``, ``memory``,
``gpus``, ``network`` and ``secrets`` (see :func:`~datamill.pipeline.step.container_step`).
A Dagster step names its job with ``dagster: package.module:defs`` and optionally ``job_name``,
``assets`` (a list of asset keys) and ``config`` (the run config); see
:func:`~datamill.pipeline.step.dagster_step`.

Step fields: ``name``, exactly one of ``run`` / ``command`` / ``dagster`` (or ``image``, with an
optional ``command``), and optionally ``params``,
``version``, ``publish``, ``inputs``, ``aggregate``, ``retries``, ``retry_backoff``,
``timeout``, ``cache``, ``force``, ``name_template``, ``description``.

Every error names the file, the line and the field, e.g.
``pipeline.yaml line 7: steps[1].retries: must be a whole number ≥ 0, got -1``.
Modules named in ``run:`` are imported with the YAML file's directory on ``sys.path``.

Sizes are bounded, so a hostile file cannot exhaust memory or make a huge error: a file holds at
most :data:`MAX_BYTES`, expands (anchors and aliases counted at every use) to at most
:data:`MAX_VALUES` values, and an error quotes at most :data:`MAX_QUOTE` characters of it.
"""

from __future__ import annotations

import importlib
import importlib.util
import reprlib
import shlex
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import blake3
import cloudpickle
import yaml

from datamill.errors import DatamillError, InvalidPipeline, InvalidStepOption
from datamill.pipeline.apps import AppSpec, make_app_step
from datamill.pipeline.dagster_job import DagsterJob
from datamill.pipeline.options import YAML, StepOptions
from datamill.pipeline.pipeline import Pipeline, refuse_main_module
from datamill.pipeline.step import (
    Step,
    configured,
    make_command_step,
    make_container_step,
    make_dagster_step,
    make_step,
)

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_QUOTE", "MAX_VALUES", "load_yaml_pipeline", "parse_yaml_pipeline"]

#: The largest pipeline file read (1 MiB); pipelines are a few hundred lines at most.
MAX_BYTES = 1 << 20

#: The most values (scalars, lists, mappings) a file may expand to, an alias counting as all it
#: stands for: an "alias bomb" of a few hundred bytes otherwise expands to billions.
MAX_VALUES = 100_000

#: The deepest nesting of [ ] and { } read.
MAX_DEPTH = 64

#: The most characters of an error message (and of a value it quotes).
MAX_QUOTE = 300

_TOP_KEYS = ("name", "description", "steps")
#: StepOptions fields a step may set in YAML under their own name (``codec`` is for Python steps).
_OPTION_KEYS = tuple(f.name for f in fields(StepOptions) if f.name not in ("argv", "base_dir", "codec"))
#: Fields whose YAML key differs from the option's name.
_YAML_KEY = {"argv": "command"}
#: Fields of a Dagster step (``dagster: package.module:defs``) besides the common options.
_DAGSTER_KEYS = ("job_name", "assets", "config")
_STEP_KEYS = (
    "name",
    "run",
    "command",
    "dagster",
    *_DAGSTER_KEYS,
    "http",
    "clams",
    "input",
    *(k for k in _OPTION_KEYS if k != "name"),
)
#: What an app step (``http:`` / ``clams:``) may say about its app.
_APP_KEYS = ("url", "method", "headers", "retries", "concurrency", "version_url", "version_header")
#: The keys that say what a step runs (``image`` may stand alone or go with ``command``).
_KINDS = ("run", "command", "dagster", "http", "clams")


class _Map(dict[Any, Any]):
    """A YAML mapping that remembers where it, each key and each value start (1-based lines)."""

    line: int = 0
    key_lines: dict[Any, int]
    value_lines: dict[Any, int]


class _Seq(list[Any]):
    """A YAML sequence that remembers where it and each entry start."""

    line: int = 0
    lines: list[int]


class _Loader(yaml.SafeLoader):
    """SafeLoader that builds :class:`_Map`/:class:`_Seq` from the node tree, keeping node marks.

    The node tree is measured before anything is built from it (see :data:`MAX_VALUES`).
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        return super().construct_document(node)

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # PyYAML's scanner slows down with the square of the depth of [ and { nesting.
        if self.flow_level >= MAX_DEPTH:
            raise _YamlProblem(self.get_mark().line + 1, "", f"values are nested more than {MAX_DEPTH} levels deep")
        super().fetch_flow_collection_start(TokenClass)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node tree that expands to more than MAX_VALUES values, or that contains itself."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    # Iterative post-order walk: a deep file must not exhaust the interpreter's stack here.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[key] > MAX_VALUES:
                raise _YamlProblem(
                    node.start_mark.line + 1,
                    "",
                    f"the file expands to more than {MAX_VALUES} values (anchors and aliases count at every "
                    "use); a pipeline is much smaller than that: write the values out",
                )
            continue
        if key in sizes:
            continue
        if key in open_:
            raise _YamlProblem(node.start_mark.line + 1, "", "an alias refers to a value that contains it")
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


class _Quote(reprlib.Repr):
    """repr() that stops early: a quoted value is never built in full."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxdict, self.maxlist, self.maxstring, self.maxother = 3, 6, 6, 80, 80

    # reprlib finds these by the type's name.
    def repr__Map(self, x: dict[Any, Any], level: int) -> str:
        return self.repr_dict(x, level)

    def repr__Seq(self, x: list[Any], level: int) -> str:
        return self.repr_list(x, level)


def _quote(value: Any) -> str:
    """A short repr of a value read from a file, for error messages."""
    return _Quote().repr(value)


def _cap(text: str, limit: int = MAX_QUOTE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    m = _Map()
    m.line = node.start_mark.line + 1
    m.key_lines, m.value_lines = {}, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise _YamlProblem(line, "", "a mapping key must be a plain value") from None
        if key in m:
            first = m.key_lines[key]
            raise _YamlProblem(line, _cap(str(key), 80), f"duplicate key {_quote(key)} (first on line {first})")
        m[key] = loader.construct_object(value_node, deep=True)
        m.key_lines[key] = line
        m.value_lines[key] = value_node.start_mark.line + 1
    return m


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    s = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    s.line = node.start_mark.line + 1
    s.lines = [child.start_mark.line + 1 for child in node.value]
    return s


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


class _YamlProblem(Exception):
    """A problem found while reading: its line, the field path and what is wrong."""

    def __init__(self, line: int, field: str, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.field = field
        self.message = message


class _Checker:
    """Turns problems into InvalidPipeline errors naming the file, line and field."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def error(self, line: int, field: str, message: str) -> InvalidPipeline:
        field = _cap(field, 120)
        where = f"{self.filename} line {line}: " + (f"{field}: " if field else "")
        return InvalidPipeline(_cap(where + message), file=self.filename, line=line, field=field)


def load_yaml_pipeline(path: str | Path) -> Pipeline:
    """Read, check and build the pipeline in the YAML file at ``path``.

    Raises:
        InvalidPipeline: the file is missing, not YAML, or not a valid pipeline; the message
            names the file, the line and the field.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise InvalidPipeline(
                f"pipeline file '{path}' is larger than {MAX_BYTES >> 20} MiB; a pipeline file is small: "
                "keep data out of it"
            )
        text = data.decode("utf-8")
    except OSError as e:
        raise InvalidPipeline(f"pipeline file '{path}' cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise InvalidPipeline(f"pipeline file '{path}' is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse_yaml_pipeline(text, filename=str(path), base_dir=p.resolve().parent)


def parse_yaml_pipeline(text: str, filename: str = "pipeline.yaml", base_dir: str | Path | None = None) -> Pipeline:
    """Build a pipeline from YAML ``text``; ``filename`` is used in messages, ``base_dir`` to find files.

    Raises:
        InvalidPipeline: see :func:`load_yaml_pipeline`.
    """
    chk = _Checker(filename)
    base = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
    if len(text) > MAX_BYTES:
        raise InvalidPipeline(f"{filename}: larger than {MAX_BYTES >> 20} MiB; a pipeline file is small")
    try:
        doc = yaml.load(text, Loader=_Loader)
    except _YamlProblem as e:
        raise chk.error(e.line, e.field, e.message) from None
    except RecursionError:
        raise InvalidPipeline(f"{filename}: values are nested too deeply; a pipeline needs a few levels") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = " ".join(x for x in (e.context, e.problem) if x) or "not valid YAML"
        if mark is None:
            raise InvalidPipeline(_cap(f"{filename}: not valid YAML: {what}")) from None
        raise InvalidPipeline(
            _cap(f"{filename} line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {what}"),
            file=filename,
            line=mark.line + 1,
            column=mark.column + 1,
        ) from None
    except yaml.YAMLError as e:
        raise InvalidPipeline(_cap(f"{filename}: not valid YAML: {e}")) from None
    if doc is None:
        raise InvalidPipeline(f"{filename}: the file is empty; a pipeline needs 'name' and 'steps'", file=filename)
    if not isinstance(doc, _Map):
        raise chk.error(1, "", f"the file must be a mapping with 'name' and 'steps', not a {_kind(doc)}")

    _unknown_keys(chk, doc, _TOP_KEYS, "")
    name = doc.get("name", Path(filename).stem)
    if not isinstance(name, str) or not name.strip():
        line = doc.value_lines.get("name", doc.line)
        raise chk.error(line, "name", f"must be a non-empty string, got {_quote(name)}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise chk.error(doc.value_lines["description"], "description", "must be a string")
    steps_node = doc.get("steps")
    if "steps" not in doc:
        raise chk.error(doc.line, "steps", "missing: list the pipeline's steps under 'steps:'")
    if not isinstance(steps_node, _Seq) or not steps_node:
        raise chk.error(doc.value_lines["steps"], "steps", "must be a non-empty list of steps")

    specs = [_check_step(chk, steps_node, i) for i in range(len(steps_node))]
    steps = _build_steps(chk, specs, base)
    try:
        return Pipeline(name, steps, description=description)
    except InvalidPipeline as e:
        raise _locate(chk, e, specs, steps) from None


def _build_steps(chk: _Checker, specs: list[_StepSpec], base: Path) -> list[Step]:
    steps: list[Step] = []
    previous_clams: str | None = None
    for spec in specs:
        made = _build_step(chk, spec, base, previous_clams)
        steps.append(made)
        if made.app is not None and made.app.protocol == "clams":
            # CLAMS steps listed one after another form a chain: each reads the one before.
            previous_clams = made.name
    return steps


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    if value is None:
        return "null"
    return type(value).__name__


def _unknown_keys(chk: _Checker, m: _Map, allowed: tuple[str, ...], prefix: str) -> None:
    for key in m:
        if key not in allowed:
            raise chk.error(
                m.key_lines[key],
                f"{prefix}{_cap(str(key), 80)}",
                f"unknown field {_quote(key)}; allowed fields: {', '.join(allowed)}",
            )


class _StepSpec:
    """One step's checked fields and where each is in the file."""

    def __init__(self, index: int, node: _Map, options: dict[str, Any]) -> None:
        self.index = index
        self.node = node
        self.options = options

    @property
    def prefix(self) -> str:
        return f"steps[{self.index}]"

    def line(self, key: str | None = None) -> int:
        if key is None:
            return self.node.line
        return self.node.value_lines.get(key, self.node.line)


def _check_kind(chk: _Checker, node: _Map, prefix: str) -> None:
    """A step runs a function (``run``), a command (``command``), a container (``image``) or a Dagster job."""
    if "image" in node and ("run" in node or "dagster" in node):
        other = "run" if "run" in node else "dagster"
        raise chk.error(
            node.line, prefix, f"a step with an 'image' runs a container: give 'command' or none, not '{other}'"
        )
    if "image" in node and any(k in node for k in ("http", "clams")):
        raise chk.error(node.line, prefix, "a step with an 'image' runs a container: give no 'http' or 'clams'")
    if "image" not in node and sum(k in node for k in _KINDS) != 1:
        raise chk.error(
            node.line,
            prefix,
            "give exactly one of 'run' (module:function), 'command' (a list), 'dagster' (package.module:defs), "
            "'http' or 'clams' (an app's url)",
        )
    if "name" not in node and any(k in node for k in ("command", "image", "http", "clams")):
        what = "a container step" if "image" in node else "a command step" if "command" in node else "an app step"
        raise chk.error(node.line, f"{prefix}.name", f"missing: {what} needs a name")


def _check_step(chk: _Checker, steps: _Seq, i: int) -> _StepSpec:
    node = steps[i]
    prefix = f"steps[{i}]"
    if not isinstance(node, _Map):
        raise chk.error(
            steps.lines[i], prefix, f"must be a mapping with 'name' and 'run' or 'command', not a {_kind(node)}"
        )
    _unknown_keys(chk, node, _STEP_KEYS, prefix + ".")

    def bad(key: str, message: str) -> InvalidPipeline:
        return chk.error(node.value_lines.get(key, node.line), f"{prefix}.{key}", message)

    def got(key: str) -> str:
        return f", got {_quote(node[key])}"

    _check_kind(chk, node, prefix)
    _check_dagster_keys(node, bad)
    _check_app_fields(chk, node, prefix)
    if "run" in node:
        run = node["run"]
        if not isinstance(run, str) or ":" not in run or run.startswith(":") or run.endswith(":"):
            raise bad("run", "must look like 'package.module:function' or 'file.py:function'" + got("run"))
    # The options are checked where the step is made (StepOptions.validate); here YAML's own
    # spellings become Python values: a command line as one string, numbers where strings are meant.
    opts = {key: node[key] for key in _OPTION_KEYS if key in node}
    if "command" in node:
        cmd = node["command"]
        if isinstance(cmd, str):
            try:
                cmd = shlex.split(cmd)
            except ValueError as e:
                raise bad("command", f"cannot split the command line: {e}") from None
        if isinstance(cmd, list):
            cmd = [str(a) if isinstance(a, (int, float)) else a for a in cmd]
        opts["argv"] = cmd
    if "version" in node:
        v = node["version"]
        if isinstance(v, float):
            # YAML read 1.10 as the number 1.1: the text the user meant is gone, so ask for quotes.
            raise bad(
                "version",
                'must be a string like "2" (quote it: version: "1.10"; unquoted, YAML reads a number)' + got("version"),
            )
        if isinstance(v, int) and not isinstance(v, bool):
            opts["version"] = str(v)
    return _StepSpec(i, node, opts)


def _check_dagster_keys(node: _Map, bad: Callable[[str, str], InvalidPipeline]) -> None:
    """Refuse ``job_name``, ``assets`` and ``config`` on a step that is not a Dagster step."""
    for key in _DAGSTER_KEYS:
        if key in node and "dagster" not in node:
            raise bad(key, "is only for Dagster steps (dagster: package.module:defs)")


def _check_app_fields(chk: _Checker, node: _Map, prefix: str) -> None:
    """``input`` only on app steps; an ``http:``/``clams:`` mapping with a url and known keys."""

    def bad(key: str, message: str) -> InvalidPipeline:
        return chk.error(node.value_lines.get(key, node.line), f"{prefix}.{key}", message)

    if "input" in node and not ("http" in node or "clams" in node):
        raise bad("input", "is for app steps (http: or clams:); other steps wire by argument (inputs:)")
    for kind in ("http", "clams"):
        if kind in node:
            app = node[kind]
            if not isinstance(app, _Map) or "url" not in app:
                raise bad(kind, "must be a mapping with at least 'url', e.g. {url: 'http://127.0.0.1:5000/'}")
            _unknown_keys(
                chk,
                app,
                _APP_KEYS if kind == "http" else ("url", "headers", "retries", "concurrency"),
                f"{prefix}.{kind}.",
            )


def _build_step(chk: _Checker, spec: _StepSpec, base: Path, previous_app: str | None = None) -> Step:
    opts = dict(spec.options)
    node = spec.node
    try:
        if "http" in node or "clams" in node:
            return _app_step(node, opts, previous_app)
        if "image" in opts:
            return make_container_step(StepOptions(**opts), YAML)
        if "argv" in opts:
            return make_command_step(StepOptions(base_dir=base, **opts), YAML)
        if "dagster" in node:
            return _dagster_step(spec, opts, base)
        params = opts.pop("params", None)
        # Options that do not depend on the function are checked before it is imported, so a
        # wrong field is reported at its line even when the function cannot be loaded yet.
        fallback_name = str(node["run"]).rsplit(":", 1)[-1]
        StepOptions(**{"name": fallback_name, **opts}).validate(YAML)
        target = _import_function(chk, spec, base)
        # Options apply when the step is made: a function without readable source may still get `version`.
        made = (
            configured(target, opts, YAML) if isinstance(target, Step) else make_step(target, StepOptions(**opts), YAML)
        )
        # Parameters of a `run:` step override the function's: checked against its defaults.
        return configured(made, {"params": params}, YAML) if params is not None else made
    except InvalidStepOption as e:
        raise _field_error(chk, spec, e) from None
    except InvalidPipeline as e:
        if "line" in e.detail:
            raise
        field = e.detail.get("param")
        key = "params" if field and field in (node.get("params") or {}) else None
        if key is None and field and field in (node.get("inputs") or {}):
            key = "inputs"
        raise chk.error(spec.line(key), spec.prefix + (f".{key}.{field}" if key else ""), _bare(e)) from None


def _app_step(node: _Map, opts: dict[str, Any], previous_clams: str | None) -> Step:
    """An ``http:`` or ``clams:`` step; a ``clams:`` step without ``input`` reads the CLAMS step before it."""
    kind = "clams" if "clams" in node else "http"
    fields_ = dict(node[kind])
    input_step = node.get("input", previous_clams if kind == "clams" else None)
    if "retry_backoff" in opts:
        fields_["backoff"] = opts["retry_backoff"]
    if "retries" in opts:
        # The app's requests are retried (with backoff), not the whole task.
        fields_.setdefault("retries", opts.pop("retries"))
    app = AppSpec(protocol="clams" if kind == "clams" else "http", **fields_)
    return make_app_step(StepOptions(**opts), app, input_step, YAML)


def _dagster_step(spec: _StepSpec, opts: dict[str, Any], base: Path) -> Step:
    """A ``dagster:`` step: the job, its selection and run config, and the common options."""
    node = spec.node
    job_name = node.get("job_name")
    name = opts.pop("name", None) or (job_name if isinstance(job_name, str) and job_name else "dagster")
    if "params" in opts:
        raise InvalidStepOption(
            f"step '{name}': a Dagster step takes its run config under 'config', not 'params'",
            field="params",
            problem="a Dagster step takes its run config under 'config', not 'params'",
            step=str(name),
        )
    config = node.get("config") or {}
    checked = StepOptions(name=name, params={"config": config}, **opts).validate(YAML)
    assert checked.name is not None
    job = DagsterJob.parse(checked.name, node["dagster"], job_name, node.get("assets"), base, checked.version)
    return make_dagster_step(checked, job, YAML)


def _field_error(chk: _Checker, spec: _StepSpec, e: InvalidStepOption) -> InvalidPipeline:
    """An option's error placed at the line of the field (or entry, for ``params.x``) it names."""
    key, _, entry = e.field.partition(".")
    key = _YAML_KEY.get(key, key)
    if key == "name":
        # The message says "step name '…'" itself.
        return chk.error(spec.line(key if key in spec.node else None), spec.prefix, e.problem)
    if key not in spec.node:
        # An option the file does not set (e.g. the function's own): the message names it.
        return chk.error(spec.line(), spec.prefix, e.message)
    value = spec.node[key]
    if entry and isinstance(value, _Map) and entry in value:
        return chk.error(value.value_lines[entry], f"{spec.prefix}.{key}.{entry}", e.problem)
    return chk.error(spec.line(key), f"{spec.prefix}.{key}", e.problem)


def _bare(e: DatamillError) -> str:
    return e.message


def _import_function(chk: _Checker, spec: _StepSpec, base: Path) -> Callable[..., Any]:
    run: str = spec.node["run"]
    line = spec.line("run")
    field = f"{spec.prefix}.run"
    target, _, attr = run.rpartition(":")
    if target.endswith(".py") or "/" in target:
        path = (base / target).resolve()
        if not path.is_file():
            raise chk.error(line, field, f"no file '{target}' (looked in {base})")
        mod_name = f"_datamill_yaml_{path.stem}_{blake3.blake3(str(path).encode()).hexdigest()[:12]}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec_ = importlib.util.spec_from_file_location(mod_name, path)
            if spec_ is None or spec_.loader is None:
                raise chk.error(line, field, f"'{target}' cannot be loaded as Python")
            module = importlib.util.module_from_spec(spec_)
            sys.modules[mod_name] = module
            _with_path(base)
            try:
                spec_.loader.exec_module(module)
            except (Exception, SystemExit) as e:
                sys.modules.pop(mod_name, None)
                raise chk.error(line, field, f"loading '{target}' failed: {type(e).__name__}: {e}") from e
            cloudpickle.register_pickle_by_value(module)
    else:
        try:
            refuse_main_module(target, run)
        except InvalidPipeline as e:
            raise chk.error(line, field, e.message) from None
        _with_path(base)
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            if e.name and (target == e.name or target.startswith(e.name + ".")):
                raise chk.error(line, field, f"cannot import module '{target}': no module named '{e.name}'") from None
            raise chk.error(line, field, f"importing module '{target}' failed: {e}") from e
        except (Exception, SystemExit) as e:
            raise chk.error(line, field, f"importing module '{target}' failed: {type(e).__name__}: {e}") from e
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise chk.error(line, field, f"module '{target}' has no function '{attr}'")
        value = getattr(value, part)
    if not callable(value) or isinstance(value, (type, Pipeline)):
        raise chk.error(line, field, f"'{run}' is a {type(value).__name__}, not a function")
    return value


def _with_path(base: Path) -> None:
    # Steps next to the YAML file ("run: steps:clean") import like a script's neighbours would.
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))


def _locate(chk: _Checker, e: InvalidPipeline, specs: list[_StepSpec], steps: list[Step]) -> InvalidPipeline:
    """A Pipeline error placed at the line of the step (and input) it is about."""
    step_name = e.detail.get("step")
    param = e.detail.get("param")
    # Last match first: for a duplicate name the second definition is the one to point at.
    for spec, made in reversed(list(zip(specs, steps, strict=True))):
        if made.name != step_name:
            continue
        inputs = spec.node.get("inputs")
        if param and isinstance(inputs, _Map) and param in inputs:
            return chk.error(inputs.value_lines[param], f"{spec.prefix}.inputs.{param}", e.message)
        return chk.error(spec.line(), spec.prefix, e.message)
    return chk.error(1, "", e.message)
