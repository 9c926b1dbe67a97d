"""Pipelines for the engine tests, loaded by file reference (``f"{PIPELINES}:basic"``) so that worker
processes of the local executor can load them too.

What a task does is decided by its input item's text (first word, then arguments):

* ``raise [why]`` — the step raises ``ValueError``;
* ``exit [code]`` — the step ends its own process with ``os._exit`` (kills a local worker);
* ``sleep S [...]`` — the step sleeps ``S`` seconds, then succeeds;
* ``flaky N [...]`` — the step fails its first ``N`` executions for this item, then succeeds;
* ``wait PATH`` — the step waits until the file ``PATH`` exists (a test releases it), then succeeds;
* anything else — the step succeeds at once.

Steps taking ``marks`` (a directory) leave one file per execution there, named
``<item stem>.<uuid>`` and holding the pid, so tests can count executions across processes.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from datamill.pipeline import Context, InputFile, Pipeline, step

PIPELINES = Path(__file__).resolve()


def ref(name: str) -> str:
    """The reference of pipeline ``name`` in this file."""
    return f"{PIPELINES}:{name}"


def executions(marks: str | Path, stem: str | None = None) -> int:
    """How many times a marking step ran (for one item stem, or in total)."""
    d = Path(marks)
    if not d.exists():
        return 0
    return sum(1 for p in d.iterdir() if stem is None or p.name.split(".", 1)[0] == stem)


def pids(marks: str | Path) -> set[int]:
    """Process ids that ran a marking step."""
    return {int(p.read_text()) for p in Path(marks).iterdir() if p.read_text()}


def _mark(marks: str, stem: str) -> int:
    """Record one execution; returns how many there have been for ``stem`` (this one included)."""
    if not marks:
        return 0
    d = Path(marks)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{stem}.{uuid.uuid4().hex}").write_text(str(os.getpid()))
    return executions(d, stem)


def behave(item: InputFile, marks: str) -> str:
    """Do what the item's text says (see the module docstring); returns the text."""
    text = item.read_text()
    n = _mark(marks, item.ref.stem)
    words = text.split()
    cmd, args = (words[0], words[1:]) if words else ("", [])
    if cmd == "raise":
        raise ValueError(f"cannot process {item.name}: {' '.join(args) or 'asked to fail'}")
    if cmd == "exit":
        os._exit(int(args[0]) if args else 1)
    if cmd == "sleep":
        time.sleep(float(args[0]))
    if cmd == "wait":
        while not Path(args[0]).exists():
            time.sleep(0.02)
    if cmd == "flaky" and n <= int(args[0]):
        raise RuntimeError(f"flaky failure {n} of {args[0]}")
    return text


@step
def parse(item: InputFile, *, marks: str = "") -> str:
    """The item's text, stripped and lower-cased (so 'Hello' and 'hello ' parse alike)."""
    return behave(item, marks).strip().lower()


@step
def count(parse: str) -> dict:
    """Words and characters of the parsed text."""
    return {"words": len(parse.split()), "chars": len(parse)}


@step(aggregate=True)
def total(count: list) -> dict:
    """Words over all items."""
    return {"items": len(count), "words": sum(c["words"] for c in count)}


#: parse -> count -> total: per-item, per-item, aggregate
basic = Pipeline("basic", steps=[parse, count, total])

#: only per-item steps (no aggregate to wait for)
peritem = Pipeline("peritem", steps=[parse, count])

#: parse alone: one task per item, nothing downstream
alone = Pipeline("alone", steps=[parse])

#: parse with a 2 s timeout (a fresh worker's first call imports modules: keep it above that on a busy machine)
timed = Pipeline("timed", steps=[parse.configure(timeout=2.0)])

#: parse retried twice, 50 ms apart at first
retrying = Pipeline("retrying", steps=[parse.configure(retries=2, retry_backoff=0.05), count])


@step(force=True)
def fetch(item: InputFile, *, marks: str = "") -> str:
    """Always runs (like fetching from a remote source); its output depends only on the item."""
    return behave(item, marks).strip()


@step
def shout(fetch: str) -> str:
    """Upper-cased."""
    return fetch.upper()


#: fetch (force=True) -> shout: fetch always reruns, shout stays cached while fetch's output is the same
forced = Pipeline("forced", steps=[fetch, shout])


@step
def talk(item: InputFile, ctx: Context) -> str:
    """Logs a line and reports progress."""
    ctx.log.info("processing %s (%d bytes)", item.name, item.ref.size)
    ctx.progress(0.5, "half way")
    ctx.log.warning("done with %s", item.name)
    return item.read_text()


#: one logging step
chatty = Pipeline("chatty", steps=[talk])


@step
def double(count: dict) -> dict:
    """Counts doubled (a second consumer of ``count``)."""
    return {k: 2 * v for k, v in count.items()}


#: a diamond-ish shape: parse -> count -> (double, total)
wide = Pipeline("wide", steps=[parse, count, double, total])


@step(name="parse")
def parse_after_writing(item: InputFile, ctx: Context, *, marks: str = "") -> str:
    """Like ``parse``, but writes a named output first: a task stopped midway has written something."""
    ctx.write("early.txt", "written before the work")
    return behave(item, marks).strip().lower()


#: parse (writing an output before it works) -> count
partial = Pipeline("partial", steps=[parse_after_writing, count])


@step
def narrate(item: InputFile, ctx: Context, *, marks: str = "") -> str:
    """Logs before and after doing what the item says (so a log can be followed while it works)."""
    ctx.log.info("starting %s", item.name)
    text = behave(item, marks)
    ctx.log.info("finished %s", item.name)
    return text


#: one step logging around its work
narrating = Pipeline("narrating", steps=[narrate])


#: parse -> count, count published under a name of 300 bytes ("a." + 293 "n" + ".json"): more than
#: any item name may have, so publishing it fails
long_names = Pipeline("long_names", steps=[parse, count.configure(name_template="{stem}." + "n" * 293 + "{ext}")])


@step
def look_up(item: InputFile, *, table: dict = {}) -> str:  # noqa: B006 (read, never changed)
    """The item's text and what ``table`` says for its stem."""
    return f"{item.read_text().strip()}={table.get(item.ref.stem, '?')}"


@step
def label(look_up: str, *, table: dict = {}, mark: str = "") -> str:  # noqa: B006 (read, never changed)
    """The upstream answer, how big ``table`` is and ``mark``: a step whose keys are made as it is reached."""
    return f"{look_up} of {len(table)}{mark}"


#: a lookup table as a parameter of both steps (``--param table=...``)
lookups = Pipeline("lookups", steps=[look_up, label])


@step
def keeps_notes(item: InputFile, *, seen: list = [], notes: dict = {}) -> str:  # noqa: B006 (changed on purpose)
    """Appends the item's stem to ``seen`` and notes it in ``notes``; how many entries each has then.
    A step that changes its parameters: with values of its own in every call, each answer is the
    same (one more entry than given), whichever calls ran before it in the same process."""
    seen.append(item.ref.stem)
    notes[item.ref.stem] = len(notes)
    return f"{len(seen)} {len(notes)}"


#: one step that changes its list and dict parameters in place
mutating = Pipeline("mutating", steps=[keeps_notes])
