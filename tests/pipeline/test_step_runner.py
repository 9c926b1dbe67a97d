"""run_step: one task in this process, outputs into output_dir, inputs decoded, errors propagated."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from datamill.engine.attempt import run_command_step
from datamill.errors import InvalidPipeline, StepFailed, TaskTimeout
from datamill.executors import LogMessage, Message
from datamill.executors.command import CommandExecutor
from datamill.pipeline import Context, InputFile, InputRef, Pipeline, command_step, load_pipeline, step
from datamill.pipeline.runner import (
    ItemInput,
    OutputFile,
    StepCall,
    StepResult,
    UpstreamInput,
    collect_outputs,
    command_argv,
    command_env,
    decode_outputs,
    run_step,
)

EXAMPLE = Path(__file__).resolve().parent / "example_pipeline.py"
REF = f"{EXAMPLE}:pipeline"


class Recorder:
    """A reporter that keeps what it is told."""

    def __init__(self) -> None:
        self.progress_calls: list[tuple[float, str]] = []
        self.lines: list[str] = []

    def progress(self, fraction: float, message: str) -> None:
        self.progress_calls.append((fraction, message))

    def log(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture
def csv_item(tmp_path: Path) -> ItemInput:
    data = b"x,y,label\n1,2,a\n3,4,b\n"
    path = tmp_path / "a.csv"
    path.write_bytes(data)
    return ItemInput(InputRef.for_bytes("a.csv", data, folder="Raw Data", metadata={"k": "v"}), path)


def call(tmp_path: Path, step_name: str, **kw: Any) -> StepCall:
    kw.setdefault("pipeline_ref", REF)
    return StepCall(step=step_name, output_dir=tmp_path / "out", scratch_dir=tmp_path / "scratch", **kw)


def json_output(tmp_path: Path, name: str, value: Any) -> OutputFile:
    path = tmp_path / name
    path.write_text(json.dumps(value))
    return OutputFile("return.json", path, "application/json", "json")


def test_run_a_real_step(tmp_path: Path, csv_item: ItemInput) -> None:
    result = run_step(Recorder(), call(tmp_path, "parse", item=csv_item))
    assert isinstance(result, StepResult)
    [out] = result.outputs
    assert (out.name, out.codec, out.content_type) == ("return.json", "json", "application/json")
    assert out.path == tmp_path / "out" / "return.json"
    assert json.loads(out.path.read_text())["columns"] == ["x", "y", "label"]


def test_multi_output_step_reports_progress_and_logs(tmp_path: Path) -> None:
    up = json_output(tmp_path, "p.json", {"columns": ["x", "y"], "rows": [{"x": "1", "y": "2"}]})
    rec = Recorder()
    result = run_step(rec, call(tmp_path, "columns", upstream={"parse": UpstreamInput("parse", ((up,),))}))
    assert [(o.name, o.codec) for o in result.outputs] == [("x.txt", "text"), ("y.txt", "text")]
    assert (tmp_path / "out" / "x.txt").read_text() == "1\n"
    assert rec.progress_calls == [(0.5, "x"), (1.0, "y")]
    assert rec.lines == ["INFO wrote 2 columns"]
    # Downstream, a step with named outputs is seen as {name: value}.
    assert decode_outputs(result.outputs) == {"x.txt": "1\n", "y.txt": "2\n"}


def test_params_and_upstream_values(tmp_path: Path) -> None:
    up = json_output(tmp_path, "p.json", {"columns": ["x"], "rows": [{"x": "2"}, {"x": "3"}]})
    result = run_step(
        Recorder(),
        call(tmp_path, "stats", params={"scale": 10.0}, upstream={"parse": UpstreamInput("parse", ((up,),))}),
    )
    assert json.loads(result.outputs[0].path.read_text()) == {"rows": 2, "sums": {"x": 50.0}}


def test_aggregate_step_receives_a_list_in_order(tmp_path: Path) -> None:
    a = json_output(tmp_path, "a.json", {"rows": 2})
    b = json_output(tmp_path, "b.json", {"rows": 5})
    result = run_step(
        Recorder(), call(tmp_path, "total", upstream={"stats": UpstreamInput("stats", ((a,), (b,)), True)})
    )
    assert json.loads(result.outputs[0].path.read_text()) == {"files": 2, "rows": 7}


def test_a_raising_step_raises(tmp_path: Path, csv_item: ItemInput) -> None:
    @step
    def broken(item) -> None:
        raise ValueError(f"cannot read {item.name}")

    pl = Pipeline("b", steps=[broken])
    with pytest.raises(ValueError, match=r"cannot read a\.csv"):
        run_step(
            Recorder(), call(tmp_path, "broken", pipeline_ref=None, step_bytes=pl.pickled_step("broken"), item=csv_item)
        )


def test_context_and_input_file(tmp_path: Path, csv_item: ItemInput) -> None:
    @step(params={"limit": 3})
    def inspect_ctx(item: InputFile, ctx: Context) -> dict:
        return {
            "name": item.name,
            "stem": item.stem,
            "suffix": item.suffix,
            "folder": item.folder,
            "meta": dict(item.metadata),
            "version": item.version,
            "digest": item.digest,
            "text": item.read_text()[:1],
            "fspath": Path(item) == item.path,
            "params": dict(ctx.params),
            "ctx_item": ctx.item is not None and ctx.item.name,
            "task": ctx.task_id,
            "scratch": ctx.scratch.is_dir(),
        }

    pl = Pipeline("c", steps=[inspect_ctx])
    c = call(
        tmp_path,
        "inspect_ctx",
        pipeline_ref=None,
        step_bytes=pl.pickled_step("inspect_ctx"),
        item=csv_item,
        task_id="inspect_ctx[Raw Data/a.csv]",
    )
    assert decode_outputs(run_step(Recorder(), c).outputs) == {
        "name": "a.csv",
        "stem": "a",
        "suffix": ".csv",
        "folder": "Raw Data",
        "meta": {"k": "v"},
        "version": 1,
        "digest": csv_item.ref.digest,
        "text": "x",
        "fspath": True,
        "params": {"limit": 3},
        "ctx_item": "a.csv",
        "task": "inspect_ctx[Raw Data/a.csv]",
        "scratch": True,
    }


def test_returned_path_is_copied_with_its_suffix(tmp_path: Path) -> None:
    @step
    def made(ctx) -> Path:
        scratch_file = ctx.scratch / "made.csv"
        scratch_file.write_text("made")
        return scratch_file

    pl = Pipeline("m", steps=[made])
    result = run_step(Recorder(), call(tmp_path, "made", pipeline_ref=None, step_bytes=pl.pickled_step("made")))
    assert [(o.name, o.codec, o.content_type) for o in result.outputs] == [("return.csv", "file", "text/csv")]
    assert decode_outputs(result.outputs) == tmp_path / "out" / "return.csv"


def test_ctx_write_and_output(tmp_path: Path) -> None:
    @step
    def many(ctx) -> dict:
        ctx.write("raw.bin", b"\x00")
        ctx.write("meta", {"a": 1})
        with open(ctx.output("report.html"), "w") as f:
            f.write("<p>")
        return {"ok": True}

    pl = Pipeline("m", steps=[many])
    result = run_step(Recorder(), call(tmp_path, "many", pipeline_ref=None, step_bytes=pl.pickled_step("many")))
    assert [(o.name, o.codec) for o in result.outputs] == [
        ("meta.json", "json"),
        ("raw.bin", "bytes"),
        ("report.html", "file"),
        ("return.json", "json"),
    ]
    decoded = decode_outputs(result.outputs)
    assert decoded["meta.json"] == {"a": 1} and decoded["return.json"] == {"ok": True}
    assert decoded["report.html"] == tmp_path / "out" / "report.html"


def test_ctx_misuse_is_explained(tmp_path: Path) -> None:
    ctx = Context(step="s", params={}, scratch=tmp_path, output_dir=tmp_path)
    with pytest.raises(InvalidPipeline, match="reserved for the step's return value"):
        ctx.output("return.json")
    with pytest.raises(InvalidPipeline, match="use one plain file name"):
        ctx.output("../escape.txt")
    with pytest.raises(InvalidPipeline, match=r"would store json data in a '\.csv' file; name it 'x\.json'"):
        ctx.write("x.csv", {"a": 1})
    ctx.progress(7, "clamped")  # no reporter: dropped, and clamped before that
    with pytest.raises(InvalidPipeline, match="progress takes a number"):
        ctx.progress("half")  # type: ignore[arg-type]


def test_ctx_write_dataframe(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    ctx = Context(step="s", params={}, scratch=tmp_path, output_dir=tmp_path)
    path = ctx.write("table", pd.DataFrame({"a": [1]}))
    assert path.name == "table.parquet" and ctx.written == {"table.parquet": "parquet"}


def test_returning_a_named_output_does_not_duplicate_it(tmp_path: Path) -> None:
    @step
    def one(ctx) -> Path:
        p = ctx.output("data.csv")
        p.write_text("a\n")
        return p

    pl = Pipeline("o", steps=[one])
    result = run_step(Recorder(), call(tmp_path, "one", pipeline_ref=None, step_bytes=pl.pickled_step("one")))
    assert [o.name for o in result.outputs] == ["data.csv"]


def test_returning_none_writes_nothing_and_async_steps_work(tmp_path: Path) -> None:
    @step
    async def later(ctx) -> str:
        return "done"

    @step
    def nothing(ctx) -> None:
        return None

    pl = Pipeline("a", steps=[later, nothing])
    r1 = run_step(Recorder(), call(tmp_path / "1", "later", pipeline_ref=None, step_bytes=pl.pickled_step("later")))
    assert decode_outputs(r1.outputs) == "done"
    r2 = run_step(Recorder(), call(tmp_path / "2", "nothing", pipeline_ref=None, step_bytes=pl.pickled_step("nothing")))
    assert r2.outputs == () and decode_outputs(r2.outputs) is None


def test_output_dir_must_start_empty(tmp_path: Path, csv_item: ItemInput) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "left.txt").write_text("over")
    with pytest.raises(ValueError, match="is not empty"):
        run_step(Recorder(), call(tmp_path, "parse", item=csv_item))


def test_call_and_result_survive_pickling(tmp_path: Path, csv_item: ItemInput) -> None:
    c = call(tmp_path, "parse", item=csv_item)
    c2 = cloudpickle.loads(cloudpickle.dumps(c))
    assert c2 == c
    result = run_step(Recorder(), c2)
    assert cloudpickle.loads(cloudpickle.dumps(result)) == result
    with pytest.raises(ValueError, match="needs pipeline_ref or step_bytes"):
        StepCall(step="x", output_dir=tmp_path, scratch_dir=tmp_path)


@pytest.mark.slow
def test_a_pipeline_file_step_pickles_by_value(tmp_path: Path, csv_item: ItemInput) -> None:
    # Steps of a pipeline loaded from a file can travel as bytes to a process that cannot import it.
    data = load_pipeline(REF).pickled_step("parse")
    assert b"read_text" in data  # the function body travels, not just "module.parse"
    result = run_step(Recorder(), call(tmp_path, "parse", pipeline_ref=None, step_bytes=data, item=csv_item))
    assert [o.name for o in result.outputs] == ["return.json"]


# --------------------------------------------------------------------------- command steps


def run_command(rec: Recorder, c: StepCall) -> StepResult:
    """Run a command step as the scheduler does: on the command executor, its lines to ``rec``."""

    def on_message(message: Message) -> None:
        if isinstance(message, LogMessage):
            rec.log(message.line)

    async def go() -> StepResult:
        async with CommandExecutor(kill_grace=0.5) as executor:
            return await run_command_step(executor, c, on_message)

    return asyncio.run(go())


def command_pipeline(tmp_path: Path, argv: list[str], **kw: Any) -> Pipeline:
    script = tmp_path / "tool.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            args = sys.argv[1:]
            print("args", len(args), flush=True)  # before stderr, whatever PYTHONUNBUFFERED says
            if args and args[0] == "fail":
                print("something broke", file=sys.stderr)
                sys.exit(3)
            if args and args[0] == "sleep":
                time.sleep(10)
            out = os.environ["DATAMILL_OUTPUT_DIR"]
            os.makedirs(os.path.join(out, "sub"), exist_ok=True)
            open(os.path.join(out, "sub", "copy.txt"), "w").write(" ".join(args[1:]))
            open(os.path.join(out, "params.json"), "w").write(os.environ["DATAMILL_PARAMS"])
            """
        )
    )
    s = command_step("tool", [sys.executable, "tool.py", *argv], base_dir=tmp_path, **kw)
    return Pipeline("cmd", steps=[s])


