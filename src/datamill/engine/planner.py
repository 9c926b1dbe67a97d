"""The planner: a pure function from a pipeline and its inputs to the tasks of a run.

``plan(pipeline, inputs, params, lookup, force) -> Plan`` reads nothing and writes nothing: the
cache is consulted only through ``lookup(key) -> CachedResult | None``, or ``lookup_many(keys)``
which answers every key of a step at once (what the engine passes: one query per many keys). The
same arguments give the same plan, so a plan can be shown as a dry run, tested, and recomputed at will.

Tasks: one per (per-item step, input item) and one per aggregate step. Inputs are taken in a
canonical order (folder, then name), which is also the order aggregate steps see them in, so
listing the same items in another order changes nothing.

Keys come from :func:`datamill.engine.keys.task_key`. A task reading another task's outputs is
keyed by those OUTPUT digests, not by its upstream's key: an upstream rerun that produces
identical bytes leaves everything downstream cached (early cutoff). When an upstream output is
not known yet (its task must run), the task is ``"pending"``: its key is computed later with
:meth:`Plan.key_for` once the upstream outputs exist.

Labels of key inputs: ``item:<name>`` for the item a step takes, ``items[i]:<name>`` for all
items, ``<arg>:<output name>`` for an upstream task's outputs and ``<arg>[i]:<output name>``
for the i-th of a list. Item metadata and folders are not part of keys.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from datamill.engine import keys, paramsets
from datamill.engine.apps import bind_apps
from datamill.engine.params import RunParams
from datamill.errors import InvalidInput, InvalidPipeline
from datamill.pipeline.inputs import InputRef
from datamill.pipeline.pipeline import Pipeline
from datamill.pipeline.runner import ItemInput, OutputFile, StepCall, UpstreamInput
from datamill.pipeline.step import RETURN, Role, Step

__all__ = [
    "CachedResult",
    "Decision",
    "InputRef",
    "OutputDigest",
    "Plan",
    "PlannedOutput",
    "PlannedTask",
    "Wire",
    "plan",
    "task_id",
]

#: ``cached``: the key is known and its outputs are reused; ``run``: the task must run;
#: ``pending``: the key waits for upstream outputs that do not exist yet.
Decision = Literal["cached", "run", "pending"]


class HasDigest(Protocol):
    """Anything with an output ``name`` and ``digest`` (OutputDigest, the engine's OutputRecord, ...)."""

    @property
    def name(self) -> str: ...

    @property
    def digest(self) -> str: ...


@dataclass(frozen=True)
class OutputDigest:
    """One recorded output of a task: its name within the task, digest, size, content type and codec."""

    name: str
    digest: str
    size: int = 0
    content_type: str = "application/octet-stream"
    codec: str = "file"


@dataclass(frozen=True)
class CachedResult:
    """What the cache holds for a key: the outputs, and the task that made them (if recorded)."""

    outputs: tuple[OutputDigest, ...]
    task_id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "outputs", tuple(self.outputs))


@dataclass(frozen=True)
class Wire:
    """One upstream input of a task: argument ``param`` reads step ``step`` via tasks ``tasks``.

    ``many`` means the argument receives a list (an aggregate step reading a per-item step),
    in the order of ``tasks``.
    """

    param: str
    step: str
    tasks: tuple[str, ...]
    many: bool


@dataclass(frozen=True)
class PlannedOutput:
    """An output known at planning time: its name in the task, its published name, whether published."""

    name: str
    published_name: str
    publish: bool


@dataclass(frozen=True)
class PlannedTask:
    """One task of a plan.

    ``id`` is stable across plans: ``"step[folder/name]"`` for per-item tasks, ``"step"`` for
    aggregate ones. ``key`` is None while it depends on outputs not produced yet. ``outputs``
    lists what is known before running: all outputs of a cached task, or the return value of
    a step whose return type is declared (named outputs appear when the task has run).
    """

    id: str
    step: str
    item: InputRef | None
    deps: tuple[str, ...]
    params: Mapping[str, Any] = field(hash=False)
    key: str | None
    decision: Decision
    step_code: str
    wires: tuple[Wire, ...] = ()
    outputs: tuple[PlannedOutput, ...] = ()
    cached: CachedResult | None = None
    max_attempts: int = 1
    retry_backoff: float = 1.0
    timeout: float | None = None
    cache: bool = True
    forced: bool = False
    #: why the task is refused without running (its published name collides with another
    #: input's), or None
    refused: str | None = None
    #: a container step's image as named, and its digest (resolved once per run), part of the key
    image: str | None = None
    image_digest: str | None = None


