"""The planner: pure, deterministic plans; keys from upstream output digests; cache decisions; force."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import blake3
import cloudpickle
import pytest

from datamill.engine.planner import CachedResult, OutputDigest, Plan, PlannedTask, plan, task_id
from datamill.errors import InvalidInput, InvalidPipeline
from datamill.pipeline import InputRef, Pipeline, load_pipeline, step
from datamill.pipeline.runner import OutputFile

EXAMPLE = Path(__file__).resolve().parents[1] / "pipeline" / "example_pipeline.py"


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return load_pipeline(f"{EXAMPLE}:pipeline")


def ref(name: str, data: bytes, folder: str = "Raw Data", **meta: Any) -> InputRef:
    return InputRef.for_bytes(name, data, folder=folder, content_type="text/csv", metadata=meta)


A = ref("a.csv", b"x,y,label\n1,2,a\n")
B = ref("b.csv", b"x,y,label\n10,20,c\n")


def digest(text: str) -> str:
    return "blake3:" + blake3.blake3(text.encode()).hexdigest()


def fake_outputs(task: PlannedTask, upstream: Mapping[str, Sequence[OutputDigest]]) -> list[OutputDigest]:
    """What 'running' a task yields in these tests: a digest determined by its step and inputs."""
    seen = [task.step, task.item.digest if task.item else "", repr(sorted(task.params.items()))]
    seen += [o.digest for d in task.deps for o in upstream[d]]
    return [OutputDigest("return.json", digest("|".join(seen)), 10, "application/json", "json")]


class Scheduler:
    """A minimal in-memory stand-in for the engine: a cache dict and the plan → run → key loop."""

    def __init__(self) -> None:
        self.cache: dict[str, CachedResult] = {}

    def lookup(self, key: str) -> CachedResult | None:
        return self.cache.get(key)

    def execute(
        self,
        p: Plan,
        run: Callable[[PlannedTask, Mapping[str, Sequence[OutputDigest]]], list[OutputDigest]] = fake_outputs,
    ) -> tuple[dict[str, str], list[str]]:
        """Finish a plan; returns {task id: key} and the ids of tasks that actually ran."""
        outputs: dict[str, Sequence[OutputDigest]] = {}
        keys: dict[str, str] = {}
        ran: list[str] = []
        for t in p.tasks:
            upstream = {d: outputs[d] for d in t.deps}
            key = t.key or p.key_for(t, upstream)
            keys[t.id] = key
            hit = None if (t.decision == "run") else self.lookup(key)
            if hit is not None:
                outputs[t.id] = hit.outputs
                continue
            outs = run(t, upstream)
            ran.append(t.id)
            outputs[t.id] = outs
            self.cache[key] = CachedResult(tuple(outs))
        return keys, ran


def test_task_ids_edges_and_topological_order(pipeline: Pipeline) -> None:
    p = plan(pipeline, [B, A])
    assert [t.id for t in p.tasks] == [
        "parse[Raw Data/a.csv]",
        "parse[Raw Data/b.csv]",
        "stats[Raw Data/a.csv]",
        "stats[Raw Data/b.csv]",
        "columns[Raw Data/a.csv]",
        "columns[Raw Data/b.csv]",
        "report[Raw Data/a.csv]",
        "report[Raw Data/b.csv]",
        "total",
    ]
    assert p.task("total").deps == ("stats[Raw Data/a.csv]", "stats[Raw Data/b.csv]")
    assert ("parse[Raw Data/a.csv]", "stats[Raw Data/a.csv]") in p.edges
    assert ("stats[Raw Data/b.csv]", "total") in p.edges
    assert p.dependents("stats[Raw Data/a.csv]") == ("report[Raw Data/a.csv]", "total")
    assert task_id("summary", A) == "summary[Raw Data/a.csv]"
    assert p.inputs == (A, B)  # canonical order: folder, then name


def test_plan_is_deterministic_and_independent_of_input_order(pipeline: Pipeline) -> None:
    assert plan(pipeline, [A, B]).to_dict() == plan(pipeline, [B, A]).to_dict()


def test_all_run_on_empty_cache(pipeline: Pipeline) -> None:
    p = plan(pipeline, [A, B])
    decisions = {t.id: t.decision for t in p.tasks}
    assert decisions["parse[Raw Data/a.csv]"] == "run"
    assert p.task("parse[Raw Data/a.csv]").key is not None
    # Downstream keys need upstream outputs that do not exist yet.
    assert all(d == "pending" for tid, d in decisions.items() if not tid.startswith("parse"))
    assert all(p.task(tid).key is None for tid, d in decisions.items() if d == "pending")
    assert p.counts() == {"cached": 0, "run": 2, "pending": 7}


def test_all_cached_when_lookup_hits(pipeline: Pipeline) -> None:
    s = Scheduler()
    keys, ran = s.execute(plan(pipeline, [A, B], lookup=s.lookup))
    assert len(ran) == 9
    p = plan(pipeline, [A, B], lookup=s.lookup)
    assert p.counts() == {"cached": 9, "run": 0, "pending": 0}
    assert {t.id: t.key for t in p.tasks} == keys
    assert p.task("total").cached is not None
    assert [o.published_name for o in p.task("stats[Raw Data/a.csv]").outputs] == ["a.stats.json"]


def test_one_changed_input_changes_only_its_tasks_and_dependents(pipeline: Pipeline) -> None:
    s = Scheduler()
    before, _ = s.execute(plan(pipeline, [A, B], lookup=s.lookup))
    b2 = ref("b.csv", b"x,y,label\n11,20,c\n")
    p = plan(pipeline, [A, b2], lookup=s.lookup)
    assert {t.id for t in p.tasks if t.decision == "cached"} == {
        "parse[Raw Data/a.csv]",
        "stats[Raw Data/a.csv]",
        "columns[Raw Data/a.csv]",
        "report[Raw Data/a.csv]",
    }
    after, ran = s.execute(p)
    assert ran == [
        "parse[Raw Data/b.csv]",
        "stats[Raw Data/b.csv]",
        "columns[Raw Data/b.csv]",
        "report[Raw Data/b.csv]",
        "total",
    ]
    assert {tid for tid in before if before[tid] != after[tid]} == set(ran)


def test_identical_upstream_output_keeps_downstream_cached(pipeline: Pipeline) -> None:
    def normalising(t: PlannedTask, up: Mapping[str, Sequence[OutputDigest]]) -> list[OutputDigest]:
        if t.step == "parse":  # e.g. only whitespace changed: parse yields the same bytes
            return [OutputDigest("return.json", digest("parsed " + (t.item.name if t.item else "")))]
        return fake_outputs(t, up)

    s = Scheduler()
    before, _ = s.execute(plan(pipeline, [A, B], lookup=s.lookup), normalising)
    b2 = ref("b.csv", b"x,y,label\n10,20,c\n\n")
    p = plan(pipeline, [A, b2], lookup=s.lookup)
    assert p.task("parse[Raw Data/b.csv]").decision == "run"
    assert p.task("stats[Raw Data/b.csv]").decision == "pending"
    after, ran = s.execute(p, normalising)
    # stats, columns and total were found in the cache; report reruns because it reads the item itself.
    assert ran == ["parse[Raw Data/b.csv]", "report[Raw Data/b.csv]"]
    assert {tid for tid in before if before[tid] != after[tid]} == set(ran)


def test_metadata_only_change_keeps_keys(pipeline: Pipeline) -> None:
    s = Scheduler()
    keys, _ = s.execute(plan(pipeline, [A, B], lookup=s.lookup))
    a_meta = dataclasses.replace(A, metadata={"reviewed": True}, version=7, item_id=3, version_id=9)
    p = plan(pipeline, [a_meta, B], lookup=s.lookup)
    assert p.counts()["cached"] == 9
    assert {t.id: t.key for t in p.tasks} == keys


def test_renamed_item_reruns_steps_that_take_the_item(pipeline: Pipeline) -> None:
    s = Scheduler()
    s.execute(plan(pipeline, [A], lookup=s.lookup))
    p = plan(pipeline, [dataclasses.replace(A, name="renamed.csv")], lookup=s.lookup)
    assert p.task("parse[Raw Data/renamed.csv]").decision == "run"


def test_force_runs_everything_with_unchanged_keys(pipeline: Pipeline) -> None:
    s = Scheduler()
    keys, _ = s.execute(plan(pipeline, [A, B], lookup=s.lookup))
    p = plan(pipeline, [A, B], lookup=s.lookup, force=True)
    assert {t.decision for t in p.tasks} == {"run"}
    assert all(t.forced for t in p.tasks)
    assert p.task("parse[Raw Data/a.csv]").key == keys["parse[Raw Data/a.csv]"]
    _, ran = s.execute(p)
    assert len(ran) == 9


def test_force_some_steps(pipeline: Pipeline) -> None:
    s = Scheduler()
    s.execute(plan(pipeline, [A, B], lookup=s.lookup))
    p = plan(pipeline, [A, B], lookup=s.lookup, force={"stats"})
    d = {t.id: t.decision for t in p.tasks}
    assert d["parse[Raw Data/a.csv]"] == "cached"
    assert d["stats[Raw Data/a.csv]"] == "run"
    assert d["columns[Raw Data/a.csv]"] == "cached"
    assert d["report[Raw Data/a.csv]"] == "pending"  # cached again if stats yields the same bytes
    _, ran = s.execute(p)
    assert ran == ["stats[Raw Data/a.csv]", "stats[Raw Data/b.csv]"]
    with pytest.raises(InvalidInput, match="force names no step of pipeline 'example': nope"):
        plan(pipeline, [A], force={"nope"})


def test_step_options_force_and_cache() -> None:
    @step(force=True)
    def always(item) -> bytes:
        return b""

    @step(cache=False)
    def uncached(item) -> bytes:
        return b""

    @step
    def normal(item) -> bytes:
        return b""

    pl = Pipeline("opts", steps=[always, uncached, normal])
    p = plan(pl, [A], lookup=lambda k: CachedResult(()))
    assert [(t.step, t.decision, t.key is not None) for t in p.tasks] == [
        ("always", "run", True),
        ("uncached", "run", True),
        ("normal", "cached", True),
    ]
    assert not p.task("uncached[Raw Data/a.csv]").cache


def test_params_change_the_keys_of_that_step_and_its_dependents(pipeline: Pipeline) -> None:
    s = Scheduler()
    before, _ = s.execute(plan(pipeline, [A, B], lookup=s.lookup))
    p = plan(pipeline, [A, B], params={"stats": {"scale": 2}}, lookup=s.lookup)
    assert p.task("stats[Raw Data/a.csv]").params == {"scale": 2.0}
    assert p.task("parse[Raw Data/a.csv]").decision == "cached"
    assert p.task("stats[Raw Data/a.csv]").decision == "run"
    after, _ = s.execute(p)
    assert {tid for tid in before if before[tid] != after[tid]} == {
        "stats[Raw Data/a.csv]",
        "stats[Raw Data/b.csv]",
        "report[Raw Data/a.csv]",
        "report[Raw Data/b.csv]",
        "total",
    }


def test_int_and_float_param_give_one_key(pipeline: Pipeline) -> None:
    a = plan(pipeline, [A], params={"stats": {"scale": 2}}).task("stats[Raw Data/a.csv]")
    b = plan(pipeline, [A], params={"stats": {"scale": 2.0}}).task("stats[Raw Data/a.csv]")
    up = {"parse[Raw Data/a.csv]": [OutputDigest("return.json", "blake3:1")]}
    assert plan(pipeline, [A]).key_for(a, up) == plan(pipeline, [A]).key_for(b, up)


def test_bad_params(pipeline: Pipeline) -> None:
    with pytest.raises(InvalidPipeline, match="step 'stats' parameter 'scale': expected float"):
        plan(pipeline, [A], params={"stats": {"scale": "big"}})
    with pytest.raises(InvalidPipeline, match=r"step 'stats' has no parameter 'scael' \(its parameters: scale\)"):
        plan(pipeline, [A], params={"stats": {"scael": 1}})
    with pytest.raises(InvalidPipeline, match="params given for step 'nope'"):
        plan(pipeline, [A], params={"nope": {}})


def test_duplicate_inputs_are_refused(pipeline: Pipeline) -> None:
    with pytest.raises(InvalidInput, match=re.escape("input 'Raw Data/a.csv' is listed twice")):
        plan(pipeline, [A, dataclasses.replace(A, version=2)])


def test_key_for_needs_every_upstream_output(pipeline: Pipeline) -> None:
    p = plan(pipeline, [A])
    with pytest.raises(KeyError):
        p.key_for("stats[Raw Data/a.csv]", {})


def test_key_parts_for_explains_a_key(pipeline: Pipeline) -> None:
    p = plan(pipeline, [A, B])
    up = {
        "stats[Raw Data/a.csv]": [OutputDigest("return.json", "blake3:1")],
        "stats[Raw Data/b.csv]": [OutputDigest("return.json", "blake3:2")],
    }
    parts = p.key_parts_for("total", up)
    assert parts["inputs"] == [["stats[0]:return.json", "blake3:1"], ["stats[1]:return.json", "blake3:2"]]
    report = p.input_digests("report[Raw Data/a.csv]", {"stats[Raw Data/a.csv]": [OutputDigest("return.json", "d")]})
    assert report == [("item:a.csv", A.digest), ("stats:return.json", "d")]


def test_output_order_does_not_change_keys(pipeline: Pipeline) -> None:
    p = plan(pipeline, [A])
    x, y = OutputDigest("x.txt", "blake3:1"), OutputDigest("y.txt", "blake3:2")
    t = "report[Raw Data/a.csv]"
    assert p.key_for(t, {"stats[Raw Data/a.csv]": [x, y]}) == p.key_for(t, {"stats[Raw Data/a.csv]": [y, x]})


def test_aggregate_with_no_inputs_still_plans_one_task(pipeline: Pipeline) -> None:
    p = plan(pipeline, [])
    assert [t.id for t in p.tasks] == ["total"]
    assert p.task("total").decision == "run"
    assert p.task("total").key is not None


def test_per_item_step_reading_an_aggregate_step() -> None:
    @step
    def size(item) -> int:
        return 1

    @step
    def total(size: list) -> int:
        return sum(size)

    @step
    def share(size: int, total: int) -> float:
        return size / total

    pl = Pipeline("shares", steps=[size, step(aggregate=True)(total.fn), share])
    p = plan(pl, [A, B])
    assert p.task("share[Raw Data/a.csv]").deps == ("size[Raw Data/a.csv]", "total")
    wires = {w.param: w for w in p.task("share[Raw Data/a.csv]").wires}
    assert not wires["total"].many and wires["total"].tasks == ("total",)
    assert p.task("total").wires[0].many


def test_step_call_for_a_task(pipeline: Pipeline, tmp_path: Path) -> None:
    p = plan(pipeline, [A, B])
    files = {A.path: tmp_path / "a.csv", B.path: tmp_path / "b.csv"}
    call = p.step_call("parse[Raw Data/a.csv]", output_dir=tmp_path / "o", scratch_dir=tmp_path / "s", item_files=files)
    assert call.pipeline_ref == f"{EXAMPLE}:pipeline"
    assert call.step_bytes is None
    assert call.item is not None and call.item.path == tmp_path / "a.csv"
    outs = {
        "stats[Raw Data/a.csv]": [OutputFile("return.json", tmp_path / "1.json", "application/json", "json")],
        "stats[Raw Data/b.csv]": [OutputFile("return.json", tmp_path / "2.json", "application/json", "json")],
    }
    agg = p.step_call("total", output_dir=tmp_path / "o", scratch_dir=tmp_path / "s", upstream_outputs=outs)
    assert agg.upstream["stats"].many
    assert [o[0].path.name for o in agg.upstream["stats"].outputs] == ["1.json", "2.json"]
    assert cloudpickle.loads(cloudpickle.dumps(agg)) == agg
    with pytest.raises(KeyError, match="needs a local copy"):
        p.step_call("parse[Raw Data/a.csv]", output_dir=tmp_path, scratch_dir=tmp_path)


def test_step_call_ships_the_step_when_the_pipeline_has_no_ref(tmp_path: Path) -> None:
    @step
    def local(item) -> bytes:
        return item.read_bytes()

    pl = Pipeline("local", steps=[local])
    assert pl.ref is None
    call = plan(pl, [A]).step_call(
        "local[Raw Data/a.csv]", output_dir=tmp_path, scratch_dir=tmp_path, item_files={A.path: tmp_path / "a"}
    )
    assert call.pipeline_ref is None and call.step_bytes


def test_planning_is_pure(pipeline: Pipeline) -> None:
    calls: list[str] = []

    def lookup(key: str) -> CachedResult | None:
        calls.append(key)
        return None

    plan(pipeline, [A, B], lookup=lookup)
    # Only the tasks whose keys are known are looked up; nothing else is touched.
    assert len(calls) == 2


def test_plan_and_run_the_example_end_to_end(pipeline: Pipeline, tmp_path: Path) -> None:
    """The loop a scheduler runs: plan, run ready tasks, key pending ones from real output digests, reuse."""
    from datamill.pipeline.runner import NullReporter, run_step

    a, b = b"x,y,label\n1,2,a\n3,4,b\n", b"x,y,label\n10,20,c\n"
    refs, files = [], {}
    for name, data in (("a.csv", a), ("b.csv", b)):
        (tmp_path / name).write_bytes(data)
        refs.append(ref(name, data))
        files[refs[-1].path] = tmp_path / name
    cache: dict[str, CachedResult] = {}
    blobs: dict[str, Path] = {}  # digest -> a file holding those bytes (the blob store's job)

    def run_all(p: Plan, attempt: str) -> list[str]:
        produced: dict[str, list[OutputFile]] = {}
        recorded: dict[str, tuple[OutputDigest, ...]] = {}
        ran = []
        for t in p.tasks:
            key = t.key or p.key_for(t, {d: recorded[d] for d in t.deps})
            hit = cache.get(key) if t.decision != "run" else None
            if hit is not None:
                recorded[t.id] = hit.outputs
                produced[t.id] = [OutputFile(o.name, blobs[o.digest], "", o.codec) for o in hit.outputs]
                continue
            call = p.step_call(
                t,
                output_dir=tmp_path / attempt / t.id,
                scratch_dir=tmp_path / "scratch" / attempt / t.id,
                item_files=files,
                upstream_outputs=produced,
            )
            result = run_step(NullReporter(), call)
            ran.append(t.id)
            produced[t.id] = list(result.outputs)
            recorded[t.id] = tuple(
                OutputDigest(
                    o.name, "blake3:" + blake3.blake3(o.path.read_bytes()).hexdigest(), 0, o.content_type, o.codec
                )
                for o in result.outputs
            )
            blobs.update({d.digest: o.path for d, o in zip(recorded[t.id], result.outputs, strict=True)})
            cache[key] = CachedResult(recorded[t.id])
        return ran

    assert len(run_all(plan(pipeline, refs, lookup=cache.get), "1")) == 9
    published = [o.published_name for t in plan(pipeline, refs, lookup=cache.get) for o in t.outputs if o.publish]
    assert published == [
        "a.parse.json",
        "b.parse.json",
        "a.stats.json",
        "b.stats.json",
        "a.report.txt",
        "b.report.txt",
        "total.json",
    ]
    assert plan(pipeline, refs, lookup=cache.get).counts() == {"cached": 9, "run": 0, "pending": 0}
    # A new scale changes stats; report and total follow; parse and columns stay cached.
    assert run_all(plan(pipeline, refs, params={"stats": {"scale": 3}}, lookup=cache.get), "2") == [
        "stats[Raw Data/a.csv]",
        "stats[Raw Data/b.csv]",
        "report[Raw Data/a.csv]",
        "report[Raw Data/b.csv]",
        "total",
    ]