def test_command_argv_substitution(tmp_path: Path, csv_item: ItemInput) -> None:
    @step
    def prep(item) -> bytes:
        return b""

    conv = command_step(
        "conv",
        [
            "tool",
            "--mode={mode}",
            "--flag={flag}",
            "{input}",
            "{prep}",
            "{output_dir}/{stem}.out",
            "{scratch}",
            "x{{y}}",
        ],
        params={"mode": "fast", "flag": True},
        base_dir=tmp_path,
    )
    pl = Pipeline("c", steps=[prep, conv])
    outs = (OutputFile("a.bin", tmp_path / "a.bin", "", "file"), OutputFile("b.bin", tmp_path / "b.bin", "", "file"))
    c = call(
        tmp_path,
        "conv",
        pipeline_ref=None,
        step_bytes=pl.pickled_step("conv"),
        params={"mode": "slow"},
        item=csv_item,
        upstream={"prep": UpstreamInput("prep", (outs,))},
    )
    assert command_argv(c) == [
        "tool",
        "--mode=slow",
        "--flag=true",
        str(csv_item.path),
        str(tmp_path / "a.bin"),
        str(tmp_path / "b.bin"),
        f"{tmp_path / 'out'}/a.out",
        str(tmp_path / "scratch"),
        "x{y}",
    ]


