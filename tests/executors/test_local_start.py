"""A local pool whose workers cannot start says so, and what to do, instead of retrying each call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# A script with no ``if __name__ == "__main__":`` guard: each worker imports it as it starts, and so
# starts a pool of its own during multiprocessing's bootstrap, which multiprocessing refuses.
UNGUARDED = """
import asyncio
from datamill.executors import PythonCall
from datamill.executors.local import LocalExecutor

async def go():
    ex = LocalExecutor(2)
    await ex.start()
    try:
        return await asyncio.gather(*(ex.run(PythonCall(abs, (-i,)), lambda m: None) for i in range(40)))
    finally:
        await ex.close()

print("RESULT", asyncio.run(go()))
"""


@pytest.mark.slow
@pytest.mark.timeout(120, method="thread")  # only against a hang
def test_workers_that_cannot_start_fail_the_calls_with_the_reason(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=110, cwd=tmp_path)
    assert done.returncode != 0
    assert "RESULT" not in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("datamill.errors.WorkerCrashed: "), done.stderr[-3000:]
    assert "exit as they start" in last and "if __name__ == '__main__':" in last
