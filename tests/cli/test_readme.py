"""The README's "A first session" runs as written, in order, on a fresh home.

The shell block is taken from README.md itself, so the test follows the README as it changes.
Each line runs the installed ``datamill`` command as a subprocess in an empty directory (so the
home is a fresh ``./.datamill``), after creating the files the block names. The last line,
``datamill events --follow``, runs until interrupted: it must print the session's events and stop
on Ctrl-C quietly.

"The demo" block is not run here: it needs `datamill up` with the demo dataflow running and a
run id (``RUN``) to fill in, so it is exercised by the demo and dataflow tests instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
DATAMILL = Path(sys.executable).parent / "datamill"


def shell_block(section: str) -> list[str]:
    """The command lines of the first ```bash block under the ``## section`` heading of the README."""
    text = README.read_text(encoding="utf-8")
    heading = re.search(rf"^## {re.escape(section)}\s*$", text, re.MULTILINE)
    assert heading, f"README.md has no section {section!r}"
    body = text[heading.end() :]
    body = body[: m.start()] if (m := re.search(r"^## ", body, re.MULTILINE)) else body
    block = re.search(r"^```bash\n(.*?)^```", body, re.MULTILINE | re.DOTALL)
    assert block, f"README.md section {section!r} has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_a_first_session_runs_as_written(tmp_path: Path) -> None:
    lines = shell_block("A first session")
    assert lines and all(shlex.split(line, comments=True)[0] == "datamill" for line in lines)
    cwd = tmp_path / "session"
    (cwd / "more-data").mkdir(parents=True)
    (cwd / "measurements.csv").write_text("x,y\n1,2\n3,4\n")
    (cwd / "more-data" / "run-1.csv").write_text("x,y\n5,6\n")
    (cwd / "more-data" / "notes.txt").write_text("calibrated\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAMILL_")}
    outputs: dict[str, str] = {}
    *commands, last = lines
    for line in commands:
        argv = shlex.split(line, comments=True)
        p = subprocess.run([str(DATAMILL), *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"{line}\nexit {p.returncode}\n{p.stderr}"
        assert "Traceback" not in p.stderr, line
        outputs[argv[1]] = p.stdout
    # What the session promises, checked loosely so that the README may grow.
    assert (cwd / ".datamill").is_dir()
    found = json.loads(outputs["find"])
    assert {i["path"] for i in found} >= {"Raw Data/2026/measurements.csv", "Raw Data/2026/more-data/run-1.csv"}
    assert (cwd / "copy.csv").read_text() == "x,y\n1,2\n3,4\n"

    argv = shlex.split(last, comments=True)
    assert argv[1:] == ["events", "--follow"], "the README's last line changed; update this test"
    proc = subprocess.Popen(
        [str(DATAMILL), *argv[1:]], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        seen = []
        for out in proc.stdout:
            seen.append(out)
            if "metadata.changed" in out:  # the last event of the session
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert any("item.created" in s for s in seen), seen
    # Ctrl-C is how --follow is meant to end: a normal exit, nothing more to say.
    assert proc.returncode == 0 and err == "", err