def test_command_inputs_expand(tmp_path: Path, csv_item: ItemInput) -> None:
    bundle = command_step("bundle", ["zip", "{inputs}", "--all={inputs}"], base_dir=tmp_path)
    pl = Pipeline("z", steps=[bundle])
    other = ItemInput(csv_item.ref, tmp_path / "b.csv")
    c = call(tmp_path, "bundle", pipeline_ref=None, step_bytes=pl.pickled_step("bundle"), items=(csv_item, other))
    assert command_argv(c) == ["zip", str(csv_item.path), str(other.path), f"--all={csv_item.path} {other.path}"]


def test_command_step_runs_and_collects_outputs(tmp_path: Path, csv_item: ItemInput) -> None:
    pl = command_pipeline(tmp_path, ["ok", "{input}", "{n}"], params={"n": 2})
    rec = Recorder()
    c = call(tmp_path, "tool", pipeline_ref=None, step_bytes=pl.pickled_step("tool"), item=csv_item)
    result = run_command(rec, c)
    assert [(o.name, o.codec) for o in result.outputs] == [("params.json", "file"), ("sub/copy.txt", "file")]
    assert (tmp_path / "out" / "sub" / "copy.txt").read_text() == f"{csv_item.path} 2"
    assert json.loads((tmp_path / "out" / "params.json").read_text()) == {"n": 2}
    assert rec.lines == ["args 3"]
    assert [o.name for o in collect_outputs(tmp_path / "out")] == ["params.json", "sub/copy.txt"]


