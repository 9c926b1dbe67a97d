"""Pipelines: a named DAG of steps, checked when it is made, and :func:`load_pipeline` to find one by reference.

A pipeline has no state: runs do. It knows its steps in topological order, which step reads
from which, and which steps map over input items ("per-item") and which run once per run
("aggregate"). A step is per-item when it takes ``item`` or reads from a per-item step and is
not aggregate; a step that takes neither items nor per-item outputs runs once.

References (:func:`load_pipeline`) are strings so that worker processes can load the same
pipeline: ``"package.module:attr"``, ``"path/to/file.py:attr"``, ``"path/to/file.py"`` (the
file's only Pipeline), or ``"path/to/pipeline.yaml"``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import blake3
import cloudpickle

from datamill.errors import DatamillError, InvalidPipeline
from datamill.pipeline.step import Role, Step, step

__all__ = ["Pipeline", "load_pipeline"]


class Pipeline:
    """A named DAG of steps.

    ``Pipeline("tabular", steps=[read, summary, plot])`` checks, at once, that step names are
    unique, that every input names a step of the pipeline, and that there is no cycle; it raises
    :class:`~datamill.errors.InvalidPipeline` with a message saying what to fix otherwise.
    Plain functions in ``steps`` are wrapped with :func:`~datamill.pipeline.step.step`.
    """

    def __init__(
        self,
        name: str,
        steps: Iterable[Step | Callable[..., Any]],
        *,
        description: str = "",
        ref: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise InvalidPipeline(f"a pipeline needs a name (a non-empty string), got {name!r}")
        self.name = name.strip()
        self.description = description
        self._ref = ref
        # Remember who made us so `ref` can be found later as "module:attr" (see the property).
        self._module: str | None = sys._getframe(1).f_globals.get("__name__")
        if self._module == __name__:  # made by from_steps
            self._module = sys._getframe(2).f_globals.get("__name__")
        given = _as_steps(self.name, steps)
        self._by_name = _unique(self.name, given)
        _check_references(self.name, given, self._by_name)
        _check_acyclic(self.name, given, self._by_name)
        self.steps: tuple[Step, ...] = _topological(given)
        self._per_item: dict[str, bool] = {}
        for s in self.steps:
            # Topological order: every upstream step's mode is known already.
            self._per_item[s.name] = not s.aggregate and (s.uses_item or any(self._per_item[u] for u in s.upstream))
        self._pickled: dict[str, bytes] = {}

    @classmethod
    def from_steps(cls, *steps: Step | Callable[..., Any], name: str | None = None, description: str = "") -> Pipeline:
        """A pipeline of ``steps``, named ``name`` (default: the last step's name)."""
        if not steps:
            raise InvalidPipeline("a pipeline needs at least one step")
        last = steps[-1]
        default = last.name if isinstance(last, Step) else getattr(last, "__name__", "pipeline")
        return cls(name or default, steps, description=description)

    # ------------------------------------------------------------------ structure

    @property
    def names(self) -> tuple[str, ...]:
        """Step names in topological order."""
        return tuple(s.name for s in self.steps)

    def step(self, name: str) -> Step:
        """The step called ``name``.

        Raises:
            InvalidPipeline: no such step (the message lists the steps).
        """
        try:
            return self._by_name[name]
        except KeyError:
            raise InvalidPipeline(
                f"pipeline '{self.name}' has no step '{name}' (steps: {', '.join(self.names)})",
                step=name,
            ) from None

    def per_item(self, name: str) -> bool:
        """Whether step ``name`` maps over input items (one task per item) rather than running once."""
        self.step(name)
        return self._per_item[name]

    def upstream(self, name: str) -> tuple[str, ...]:
        """The steps ``name`` reads from directly."""
        return self.step(name).upstream

    def downstream(self, name: str) -> tuple[str, ...]:
        """The steps that read from ``name`` directly, in topological order."""
        self.step(name)
        return tuple(s.name for s in self.steps if name in s.upstream)

    @property
    def edges(self) -> tuple[tuple[str, str], ...]:
        """(upstream, downstream) step pairs, in topological order of the downstream step."""
        return tuple((u, s.name) for s in self.steps for u in s.upstream)

    @property
    def ref(self) -> str | None:
        """A string :func:`load_pipeline` turns back into this pipeline (for worker processes), or None.

        Set by :func:`load_pipeline`; for a pipeline defined at module level it is found as
        ``"module:attr"``. A pipeline made in ``__main__`` or a notebook has none: its steps
        are then shipped to workers by value (cloudpickle).
        """
        if self._ref is None and self._module and self._module != "__main__":
            module = sys.modules.get(self._module)
            for attr, value in vars(module).items() if module is not None else ():
                if value is self:
                    self._ref = f"{self._module}:{attr}"
                    break
        return self._ref

    def pickled_step(self, name: str) -> bytes:
        """Step ``name`` serialised with cloudpickle (for workers when the pipeline has no ref)."""
        if name not in self._pickled:
            self._pickled[name] = cloudpickle.dumps(self.step(name))
        return self._pickled[name]

    def run(
        self,
        inputs: Iterable[str | os.PathLike[str] | tuple[str, bytes]],
        *,
        home: str | os.PathLike[str] | None = None,
        params: Mapping[str, Any] | None = None,
        force: bool = False,
        executor: str = "inline",
        raise_on_failure: bool = True,
    ) -> Any:
        """Run here and now over files (paths or ``(name, bytes)``) and return a ``RunResult``.

        No server is needed. With ``home`` the runs are recorded there and the cache carries over
        between calls; without, a throw-away home is used. ``result["summary[inputs/a.csv]"]``
        is the decoded output of one task; ``result.status`` says how the run ended.
        """
        from datamill.engine.quick import run_pipeline

        return run_pipeline(
            self,
            [i if isinstance(i, tuple) else os.fspath(i) for i in inputs],
            home=None if home is None else os.fspath(home),
            params=params,
            force=force,
            executor=executor,
            raise_on_failure=raise_on_failure,
        )

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __repr__(self) -> str:
        return f"<Pipeline {self.name}: {' -> '.join(self.names)}>"


# ---------------------------------------------------------------------------------- checks


def _as_steps(pipeline: str, steps: Iterable[Step | Callable[..., Any]]) -> list[Step]:
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
        raise InvalidPipeline(f"pipeline '{pipeline}': steps must be a list of steps, got {steps!r}")
    out: list[Step] = []
    for i, s in enumerate(steps):
        if isinstance(s, Step):
            out.append(s)
        elif callable(s):
            out.append(step(s))
        else:
            raise InvalidPipeline(
                f"pipeline '{pipeline}': steps[{i}] is a {type(s).__name__}, not a step; "
                "pass functions (decorated with @datamill.step or plain) or command_step(...)"
            )
    if not out:
        raise InvalidPipeline(f"pipeline '{pipeline}' has no steps; give it at least one")
    return out


def _unique(pipeline: str, steps: Sequence[Step]) -> dict[str, Step]:
    by_name: dict[str, Step] = {}
    first: dict[str, int] = {}
    for i, s in enumerate(steps):
        if s.name in by_name:
            raise InvalidPipeline(
                f"pipeline '{pipeline}': two steps are named '{s.name}' (steps[{first[s.name]}] and steps[{i}]); "
                "step names must be unique: rename one with name=...",
                step=s.name,
            )
        by_name[s.name] = s
        first[s.name] = i
    return by_name


def _check_references(pipeline: str, steps: Sequence[Step], by_name: dict[str, Step]) -> None:
    names = ", ".join(by_name)
    for s in steps:
        for a in s.args:
            if a.role is not Role.INPUT or a.source in by_name:
                continue
            if s.kind == "command":
                hint = (
                    f"to make {{{a.name}}} a parameter, declare it in params= "
                    f"(command_step(..., params={{'{a.name}': ...}}))"
                )
                what = f"placeholder {{{a.name}}}"
            else:
                hint = (
                    f"to make '{a.name}' a parameter instead, make it keyword-only with a default "
                    f"(def {s.name}(..., *, {a.name}=...)) or declare it in params="
                )
                what = f"parameter '{a.name}'"
            raise InvalidPipeline(
                f"pipeline '{pipeline}': step '{s.name}' {what} reads from step '{a.source}', "
                f"but the pipeline has no such step (steps: {names}); {hint}",
                step=s.name,
                param=a.name,
            )
        for u in s.upstream:
            if u == s.name:
                raise InvalidPipeline(
                    f"pipeline '{pipeline}': step '{s.name}' reads its own output (cycle: {s.name} -> {s.name}); "
                    "a step cannot depend on itself",
                    step=s.name,
                )


def _check_acyclic(pipeline: str, steps: Sequence[Step], by_name: dict[str, Step]) -> None:
    # Depth-first search over "reads from" edges; a grey node met again closes a cycle.
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for u in by_name[name].upstream:
            if state.get(u) == 1:
                cycle = [*stack[stack.index(u) :], u]
                # Report in data-flow order: each step feeds the next.
                flow = " -> ".join(reversed(cycle))
                raise InvalidPipeline(
                    f"pipeline '{pipeline}': steps form a cycle: {flow}; remove one of these inputs",
                    step=u,
                    cycle=list(reversed(cycle)),
                )
            if state.get(u) is None:
                visit(u)
        stack.pop()
        state[name] = 2

    for s in steps:
        if s.name not in state:
            visit(s.name)


def _topological(steps: Sequence[Step]) -> tuple[Step, ...]:
    """Steps in dependency order; ties keep declaration order so the order is deterministic."""
    placed: set[str] = set()
    out: list[Step] = []
    remaining = list(steps)
    while remaining:
        for i, s in enumerate(remaining):
            if all(u in placed for u in s.upstream):
                out.append(s)
                placed.add(s.name)
                del remaining[i]
                break
        else:  # pragma: no cover - _check_acyclic ran first
            raise InvalidPipeline("steps form a cycle")
    return tuple(out)


# ---------------------------------------------------------------------------------- loading

# Loaded pipeline files by path: (mtime_ns, size, module or YAML pipeline). Workers load the
# same reference for every task; executing the file each time would cost more than the task.
_FILE_CACHE: dict[str, tuple[int, int, Any]] = {}


def _is_file_ref(target: str) -> bool:
    return target.endswith((".py", ".yaml", ".yml")) or "/" in target or os.sep in target


def load_pipeline(ref: str | os.PathLike[str]) -> Pipeline:
    """The pipeline a reference names.

    * ``"package.module:attr"`` — an attribute of an importable module;
    * ``"path/to/file.py:attr"`` — an attribute of a Python file (its directory goes on
      ``sys.path`` so it can import its neighbours);
    * ``"path/to/file.py"`` or ``"package.module"`` — the only Pipeline defined there;
    * ``"path/to/pipeline.yaml"`` / ``.yml`` — a YAML pipeline (:mod:`datamill.pipeline.yaml`).

    The returned pipeline's :attr:`Pipeline.ref` is set to a reference that works from any
    working directory (file paths made absolute).

    Raises:
        InvalidPipeline: the module or file cannot be found or imported, the attribute does not
            exist or is not a Pipeline, or the pipeline itself is invalid.
    """
    text = os.fspath(ref).strip()
    if not text:
        raise InvalidPipeline("empty pipeline reference; use 'module:attr', 'file.py:attr' or 'file.yaml'")
    target, attr = text, None
    head, sep, tail = text.rpartition(":")
    # "C:\\x.py" style drive letters are a path, not module:attr.
    if sep and head and not (len(head) == 1 and tail.startswith(("\\", "/"))):
        target, attr = head, tail
        if not attr.replace(".", "").replace("_", "").isalnum():
            raise InvalidPipeline(f"pipeline reference {text!r}: {attr!r} is not an attribute name")
    if target.endswith((".yaml", ".yml")):
        if attr is not None:
            raise InvalidPipeline(f"pipeline reference {text!r}: a YAML file holds one pipeline; drop ':{attr}'")
        return _load_yaml(target)
    if _is_file_ref(target):
        return _load_file(target, attr, text)
    return _load_module(target, attr, text)


def _load_yaml(target: str) -> Pipeline:
    from datamill.pipeline.yaml import load_yaml_pipeline

    path = Path(target).resolve()
    stat = _stat(path, target)
    hit = _FILE_CACHE.get(str(path))
    if hit and hit[:2] == stat and isinstance(hit[2], Pipeline):
        return hit[2]
    pipeline = load_yaml_pipeline(target)
    pipeline._ref = str(path)
    _FILE_CACHE[str(path)] = (*stat, pipeline)
    return pipeline


def _stat(path: Path, shown: str) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError as e:
        raise InvalidPipeline(f"pipeline file {shown!r} cannot be read: {e.strerror or e}") from None
    if not path.is_file():
        raise InvalidPipeline(f"pipeline file {shown!r} is not a file")
    return st.st_mtime_ns, st.st_size


def _load_file(target: str, attr: str | None, text: str) -> Pipeline:
    path = Path(target).resolve()
    stat = _stat(path, target)
    hit = _FILE_CACHE.get(str(path))
    if hit and hit[:2] == stat and not isinstance(hit[2], Pipeline):
        module = hit[2]
    else:
        module = _exec_file(path, target)
        _FILE_CACHE[str(path)] = (*stat, module)
    pipeline, found = _pick(module, attr, text, target)
    pipeline._ref = f"{path}:{found}"
    return pipeline


def _exec_file(path: Path, target: str) -> Any:
    """Execute a pipeline file as a fresh module."""
    # A name unique per file, so two files called pipeline.py do not replace each other.
    digest = blake3.blake3(str(path).encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() else "_" for c in path.stem)
    mod_name = f"_datamill_pipeline_{safe}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise InvalidPipeline(f"pipeline file {target!r} cannot be loaded as Python; name it *.py")
    module = importlib.util.module_from_spec(spec)
    parent = str(path.parent)
    if parent not in sys.path:
        # Pipeline files import their neighbours ("from helpers import clean"), as scripts can.
        sys.path.insert(0, parent)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(mod_name, None)
        raise InvalidPipeline(f"{target} line {e.lineno}: {e.msg}; fix the Python syntax") from None
    except DatamillError:
        sys.modules.pop(mod_name, None)
        raise
    except (Exception, SystemExit) as e:  # SystemExit: a script's sys.exit() must not end the server's thread
        sys.modules.pop(mod_name, None)
        raise InvalidPipeline(f"loading pipeline file {target!r} failed: {type(e).__name__}: {e}") from e
    # The module cannot be imported by name in another process: ship its functions by value.
    cloudpickle.register_pickle_by_value(module)
    return module


def _load_module(target: str, attr: str | None, text: str) -> Pipeline:
    refuse_main_module(target, text)
    try:
        module = importlib.import_module(target)
    except ModuleNotFoundError as e:
        if e.name and (target == e.name or target.startswith(e.name + ".")):
            raise InvalidPipeline(
                f"pipeline reference {text!r}: no module named '{e.name}'. Check the name and that the "
                "package is installed, or give a file path (path/to/file.py:attr)"
            ) from None
        raise InvalidPipeline(f"importing module '{target}' failed: {e}") from e
    except SyntaxError as e:
        raise InvalidPipeline(f"{e.filename} line {e.lineno}: {e.msg}; fix the Python syntax") from None
    except DatamillError:
        raise
    except (Exception, SystemExit) as e:
        raise InvalidPipeline(f"importing module '{target}' failed: {type(e).__name__}: {e}") from e
    pipeline, found = _pick(module, attr, text, target)
    if pipeline._ref is None:
        pipeline._ref = f"{target}:{found}"
    return pipeline


def refuse_main_module(target: str, text: str) -> None:
    """Refuse a ``__main__`` module: importing one runs a program (``venv.__main__`` makes a virtual
    environment, ``unittest.__main__`` runs tests), and it never defines a pipeline."""
    if "__main__" in target.split("."):
        raise InvalidPipeline(
            f"pipeline reference {text[:200]!r}: '{target[:200]}' is a program's __main__ module, which runs "
            "the program when imported; name the module that defines the pipeline (module:attr)"
        )


def _pick(module: Any, attr: str | None, text: str, where: str) -> tuple[Pipeline, str]:
    """The pipeline ``attr`` of ``module`` (or its only one), and the attribute it was found under."""
    candidates: dict[int, str] = {}
    for name, found in vars(module).items():
        if isinstance(found, Pipeline) and id(found) not in candidates:
            candidates[id(found)] = name
    listed = ", ".join(sorted(candidates.values())) or "none"
    if attr is None:
        if len(candidates) == 1:
            name = next(iter(candidates.values()))
            return getattr(module, name), name
        if not candidates:
            raise InvalidPipeline(
                f"{where} defines no Pipeline; define one (pipeline = Pipeline('name', steps=[...])) "
                "or name it as 'file.py:attr'"
            )
        raise InvalidPipeline(f"{where} defines several pipelines ({listed}); say which one: '{where}:<name>'")
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise InvalidPipeline(
                f"pipeline reference {text!r}: {where} has no attribute '{attr}' (pipelines: {listed})"
            )
        value = getattr(value, part)
    if isinstance(value, Step):
        raise InvalidPipeline(
            f"pipeline reference {text!r} names a step, not a pipeline; make one: Pipeline('name', steps=[{attr}])"
        )
    if not isinstance(value, Pipeline):
        raise InvalidPipeline(
            f"pipeline reference {text!r} names a {type(value).__name__}, not a Pipeline (pipelines: {listed})"
        )
    return value, attr
