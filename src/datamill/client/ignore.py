"""What uploading a directory leaves out: a ``.datamillignore`` file and sensible defaults.

A directory tree on a user's disk often holds things that are not data: version control
(``.git``), virtual environments, caches, and sometimes the datamill home itself. Uploading them
is slow at best and leaks at worst, so :func:`walk` skips them:

* always: datamill homes (a directory holding ``admin.token``, or ``datamill.db`` beside
  ``blobs/``) and virtual environments (a directory holding ``pyvenv.cfg``);
* by default (a ``!pattern`` in ``.datamillignore`` brings them back): ``.git/``, ``.hg/``,
  ``.svn/``, ``__pycache__/``, ``.DS_Store`` and the ``.datamillignore`` file itself;
* the patterns of ``.datamillignore`` at the top of the uploaded directory, one per line, in a
  subset of ``.gitignore`` syntax: ``#`` comments, ``!`` to re-include, a trailing ``/`` for
  directories only, a ``/`` elsewhere anchors the pattern to the top (else it matches a name at
  any depth), ``*``, ``?``, ``[...]`` within a name and ``**`` across directories. The last
  matching pattern decides. A skipped directory is not entered, so nothing below it comes back.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from datamill.errors import InvalidInput

IGNORE_FILE = ".datamillignore"

#: Patterns applied before the file's own (which may re-include them with ``!``).
DEFAULT_PATTERNS = (".git/", ".hg/", ".svn/", "__pycache__/", ".DS_Store", f"/{IGNORE_FILE}")

#: Bounds on the ignore file: it is read into memory and every pattern is tried on every path.
MAX_IGNORE_BYTES = 1024 * 1024


def is_home(path: Path) -> bool:
    """Whether ``path`` is a datamill home directory (never uploaded: it holds the admin token)."""
    return (path / "admin.token").exists() or ((path / "datamill.db").exists() and (path / "blobs").is_dir())


def is_venv(path: Path) -> bool:
    """Whether ``path`` is a Python virtual environment."""
    return (path / "pyvenv.cfg").is_file()


@dataclass(frozen=True)
class Rule:
    """One pattern line: a regular expression over ``/``-separated paths relative to the top."""

    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    text: str


def _segment_regex(segment: str) -> str:
    """A regular expression for one name pattern: ``*``, ``?`` and ``[...]`` never match ``/``."""
    out: list[str] = []
    i = 0
    while i < len(segment):
        ch = segment[i]
        i += 1
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\" and i < len(segment):
            out.append(re.escape(segment[i]))
            i += 1
        elif ch == "[":
            end = segment.find("]", i + 1 if segment[i : i + 1] in ("!", "^", "]") else i)
            if end < 0:
                out.append(re.escape(ch))
                continue
            inner = segment[i:end]
            i = end + 1
            negate = inner[:1] in ("!", "^")
            inner = inner[1:] if negate else inner
            inner = inner.replace("\\", "\\\\").replace("[", "\\[")
            out.append("[" + ("^/" if negate else "") + inner + "]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def compile_rule(line: str) -> Rule | None:
    """A rule from one line of ``.datamillignore``; None for blank lines and comments."""
    text = line.rstrip("\n").rstrip("\r")
    if not text.strip() or text.startswith("#"):
        return None
    text = text.rstrip(" ")
    negate = text.startswith("!")
    pattern = text[1:] if negate else text
    if pattern.startswith("\\"):  # '\#name' and '\!name' are literal
        pattern = pattern[1:]
    dir_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    if not pattern:
        return None
    anchored = "/" in pattern
    parts = pattern.lstrip("/").split("/")
    pieces: list[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            pieces.append(".*" if last else "(?:.*/)?")
        else:
            pieces.append(_segment_regex(part) + ("" if last else "/"))
    body = "".join(pieces)
    regex = f"^{body}$" if anchored else f"^(?:.*/)?{body}$"
    try:
        compiled = re.compile(regex, re.DOTALL)
    except re.error as exc:
        raise InvalidInput(f"{IGNORE_FILE}: the pattern {text!r} is not valid ({exc}); fix or remove it") from None
    return Rule(compiled, negate, dir_only, text)


def load_rules(top: Path) -> list[Rule]:
    """The default rules, then those of ``top/.datamillignore`` when there is one."""
    lines = list(DEFAULT_PATTERNS)
    file = top / IGNORE_FILE
    if file.is_file():
        if file.stat().st_size > MAX_IGNORE_BYTES:
            raise InvalidInput(f"{file} is larger than {MAX_IGNORE_BYTES // 1024} KiB; shorten it")
        lines += file.read_text(encoding="utf-8", errors="replace").splitlines()
    return [r for r in map(compile_rule, lines) if r is not None]


def ignored(rules: list[Rule], rel: str, is_dir: bool) -> bool:
    """Whether the path ``rel`` (relative to the top, ``/``-separated) is left out: the last match decides."""
    out = False
    for rule in rules:
        if rule.dir_only and not is_dir:
            continue
        if rule.regex.match(rel):
            out = not rule.negate
    return out


def walk(top: Path, on_skip: Callable[[Path], None] | None = None) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """Every file below ``top`` to upload, as ``(file, parts of its directory relative to top)``.

    Directories and files are visited in name order; each one left out is passed to ``on_skip``.
    """
    if is_home(top):
        raise InvalidInput(f"{top} is a datamill home; it is never uploaded (it holds the admin token)")
    rules = load_rules(top)
    for root, dirs, names in os.walk(top):
        here = Path(root)
        rel_dir = here.relative_to(top)
        prefix = "" if rel_dir == Path(".") else rel_dir.as_posix() + "/"
        keep = []
        for d in sorted(dirs):
            path = here / d
            if is_home(path) or is_venv(path) or ignored(rules, prefix + d, True):
                if on_skip:
                    on_skip(path)
            else:
                keep.append(d)
        dirs[:] = keep  # os.walk enters only these
        for n in sorted(names):
            path = here / n
            if ignored(rules, prefix + n, False):
                if on_skip:
                    on_skip(path)
                continue
            yield path, rel_dir.parts