def test_failing_command_raises_step_failed_with_its_output(tmp_path: Path) -> None:
    pl = command_pipeline(tmp_path, ["fail"])
    c = call(tmp_path, "tool", pipeline_ref=None, step_bytes=pl.pickled_step("tool"))
    with pytest.raises(StepFailed, match=r"exited with status 3; its last output:\nargs 1\nsomething broke") as e:
        run_command(Recorder(), c)
    assert e.value.detail["returncode"] == 3


def test_missing_program(tmp_path: Path) -> None:
    pl = Pipeline("m", steps=[command_step("nope", ["datamill-no-such-program-xyz"], base_dir=tmp_path)])
    c = call(tmp_path, "nope", pipeline_ref=None, step_bytes=pl.pickled_step("nope"))
    with pytest.raises(StepFailed, match="command 'datamill-no-such-program-xyz' not found; install it"):
        run_command(Recorder(), c)


def test_command_timeout(tmp_path: Path) -> None:
    pl = command_pipeline(tmp_path, ["sleep"], timeout=0.5)
    c = call(tmp_path, "tool", pipeline_ref=None, step_bytes=pl.pickled_step("tool"))
    with pytest.raises(TaskTimeout, match=r"ran past its timeout of 0\.5 s"):
        run_command(Recorder(), c)