def task_id(step: str, item: InputRef | None) -> str:
    """The planned id of ``step`` on ``item`` (or of the aggregate step): ``"summary[Raw Data/a.csv]"``."""
    return f"{step}[{item.path}]" if item is not None else step


def _sorted_outputs(outputs: Sequence[HasDigest]) -> list[HasDigest]:
    # Outputs enter keys sorted by name, so the order a task wrote them in does not matter.
    return sorted(outputs, key=lambda o: o.name)


@dataclass(frozen=True)
class Plan:
    """The tasks of a run in topological order, with their edges, keys and decisions."""

    pipeline: Pipeline
    inputs: tuple[InputRef, ...]
    tasks: tuple[PlannedTask, ...]
    edges: tuple[tuple[str, str], ...]
    #: the digest of every container image the pipeline names (``{image: "sha256:..."}``)
    images: Mapping[str, str] = field(default_factory=dict)
    #: the run's source folder when outputs mirror its subfolders (see :func:`mirrored_name`)
    mirror: str | None = None
    #: the looked-up keys whose step failed before, with the newest run each failed in, when the
    #: cache look-up was asked for them too (None: not asked; see ``Engine.submit``'s ``skip_failed``)
    failed: Mapping[str, int] | None = field(default=None, compare=False)
    #: the run's parameters encoded once (:class:`~datamill.engine.params.RunParams`), when the plan
    #: was made with them: the keys of steps reached later reuse their steps' canonical JSON
    encoder: paramsets.Encoder | None = field(default=None, compare=False, repr=False)
    _index: dict[str, PlannedTask] = field(init=False, repr=False, compare=False)
    #: a key maker per step (:meth:`key_for`): the step's parameters encoded once, not once per task
    _makers: dict[tuple[str, str, int, str | None], keys.KeyMaker] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {t.id: t for t in self.tasks})
        object.__setattr__(self, "_makers", {})

    def __iter__(self) -> Iterator[PlannedTask]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def task(self, task_id: str) -> PlannedTask:
        """The task with planned id ``task_id`` (KeyError if none)."""
        return self._index[task_id]

    def _task(self, task: PlannedTask | str) -> PlannedTask:
        return self._index[task] if isinstance(task, str) else task

    def counts(self) -> dict[str, int]:
        """How many tasks per decision."""
        out = {"cached": 0, "run": 0, "pending": 0}
        for t in self.tasks:
            out[t.decision] += 1
        return out

    def dependents(self, task: PlannedTask | str) -> tuple[str, ...]:
        """Ids of the tasks that read ``task``'s outputs directly."""
        tid = self._task(task).id
        return tuple(t.id for t in self.tasks if tid in t.deps)

    # ------------------------------------------------------------------ keys

    def input_digests(
        self, task: PlannedTask | str, upstream_outputs: Mapping[str, Sequence[HasDigest]]
    ) -> list[tuple[str, str]]:
        """The (label, digest) pairs of a task's key, given its upstream tasks' outputs.

        Raises:
            KeyError: an upstream task's outputs are missing from ``upstream_outputs``.
        """
        t = self._task(task)
        step = self.pipeline.step(t.step)
        return _input_digests(step, t, self.inputs, upstream_outputs)

    def key_for(self, task: PlannedTask | str, upstream_outputs: Mapping[str, Sequence[HasDigest]]) -> str:
        """A task's key once its upstream outputs are known (``{task id: outputs}``).

        The scheduler calls this for ``pending`` tasks when their upstream tasks finish, then
        looks the key up in the cache before running.
        """
        t = self._task(task)
        # The tasks of a step share their parameters, code and image: a step's tasks reached as
        # their inputs end (a downstream step's) encode those once, as planning does.
        # (By the mapping's identity too: the plan holds its tasks, so an id is never another's.)
        which = (t.step, t.step_code, id(t.params), t.image_digest)
        maker = self._makers.get(which)
        if maker is None:
            text = None if self.encoder is None else self.encoder.canonical_text(t.params)
            maker = self._makers[which] = keys.KeyMaker(t.step, t.step_code, t.params, t.image_digest, text)
        return maker.key(self.input_digests(t, upstream_outputs))

    def key_parts_for(
        self, task: PlannedTask | str, upstream_outputs: Mapping[str, Sequence[HasDigest]]
    ) -> dict[str, Any]:
        """The named parts of a task's key (for ``datamill why``; compare with :func:`keys.diff_parts`)."""
        t = self._task(task)
        return keys.key_parts(t.step, t.step_code, t.params, self.input_digests(t, upstream_outputs), t.image_digest)

    # ------------------------------------------------------------------ outputs

    def output_names(self, task: PlannedTask | str, names: Sequence[str]) -> list[PlannedOutput]:
        """Published names for the outputs a task actually wrote (name template applied).

        Raises:
            InvalidPipeline: two published outputs would get the same name (the template lacks
                ``{name}`` while the task wrote several files).
        """
        t = self._task(task)
        return _planned_outputs(self.pipeline, self.pipeline.step(t.step), t.item, names, self.mirror)

    # ------------------------------------------------------------------ dispatch

    def step_call(
        self,
        task: PlannedTask | str,
        *,
        output_dir: str | Path,
        scratch_dir: str | Path,
        item_files: Mapping[str, str | Path] | None = None,
        upstream_outputs: Mapping[str, Sequence[OutputFile]] | None = None,
    ) -> StepCall:
        """The :class:`~datamill.pipeline.runner.StepCall` that runs ``task``.

        ``item_files`` maps an input's ``InputRef.path`` (``"folder/name"``) to a local copy of
        its bytes: needed for the task's item when the step takes ``item`` (else optional) and
        for every input when it takes ``items``. ``upstream_outputs`` maps each dependency's
        task id to its output files (local paths).
        """
        t = self._task(task)
        step = self.pipeline.step(t.step)
        files = dict(item_files or {})
        ups = dict(upstream_outputs or {})

        def item_input(ref: InputRef, required: bool) -> ItemInput:
            path = files.get(ref.path)
            if path is None and required:
                raise KeyError(f"task {t.id} needs a local copy of input {ref.path!r} in item_files")
            return ItemInput(ref, None if path is None else Path(path))

        ref = self.pipeline.ref
        return StepCall(
            step=step.name,
            output_dir=Path(output_dir),
            scratch_dir=Path(scratch_dir),
            pipeline_ref=ref,
            step_bytes=None if ref else self.pipeline.pickled_step(step.name),
            params=t.params,  # the plan's mapping, shared by the step's tasks (see local_wire)
            item=item_input(t.item, step.uses_item) if t.item is not None else None,
            items=tuple(item_input(r, True) for r in self.inputs) if step.uses_items else (),
            upstream={
                w.param: UpstreamInput(w.step, tuple(tuple(ups[tid]) for tid in w.tasks), w.many) for w in t.wires
            },
            task_id=t.id,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (for dry runs and ``--json`` output)."""
        return {
            "pipeline": self.pipeline.name,
            "inputs": [r.path for r in self.inputs],
            "counts": self.counts(),
            "tasks": [
                {
                    "id": t.id,
                    "step": t.step,
                    "item": t.item.path if t.item is not None else None,
                    "deps": list(t.deps),
                    "params": dict(t.params),
                    "key": t.key,
                    "decision": t.decision,
                    "outputs": [o.published_name for o in t.outputs if o.publish],
                    **({"refused": t.refused} if t.refused else {}),
                    **({"image": t.image, "image_digest": t.image_digest} if t.image else {}),
                }
                for t in self.tasks
            ],
            "edges": [list(e) for e in self.edges],
            **({"images": dict(self.images)} if self.images else {}),
        }


# ---------------------------------------------------------------------------------- helpers


def _input_digests(
    step: Step, task: PlannedTask, inputs: Sequence[InputRef], upstream: Mapping[str, Sequence[HasDigest]]
) -> list[tuple[str, str]]:
    return _digests_of(step, task.item, task.wires, inputs, upstream)


def _digests_of(
    step: Step,
    item: InputRef | None,
    wires: Sequence[Wire],
    inputs: Sequence[InputRef],
    upstream: Mapping[str, Sequence[HasDigest]],
) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    if step.uses_item and item is not None:
        # The name is included because a step that takes the item can see it (and name things by it).
        pairs.append((f"item:{item.name}", item.digest))
    if step.uses_items:
        pairs += [(f"items[{i}]:{r.name}", r.digest) for i, r in enumerate(inputs)]
    for w in sorted(wires, key=lambda w: w.param):
        for i, tid in enumerate(w.tasks):
            label = f"{w.param}[{i}]" if w.many else w.param
            pairs += [(f"{label}:{o.name}", o.digest) for o in _sorted_outputs(upstream[tid])]
    return pairs


def mirrored_name(published: str, item: InputRef | None, mirror: str | None) -> str:
    """``published`` moved into the subfolder ``item`` has below the folder ``mirror`` (a run's source).

    A recursive dataflow's item ``SOURCE/run-7/a.csv`` publishes ``a.png`` as ``run-7/a.png`` in
    its destination: the destination mirrors the source's tree. An item in ``mirror`` itself (or
    a task without an item, or no ``mirror``) publishes as it would anyway.
    """
    if not mirror or item is None:
        return published
    folder = item.folder.strip("/")
    if not folder.startswith(mirror + "/"):
        return published
    return f"{folder[len(mirror) + 1 :]}/{published}"


def _planned_outputs(
    pipeline: Pipeline, step: Step, item: InputRef | None, names: Sequence[str], mirror: str | None = None
) -> list[PlannedOutput]:
    out = [
        PlannedOutput(n, mirrored_name(step.published_name(n, item, pipeline.name), item, mirror), step.publishes(n))
        for n in names
    ]
    seen: dict[str, str] = {}
    for o in out:
        if not o.publish:
            continue
        if o.published_name in seen:
            raise InvalidPipeline(
                f"step '{step.name}': outputs '{seen[o.published_name]}' and '{o.name}' would both be published "
                f"as '{o.published_name}'; put {{name}} in the step's name_template",
                step=step.name,
            )
        seen[o.published_name] = o.name
    return out


def canonical_inputs(inputs: Sequence[InputRef]) -> tuple[InputRef, ...]:
    """``inputs`` in canonical order (folder, then name); InvalidInput for a non-InputRef or an item given twice."""
    for r in inputs:
        if not isinstance(r, InputRef):
            raise InvalidInput(f"plan inputs must be InputRef objects, got a {type(r).__name__}")
    # Each sort key made once (10,000 inputs: ``path`` strips the folder on every call); equal keys
    # are equal paths.
    keyed = sorted(((r.folder.strip("/"), r.name), i) for i, r in enumerate(inputs))
    refs = tuple(inputs[i] for _k, i in keyed)
    for (ka, ia), (kb, ib) in itertools.pairwise(keyed):
        if ka == kb:
            a, b = inputs[ia], inputs[ib]
            raise InvalidInput(
                f"input {a.path!r} is listed twice (versions {a.version} and {b.version}); give each item once"
            )
    return refs


def _force_set(pipeline: Pipeline, force: bool | Collection[str]) -> bool | frozenset[str]:
    if isinstance(force, bool):
        return force
    names = frozenset([force] if isinstance(force, str) else force)
    unknown = sorted(n for n in names if n not in pipeline)
    if unknown:
        raise InvalidInput(
            f"force names no step of pipeline '{pipeline.name}': {', '.join(unknown)} "
            f"(steps: {', '.join(pipeline.names)})"
        )
    return names


def plan(
    pipeline: Pipeline,
    inputs: Sequence[InputRef],
    params: Mapping[str, Mapping[str, Any]] | None = None,
    lookup: Callable[[str], CachedResult | None] = lambda k: None,
    force: bool | Collection[str] = False,
    images: Mapping[str, str] | None = None,
    resolve_image: Callable[[str], str] | None = None,
    mirror: str | None = None,
    lookup_many: Callable[[Sequence[str]], Mapping[str, CachedResult]] | None = None,
    run_params: RunParams | None = None,
) -> Plan:
    """Plan a run of ``pipeline`` over ``inputs``.

    Args:
        pipeline: the pipeline.
        inputs: the exact input item versions (any order; planned in folder/name order).
        params: parameter overrides per step name, e.g. ``{"summary": {"threshold": 0.7}}``.
        lookup: the cache: a key → its recorded outputs, or None.
        force: True to run every task, or step names to run; keys stay the same (a forced run
            is recorded under the usual keys). A step declared with ``force=True`` always runs.
        images: container image digests already resolved for this run (``{image: digest}``);
            the others are resolved with ``resolve_image`` (default: ``podman image inspect``),
            once per image.
        resolve_image: image name → its digest; raises InvalidPipeline when it is not there.
        mirror: the run's source folder: an input in a subfolder of it publishes its outputs in
            the same subfolder of the destination (:func:`mirrored_name`).
        lookup_many: the cache for many keys at once (``{key: outputs}`` for the keys it holds);
            when given, ``lookup`` is not used. The planner asks it once per step.
        run_params: ``params`` checked, resolved and encoded already (the run's, made from the
            same parameters): each step's are taken from it, not resolved and encoded again.

    Returns:
        A :class:`Plan` whose tasks are ``cached`` (outputs reused), ``run`` or ``pending``.

    Raises:
        InvalidPipeline: unknown step or parameter in ``params``, a wrong parameter type, or a
            parameter with no canonical form.
        InvalidInput: an input listed twice, or ``force`` naming an unknown step.
    """
    refs = canonical_inputs(inputs)
    overrides = dict(params or {})
    if any(s.kind == "http" for s in pipeline.steps):
        # The app's own version is part of its steps' keys; unknown CLAMS parameters stop here.
        pipeline = bind_apps(pipeline, overrides)
        run_params = None  # the bound steps resolve their own (an app may add to them)
    for name in overrides:
        if name not in pipeline:
            raise InvalidPipeline(
                f"params given for step '{name}', which pipeline '{pipeline.name}' does not have "
                f"(steps: {', '.join(pipeline.names)})",
                step=name,
            )
    forced_steps = _force_set(pipeline, force)
    digests = image_digests(pipeline, images, resolve_image)

    find = lookup_many if lookup_many is not None else _one_by_one(lookup)
    tasks: list[PlannedTask] = []
    edges: list[tuple[str, str]] = []
    known: dict[str, tuple[OutputDigest, ...]] = {}  # outputs of cached tasks, by task id
    for step in pipeline.steps:
        forced = (
            step.force or (forced_steps is True) or (isinstance(forced_steps, frozenset) and step.name in forced_steps)
        )
        if run_params is not None:
            resolved = run_params.resolved[step.name]
            text: str | None = run_params.encoder.canonical_text(resolved)
        else:
            resolved, text = step.resolve_params(overrides.get(step.name)), None
        digest = digests.get(step.image) if step.image else None
        step_tasks = _step_tasks(pipeline, step, refs, resolved, digest, known, text)
        # Every key of the step is looked up at once: one query per many keys, not one per task.
        wanted = [] if forced or not step.cache else [key for *_, key in step_tasks if key is not None]
        found = find(list(dict.fromkeys(wanted))) if wanted else {}
        for st in step_tasks:
            t = _decide(pipeline, step, resolved, digest, st, found.get(st[3] or ""), forced, mirror)
            if t.cached is not None:
                known[t.id] = t.cached.outputs
            tasks.append(t)
            edges += [(d, t.id) for d in t.deps]
    return Plan(
        pipeline=pipeline,
        inputs=refs,
        tasks=tuple(_refuse_collisions(tasks)),
        edges=tuple(edges),
        images=digests,
        mirror=mirror,
        encoder=None if run_params is None else run_params.encoder,
    )


def _one_by_one(
    lookup: Callable[[str], CachedResult | None],
) -> Callable[[Sequence[str]], Mapping[str, CachedResult]]:
    """A look-up of many keys made of a look-up of one."""

    def find(keys_: Sequence[str]) -> Mapping[str, CachedResult]:
        out: dict[str, CachedResult] = {}
        for k in keys_:
            hit = lookup(k)
            if hit is not None:
                out[k] = hit
        return out

    return find


def _wires(pipeline: Pipeline, step: Step, item: InputRef | None, refs: Sequence[InputRef]) -> tuple[Wire, ...]:
    """The upstream inputs of ``step``'s task on ``item`` (None: the aggregate task)."""
    wires: list[Wire] = []
    for a in step.args:
        if a.role is not Role.INPUT or a.source is None:
            continue
        if not pipeline.per_item(a.source):
            wires.append(Wire(a.name, a.source, (task_id(a.source, None),), False))
        elif item is not None:
            wires.append(Wire(a.name, a.source, (task_id(a.source, item),), False))
        else:
            wires.append(Wire(a.name, a.source, tuple(task_id(a.source, r) for r in refs), True))
    return tuple(wires)


def _step_tasks(
    pipeline: Pipeline,
    step: Step,
    refs: Sequence[InputRef],
    resolved: Mapping[str, Any],
    digest: str | None,
    known: Mapping[str, tuple[OutputDigest, ...]],
    params_json: str | None = None,
) -> list[tuple[InputRef | None, tuple[Wire, ...], tuple[str, ...], str | None]]:
    """The tasks of one step as ``(item, wires, deps, key)``: keyed where every upstream output is known
    (``params_json``: the canonical JSON of ``resolved``, when it was made already)."""
    maker: keys.KeyMaker | None = None
    out: list[tuple[InputRef | None, tuple[Wire, ...], tuple[str, ...], str | None]] = []
    for item in refs if pipeline.per_item(step.name) else (None,):
        wires = _wires(pipeline, step, item, refs)
        deps = tuple(dict.fromkeys(t for w in wires for t in w.tasks))
        key = None
        if all(d in known for d in deps):
            # The step's parts are encoded once (raising InvalidPipeline for a bad parameter).
            maker = maker or keys.KeyMaker(step.name, step.code, resolved, digest, params_json)
            key = maker.key(_digests_of(step, item, wires, refs, known))
        out.append((item, wires, deps, key))
    return out


def _decide(
    pipeline: Pipeline,
    step: Step,
    params: Mapping[str, Any],
    image_digest: str | None,
    task: tuple[InputRef | None, tuple[Wire, ...], tuple[str, ...], str | None],
    cached: CachedResult | None,
    forced: bool,
    mirror: str | None = None,
) -> PlannedTask:
    """A task decided: cached (when ``cached``, the cache's answer for its key, may be used), run or pending."""
    item, wires, deps, key = task
    decision: Decision
    if key is None:
        decision, cached = ("run" if forced else "pending"), None
    elif forced or not step.cache or cached is None:
        decision, cached = "run", None
    else:
        decision = "cached"
    if cached is not None:
        names = [o.name for o in cached.outputs]
    else:
        rc = step.return_codec()
        # A declared Path return keeps the file's own suffix, unknown until it runs.
        names = [RETURN + rc.ext] if rc is not None and rc.name != "file" else []
    return PlannedTask(
        id=task_id(step.name, item),
        step=step.name,
        item=item,
        deps=deps,
        params=params,
        key=key,
        decision=decision,
        step_code=step.code,
        wires=wires,
        outputs=tuple(_planned_outputs(pipeline, step, item, names, mirror)),
        cached=cached,
        max_attempts=step.retries + 1,
        retry_backoff=step.retry_backoff,
        timeout=step.timeout,
        cache=step.cache,
        forced=forced,
        image=step.image,
        image_digest=image_digest,
    )


def image_digests(
    pipeline: Pipeline, known: Mapping[str, str] | None, resolve: Callable[[str], str] | None
) -> dict[str, str]:
    """The digest of every image the pipeline's container steps name: from ``known``, else resolved once
    (``resolve``; default: ``podman image inspect``)."""
    out: dict[str, str] = {}
    for step in pipeline.steps:
        image = step.image
        if image is None or image in out:
            continue
        if known and image in known:
            out[image] = known[image]
            continue
        if resolve is None:
            from datamill.executors.container import inspect_image

            out[image] = inspect_image(image).digest
        else:
            out[image] = resolve(image)
    return out


def collision_message(published: str, step: str, item: str, other: str | None, where: str = "") -> str:
    """What a task whose output would replace another input's output is told (see :func:`_refuse_collisions`).

    ``other`` is the other input's path, or None when the caller may not see it.
    """
    theirs = f"the output of {other!r}" if other else "the output of another input"
    return (
        f"output {published!r} of {item!r} would replace {theirs}{where}: both are published as {published!r}. "
        f"Nothing was published for {item!r}; rename one of the inputs, or give step {step!r} a name_template "
        "that keeps them apart, such as '{item}.{step}{ext}'"
    )


def _refuse_collisions(tasks: list[PlannedTask]) -> list[PlannedTask]:
    """Refuse per-item tasks whose published name another input's task of the same run publishes too.

    ``same.csv`` and ``same.tsv`` both give ``same.count.json`` with the default template: one
    would silently replace the other. The first input in canonical order keeps the name; the
    others are refused (they fail without running, saying why). Names known only once a task
    has run are checked when it publishes, in the scheduler.
    """
    first: dict[str, tuple[str, str]] = {}  # published name -> (item path, step) of its first task
    out: list[PlannedTask] = []
    for t in tasks:
        clash = None
        if t.item is not None:
            for o in t.outputs:
                if not o.publish:
                    continue
                owner = first.setdefault(o.published_name, (t.item.path, t.step))
                if owner[0] != t.item.path and clash is None:
                    clash = collision_message(o.published_name, t.step, t.item.path, owner[0])
        out.append(t if clash is None else dataclasses.replace(t, refused=clash))
    return out
