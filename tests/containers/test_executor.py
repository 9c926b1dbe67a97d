"""The container executor against real podman: exit states, logs, timeouts, cancellation, secrets, leftovers.

The same outcomes as every executor's contract (see tests/executors/test_contract.py): a result or
StepFailed / TaskTimeout / CancelledError, log lines in order, and nothing left running afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from datamill.errors import ConfigError, InvalidPipeline, StepFailed, TaskTimeout
from datamill.executors import CommandCall, ContainerCall, ContainerMount, LogMessage, Message, get_executor
from datamill.executors.container import ContainerExecutor, container_argv, image_allowed, inspect_image
from tests.containers.conftest import Images, containers_named, podman

pytestmark = pytest.mark.slow


@pytest.fixture
def name(images: Images) -> Callable[[], str]:
    """A fresh container name per call, under this session's prefix."""
    return lambda: f"{images.tag}-{uuid.uuid4().hex[:8]}"


def run(executor: Any, call: Any, timeout: float | None = None) -> tuple[Any, list[str]]:
    lines: list[Message] = []
    result = asyncio.run(executor.run(call, lines.append, timeout))
    return result, [m.line for m in lines if isinstance(m, LogMessage)]


def test_exit_zero_streams_stdout_and_stderr_into_the_log(images: Images, name: Callable[[], str]) -> None:
    ex = get_executor("container", name_prefix=images.tag)
    call = ContainerCall(images.busybox, name(), command=["sh", "-c", "echo one; echo two >&2; echo three"])
    result, lines = run(ex, call)
    assert result == 0
    # podman relays the two streams separately: each keeps its order, not their interleaving
    assert sorted(lines) == ["one", "three", "two"]
    assert lines.index("one") < lines.index("three")
    assert containers_named(call.name) == []


@pytest.mark.parametrize(
    ("command", "reason", "code"),
    [(["sh", "-c", "echo bad row; exit 3"], "exited", 3), (["no-such-tool"], "not_found", 127)],
)
def test_nonzero_exit_fails_with_its_status(
    images: Images, name: Callable[[], str], command: list[str], reason: str, code: int
) -> None:
    ex = get_executor("container", name_prefix=images.tag)
    call = ContainerCall(images.busybox, name(), command=command)
    with pytest.raises(StepFailed) as err:
        run(ex, call)
    assert err.value.detail["reason"] == reason
    assert err.value.detail["exit_code"] == code
    assert f"status {code}" in err.value.message
    assert containers_named(call.name) == []


def test_unknown_image_is_a_runtime_error(images: Images, name: Callable[[], str]) -> None:
    ex = get_executor("container", name_prefix=images.tag)
    with pytest.raises(StepFailed) as err:
        run(ex, ContainerCall(f"localhost/{images.tag}-missing:1", name(), command=["true"]))
    assert err.value.detail["reason"] == "runtime_error"
    assert "image not known" in err.value.message


def test_mounts_are_read_only_except_the_output_dir_and_there_is_no_network(
    images: Images, name: Callable[[], str], tmp_path: Any
) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_text("hello\n")
    out.mkdir()
    script = (
        "cat /in/in.txt > /out/copy.txt; "
        "(echo x > /in/in.txt) 2>/dev/null && echo WROTE-INPUT; "
        "ls /sys/class/net | tr '\\n' ' '; echo"
    )
    call = ContainerCall(
        images.busybox,
        name(),
        command=["sh", "-c", script],
        mounts=[ContainerMount(str(src), "/in/in.txt"), ContainerMount(str(out), "/out", writable=True)],
    )
    _, lines = run(get_executor("container", name_prefix=images.tag), call)
    assert (out / "copy.txt").read_text() == "hello\n"
    assert src.read_text() == "hello\n"
    assert "WROTE-INPUT" not in lines
    assert lines[-1].split() == ["lo"]


def test_timeout_removes_the_container(images: Images, name: Callable[[], str]) -> None:
    ex = get_executor("container", name_prefix=images.tag)
    call = ContainerCall(images.busybox, name(), command=["sleep", "60"])
    with pytest.raises(TaskTimeout) as err:
        run(ex, call, timeout=1.0)
    assert call.name in err.value.message
    assert containers_named(call.name) == []


def test_cancel_removes_the_container(images: Images, name: Callable[[], str]) -> None:
    ex = get_executor("container", name_prefix=images.tag)
    call = ContainerCall(images.busybox, name(), command=["sh", "-c", "echo started; sleep 60"])

    async def go() -> None:
        started = asyncio.Event()
        task = asyncio.ensure_future(ex.run(call, lambda m: started.set()))
        await started.wait()  # the container is running: it wrote its first line
        assert containers_named(call.name) == [call.name]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert containers_named(call.name) == []
    assert podman("mount").stdout.count(call.name) == 0