def test_command_timeout_stops_the_processes_it_started(tmp_path: Path) -> None:
    # The command executor stops the command's whole process group: a child it started in the
    # background does not outlive the task (run_step's own subprocess killed only the command).
    pidfile = tmp_path / "child.pid"
    s = command_step("bg", ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], base_dir=tmp_path, timeout=0.5)
    pl = Pipeline("bg", steps=[s])
    c = call(tmp_path, "bg", pipeline_ref=None, step_bytes=pl.pickled_step("bg"))
    with pytest.raises(TaskTimeout):
        run_command(Recorder(), c)
    child = int(pidfile.read_text())

    def alive() -> bool:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return False
        return state != "Z"  # a zombie is dead, only not reaped yet by its new parent

    # Polled only to wait for the kernel to finish a process already sent SIGKILL.
    deadline = time.monotonic() + 5
    while alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(), f"child {child} of the timed-out command still runs"


def test_run_step_refuses_command_steps(tmp_path: Path) -> None:
    pl = command_pipeline(tmp_path, ["ok"])
    c = call(tmp_path, "tool", pipeline_ref=None, step_bytes=pl.pickled_step("tool"))
    with pytest.raises(InvalidPipeline, match="runs on the command executor"):
        run_step(Recorder(), c)


def test_command_env_matches_what_run_step_uses(tmp_path: Path) -> None:
    pl = command_pipeline(tmp_path, ["ok", "{n}"], params={"n": 2})
    c = call(tmp_path, "tool", pipeline_ref=None, step_bytes=pl.pickled_step("tool"), params={"n": 5})
    assert command_env(c) == {
        "DATAMILL_OUTPUT_DIR": str(tmp_path / "out"),
        "DATAMILL_SCRATCH": str(tmp_path / "scratch"),
        "DATAMILL_PARAMS": '{"n": 5}',
    }


def test_child_path_is_the_joined_path(tmp_path: Path) -> None:
    """Paths made from a parent's parsed parts are the paths a join makes, odd names included."""
    from datamill.pipeline.runner import child_path

    for names in [("task-1-1", "out"), ("return.json",), ("a b", "c.d"), ("x/y",), ("..", "z"), (".",)]:
        got = child_path(tmp_path, *names)
        assert got == tmp_path.joinpath(*names) and str(got) == str(tmp_path.joinpath(*names))
        assert got.parent == tmp_path.joinpath(*names).parent and type(got) is type(tmp_path)
