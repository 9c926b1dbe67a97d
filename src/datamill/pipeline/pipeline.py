"""Pipelines: a named DAG of steps, checked when it is made; :mod:`~datamill.pipeline.loader` finds one by reference.

A pipeline has no state: runs do. It knows its steps in topological order, which step reads
from which, and which steps map over input items ("per-item") and which run once per run
("aggregate"). A step is per-item when it takes ``item`` or reads from a per-item step and is
not aggregate; a step that takes neither items nor per-item outputs runs once.

References (:mod:`datamill.pipeline.loader`) are strings so that worker processes can load the same
pipeline: ``"package.module:attr"``, ``"path/to/file.py:attr"``, ``"path/to/file.py"`` (the
file's only Pipeline), or ``"path/to/pipeline.yaml"``.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import cloudpickle

from datamill import hooks
from datamill.errors import DatamillError, InvalidPipeline
from datamill.pipeline.step import Role, Step, step

__all__ = ["Pipeline"]


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

    def with_steps(self, changed: Mapping[str, Step]) -> Pipeline:
        """A copy whose steps named in ``changed`` are replaced (same names and wiring; an HTTP app
        step bound to the app's version when a run is planned). The copy keeps this pipeline's ref."""
        if not changed:
            return self
        ref = self.ref
        new = copy.copy(self)
        new._ref = ref
        new._by_name = {n: changed.get(n, s) for n, s in self._by_name.items()}
        new.steps = tuple(changed.get(s.name, s) for s in self.steps)
        new._pickled = {}
        return new

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
        # The engine sits above this layer: it is reached through a seam that datamill/__init__.py fills.
        run_pipeline = hooks.run_pipeline
        if run_pipeline is None:  # pragma: no cover - datamill/__init__.py always runs first
            raise DatamillError("Pipeline.run needs the engine; import datamill first")
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


def refuse_main_module(target: str, text: str) -> None:
    """Refuse a ``__main__`` module: importing one runs a program (``venv.__main__`` makes a virtual
    environment, ``unittest.__main__`` runs tests), and it never defines a pipeline."""
    if "__main__" in target.split("."):
        raise InvalidPipeline(
            f"pipeline reference {text[:200]!r}: '{target[:200]}' is a program's __main__ module, which runs "
            "the program when imported; name the module that defines the pipeline (module:attr)"
        )