def test_secrets_never_on_the_command_line_nor_in_the_log(images: Images, name: Callable[[], str]) -> None:
    secret, file_secret = f"s3cret-{uuid.uuid4().hex}", f"f1le-{uuid.uuid4().hex}"
    ex = get_executor("container", name_prefix=images.tag)
    call = ContainerCall(
        images.busybox,
        name(),
        command=["sh", "-c", 'echo "env ${#TOKEN}"; echo "file $(wc -c < /run/secrets/key)"; echo ready; sleep 60'],
        secret_env={"TOKEN": secret},
        secret_files={"key": file_secret},
    )
    lines: list[str] = []

    async def go() -> str:
        ready = asyncio.Event()

        def on(m: Message) -> None:
            assert isinstance(m, LogMessage)
            lines.append(m.line)
            if m.line == "ready":
                ready.set()

        task = asyncio.ensure_future(ex.run(call, on))
        await ready.wait()
        inspected = podman("inspect", call.name).stdout
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return inspected

    inspected = asyncio.run(go())
    create_command = " ".join(json.loads(inspected)[0]["Config"]["CreateCommand"])
    assert "--env-file" in create_command
    assert secret not in create_command and file_secret not in create_command
    assert file_secret not in inspected
    assert lines[:2] == [f"env {len(secret)}", f"file {len(file_secret)}"]  # both reached the container
    assert not any(secret in line or file_secret in line for line in lines)
    assert containers_named(call.name) == []


def test_default_command_gets_the_arguments(images: Images, name: Callable[[], str]) -> None:
    # busybox's CMD is /bin/sh and it has no entrypoint: the arguments go after the default command
    call = ContainerCall(images.busybox, name(), args=["-c", "echo default $0"])
    _, lines = run(get_executor("container", name_prefix=images.tag), call)
    assert lines == ["default /bin/sh"]


def test_sweep_removes_leftovers_of_a_dead_process_only(images: Images, name: Callable[[], str]) -> None:
    dead, alive = name(), name()
    for n, pid in ((dead, "999999999"), (alive, str(os.getpid()))):
        podman("create", "--name", n, "--label", f"datamill.host={os.uname().nodename}",
               "--label", f"datamill.pid={pid}", images.busybox, "true")  # fmt: skip
    ex = ContainerExecutor(name_prefix=images.tag)
    try:
        removed = asyncio.run(ex.sweep())
        assert dead in removed and alive not in removed
        assert containers_named(dead) == [] and containers_named(alive) == [alive]
    finally:
        podman("rm", "-f", alive, check=False)


def test_digest_changes_with_content_not_with_the_tag(images: Images) -> None:
    a, b = inspect_image(images.a), inspect_image(images.b)
    assert a.digest.startswith("sha256:") and a.digest != b.digest
    podman("tag", images.a, f"localhost/{images.tag}-alias:1")
    assert inspect_image(f"localhost/{images.tag}-alias:1").digest == a.digest
    podman("rmi", f"localhost/{images.tag}-alias:1")
    with pytest.raises(InvalidPipeline, match="not on this machine"):
        inspect_image(f"localhost/{images.tag}-alias:1")


# -- without podman: command lines, settings, patterns -----------------------------------------


def test_command_line_keeps_secrets_out_and_limits_in() -> None:
    call = ContainerCall(
        "localhost/x:1", "n", command=["run"], secret_env={"T": "v"}, cpus=0.5, memory="64m", gpus="0,1"
    )
    argv = container_argv(call, "podman", env_file="/private/env", secret_paths={"key": "/private/f"})
    assert "v" not in argv and "T=v" not in " ".join(argv)
    assert argv[argv.index("--network") + 1] == "none"
    assert argv[argv.index("--cpus") : argv.index("--cpus") + 2] == ["--cpus", "0.5"]
    assert "--device" in argv and "nvidia.com/gpu=1" in argv
    assert "--rm" in argv and "/private/f:/run/secrets/key:ro" in argv
    docker = container_argv(call, "docker", env_file="/private/env")
    # docker run --rm loses the exit status: the executor removes the container itself
    assert "--rm" not in docker and docker[docker.index("--gpus") :][:2] == ["--gpus", "device=0,1"]


def test_container_executor_runs_container_calls_only() -> None:
    ex = ContainerExecutor()
    assert not ex.supports(CommandCall(["true"]))
    with pytest.raises(ConfigError, match="container_runtime"):
        ContainerExecutor("rkt")


def test_image_patterns() -> None:
    assert image_allowed("localhost/tool:1", ["localhost/*"])
    assert image_allowed("ghcr.io/org/tool", ["ghcr.io/org/tool:latest"])
    assert not image_allowed("docker.io/evil/tool:1", ["localhost/*", "ghcr.io/org/*"])
