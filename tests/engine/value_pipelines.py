"""Pipelines for the hot-path tests: steps on values (no work directory) and steps on files.

Each step returns what it saw of the home's ``work`` directory (``work`` parameter) while it ran,
so a test can tell whether a directory was made for it. Loaded by file reference.
"""

from __future__ import annotations

import os
from pathlib import Path

from datamill.pipeline import Context, InputFile, Pipeline, step


def _seen(work: str) -> list[str]:
    """The attempt directories under ``work`` right now."""
    return sorted(os.listdir(work)) if work and os.path.isdir(work) else []


@step
def look(item: InputFile, *, work: str = "") -> dict:
    """A value step: reads its item, says which work directories exist while it runs."""
    return {"text": item.read_text(), "work": _seen(work)}


@step
def big(item: InputFile, *, size: int = 10000) -> bytes:
    """A value step whose value is too big to keep inline: stored as one blob."""
    return item.read_bytes() * (size // max(1, item.size) + 1)


@step
def measure(big: bytes, *, work: str = "") -> dict:
    """A value step reading an upstream value kept as a blob."""
    return {"size": len(big), "work": _seen(work)}


@step
def shout(look: dict) -> str:
    """A value step reading an upstream value kept inline."""
    return look["text"].upper()


@step
def named(item: InputFile, *, work: str = "") -> dict:
    """A value step that asks for its item's path: a link named like the item, made then."""
    path = item.path
    return {"name": path.name, "suffix": path.suffix, "text": Path(path).read_text(), "work": _seen(work)}


@step
def filed(item: InputFile, ctx: Context, *, work: str = "") -> dict:
    """A file step (it takes ctx and writes a named output): it keeps its work directory."""
    ctx.write("copy.txt", item.read_text())
    return {"work": _seen(work)}


@step
def as_file(item: InputFile) -> Path:
    """A step on values whose value needs a file (a Path: the file codec): its directory is made then."""
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"as-file-{os.getpid()}-{item.name}"
    scratch.write_text(item.read_text().upper())
    return scratch


values = Pipeline("values", steps=[look, shout])
blobs = Pipeline("blobs", steps=[big, measure])
paths = Pipeline("paths", steps=[named])
files = Pipeline("files", steps=[filed])
file_value = Pipeline("file_value", steps=[as_file])

PIPELINES_FILE = Path(__file__).resolve()


@step
def name_of(item: InputFile) -> str:
    """A value step that reads only its item's name, never its bytes."""
    return item.name


names = Pipeline("names", steps=[name_of])
