"""The container executor: a :class:`ContainerCall` runs an image through podman (or the Docker CLI).

The container runtime's client runs as a command on the :class:`~datamill.executors.command.CommandExecutor`
(``<runtime> run --name NAME ... IMAGE ...``), attached: what the container writes to stdout and
stderr comes back through the client, line by line, as the task's log (one stream, in the order
written), and the client's exit status is the container's. The status is the state: 0 succeeds;
125 (the runtime could not run it: unknown image, bad option), 126 (the command cannot be invoked),
127 (no such command) and any other code fail the call with :class:`~datamill.errors.StepFailed`.

Nothing outlives a call. A timeout or a cancellation removes the container first (``rm -f -t 0``:
SIGKILL, then removal; its mounts go with it) and only then stops the client, whose process
group the command executor kills. Podman's ``run --rm`` removes an exited container itself and
keeps its exit status; the Docker CLI's ``--rm`` loses the status (it always exits 0), so with
Docker the container runs without ``--rm`` and is removed after its status is known.

Every container is named (``datamill-<home>-<task>-<attempt>`` from the engine) and labelled with
the host and process that started it: when a server starts (:meth:`ContainerExecutor.sweep_at_start`),
or else at its first call, an executor removes the containers of its name prefix whose process is
gone (a crashed server's leftovers), see :meth:`ContainerExecutor.sweep`.

Secrets never appear on a command line (``ps``, ``podman inspect``'s CreateCommand): ``secret_env``
goes through an ``--env-file`` and ``secret_files`` are mounted read-only, both written to a
private (0700) directory that is removed when the call ends. Variables from an env file are still in
``podman inspect``'s ``Config.Env`` for whoever may inspect the host's containers (root); pass a
secret as a file when even that is too much.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from datamill.errors import ConfigError, InvalidPipeline, StepFailed, TaskTimeout

from .base import Call, CommandCall, ContainerCall, Executor, OnMessage
from .command import CommandExecutor

__all__ = [
    "RUNTIMES",
    "ContainerExecutor",
    "ImageInfo",
    "container_argv",
    "image_allowed",
    "image_digest",
    "inspect_image",
]

#: The container runtimes a ``container_runtime`` setting may name (podman is the tested one).
RUNTIMES = ("podman", "docker")
#: Where ``secret_files`` appear inside a container.
SECRETS_DIR = "/run/secrets"
#: How long a runtime's own commands (inspect, rm, ps) may take before they count as hung.
_ADMIN_TIMEOUT = 60.0


def check_runtime(runtime: str) -> str:
    """``runtime`` if it names a known container runtime; :class:`ConfigError` otherwise."""
    if runtime not in RUNTIMES:
        raise ConfigError(
            f"container_runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}.",
            key="container_runtime",
            value=runtime,
        )
    return runtime


# ---------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageInfo:
    """What a task key and a container call need to know about a local image.

    ``digest`` is the image ID (``sha256:<hex>``, the digest of the image's config, which covers
    its layers): it changes when a tag is moved to other content and is the same on every machine
    that has the image, pulled or built from the same layers. ``entrypoint`` and ``cmd`` are the
    image's defaults (used when a call appends arguments to them).
    """

    image: str
    digest: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()


def inspect_image(image: str, runtime: str = "podman") -> ImageInfo:
    """The local image ``image`` (a tag or an ID) as :class:`ImageInfo`.

    Only images already on this machine count: a run never pulls (pull or build it first).

    Raises:
        InvalidPipeline: the runtime is not installed, or has no such image.
    """
    check_runtime(runtime)
    program = shutil.which(runtime)
    if program is None:
        raise InvalidPipeline(
            f"image {image!r}: the container runtime {runtime!r} is not installed on this machine; install it "
            "or set container_runtime to the one that is",
            image=image,
        )
    try:
        done = subprocess.run(
            [program, "image", "inspect", image], capture_output=True, text=True, timeout=_ADMIN_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise InvalidPipeline(
            f"image {image!r}: '{runtime} image inspect' did not answer within {_ADMIN_TIMEOUT:g} s", image=image
        ) from None
    try:
        # the whole JSON, not --format: podman's template field is .ID where Docker's is .Id
        found = json.loads(done.stdout)[0] if done.returncode == 0 else None
    except (ValueError, IndexError, KeyError):
        found = None
    if not isinstance(found, dict) or not found.get("Id"):
        raise InvalidPipeline(
            f"image {image!r} is not on this machine ({runtime} image inspect: "
            f"{_last_line(done.stderr) or 'no such image'}); pull or build it first ({runtime} pull / {runtime} build)",
            image=image,
        )
    digest = str(found["Id"])
    if not digest.startswith("sha256:"):
        digest = "sha256:" + digest
    config = found.get("Config") or {}
    return ImageInfo(image, digest, _strings(config.get("Entrypoint")), _strings(config.get("Cmd")))


def image_digest(image: str, runtime: str = "podman") -> str:
    """The digest (``sha256:...`` image ID) of the local image ``image``; see :func:`inspect_image`."""
    return inspect_image(image, runtime).digest


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


def image_allowed(image: str, patterns: Iterable[str]) -> bool:
    """Whether ``image`` matches one of the glob ``patterns`` (``localhost/*``, ``ghcr.io/org/*:1.*``).

    An image without a tag is matched as ``image:latest`` too, so ``localhost/tool:latest`` admits
    ``localhost/tool``.
    """
    names = {image}
    last = image.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        names.add(image + ":latest")
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


# ---------------------------------------------------------------------------------- command lines


def _gpu_args(runtime: str, gpus: str) -> list[str]:
    """``--gpus`` for Docker; CDI ``--device nvidia.com/gpu=...`` for podman (its ``--gpus`` is not one)."""
    if runtime == "docker":
        return ["--gpus", gpus if gpus == "all" or gpus.isdigit() else f"device={gpus}"]
    if gpus == "all":
        return ["--device", "nvidia.com/gpu=all"]
    if gpus.isdigit() and "," not in gpus:
        # a count: the first N devices
        return [a for i in range(int(gpus)) for a in ("--device", f"nvidia.com/gpu={i}")]
    return [a for d in gpus.split(",") if d.strip() for a in ("--device", f"nvidia.com/gpu={d.strip()}")]


def container_argv(
    call: ContainerCall,
    runtime: str = "podman",
    *,
    program: str | None = None,
    env_file: str | None = None,
    secret_paths: Mapping[str, str] | None = None,
    image_info: ImageInfo | None = None,
) -> list[str]:
    """The ``run`` command line for ``call`` (what :class:`ContainerExecutor` runs).

    ``env_file`` holds ``call.secret_env`` and ``secret_paths`` the host files of
    ``call.secret_files``: the values themselves are never part of the line. ``image_info`` gives
    the image's defaults when ``call.command`` is None and ``call.args`` must be appended to them.
    """
    argv = [program or runtime, "run", "--name", call.name, "--pull=never", "--network", call.network]
    if runtime == "podman":
        # --rm keeps the exit status with podman; --replace takes over the name from a leftover of
        # a scheduler that died during this same attempt (a reclaimed task keeps its number)
        argv += ["--rm", "--replace"]
    for key, value in sorted(call.labels.items()):
        argv += ["--label", f"{key}={value}"]
    for m in call.mounts:
        argv += ["--volume", f"{m.source}:{m.target}:{'rw' if m.writable else 'ro'}"]
    for name, path in sorted((secret_paths or {}).items()):
        argv += ["--volume", f"{path}:{SECRETS_DIR}/{name}:ro"]
    if call.workdir:
        argv += ["--workdir", call.workdir]
    for key, value in sorted(call.env.items()):
        argv += ["--env", f"{key}={value}"]
    if env_file is not None:
        argv += ["--env-file", env_file]
    if call.cpus is not None:
        argv += ["--cpus", f"{call.cpus:g}"]
    if call.memory is not None:
        argv += ["--memory", str(call.memory)]
    if call.gpus:
        argv += _gpu_args(runtime, str(call.gpus))
    argv.append(call.image)
    if call.command is not None:
        argv += [str(a) for a in call.command]
    elif call.args:
        if image_info is not None and not image_info.entrypoint:
            argv += list(image_info.cmd)  # no entrypoint: the default command itself takes the arguments
        argv += [str(a) for a in call.args]
    return argv


# ---------------------------------------------------------------------------------- the executor


class ContainerExecutor(Executor):
    """Runs :class:`ContainerCall` s with ``runtime`` (``podman`` or ``docker``); see the module docstring.

    ``slots``: how many containers run at once (more wait inside :meth:`run`, their timeout not
    yet counting); ``None``: no limit. ``name_prefix``: the prefix of the names of the containers
    this executor's owner starts; :meth:`sweep` removes those left by a process that is gone.
    ``kill_grace``: how long the client may take to exit once its container is gone.
    """

    name = "container"

    def __init__(
        self,
        runtime: str = "podman",
        *,
        slots: int | None = None,
        name_prefix: str = "datamill-",
        kill_grace: float = 2.0,
    ) -> None:
        self.runtime = check_runtime(runtime)
        self.name_prefix = name_prefix
        self.kill_grace = kill_grace
        self._slots = slots
        self._free = asyncio.Semaphore(slots) if slots is not None else None
        self._client = CommandExecutor(kill_grace=kill_grace)
        self._images: dict[str, ImageInfo] = {}
        self._swept = False
        self._host = os.uname().nodename

    @property
    def capacity(self) -> int | None:
        """``slots``: how many containers run at once."""
        return self._slots

    def supports(self, call: Call) -> bool:
        """Only container calls."""
        return isinstance(call, ContainerCall)

    def _program(self) -> str:
        program = shutil.which(self.runtime)
        if program is None:
            raise StepFailed(
                f"The container runtime {self.runtime!r} is not installed on this machine. Install it, or set "
                "container_runtime to the one that is.",
                reason="no_runtime",
            )
        return program

    async def run(self, call: Call, on_message: OnMessage, timeout: float | None = None) -> int:
        """Run the container; return 0, or raise ``StepFailed``/``TaskTimeout`` (see :meth:`Executor.run`)."""
        self._check(call)
        assert isinstance(call, ContainerCall)
        program = self._program()
        if not self._swept:
            self._swept = True
            await self.sweep()
        if self._free is None:
            return await self._run(program, call, on_message, timeout)
        async with self._free:
            return await self._run(program, call, on_message, timeout)

    async def _image(self, image: str) -> ImageInfo:
        info = self._images.get(image)
        if info is None:
            try:
                info = await asyncio.to_thread(inspect_image, image, self.runtime)
            except InvalidPipeline as exc:
                raise StepFailed(exc.message, reason="no_image", image=image) from None
            self._images[image] = info
        return info

    async def _run(self, program: str, call: ContainerCall, on_message: OnMessage, timeout: float | None) -> int:
        if not call.image or not call.name:
            raise StepFailed("A container call needs an image and a container name.", reason="empty")
        info = await self._image(call.image) if call.command is None and call.args else None
        labels = {**call.labels, "datamill.host": self._host, "datamill.pid": str(os.getpid())}
        private = tempfile.mkdtemp(prefix="datamill-secrets-") if call.secret_env or call.secret_files else None
        try:
            env_file, secret_paths = _write_secrets(private, call) if private else (None, {})
            argv = container_argv(
                _with_labels(call, labels),
                self.runtime,
                program=program,
                env_file=env_file,
                secret_paths=secret_paths,
                image_info=info,
            )
            return await self._attached(call, argv, on_message, timeout)
        finally:
            if private is not None:
                shutil.rmtree(private, ignore_errors=True)

    async def _attached(
        self, call: ContainerCall, argv: list[str], on_message: OnMessage, timeout: float | None
    ) -> int:
        """Run the client attached; on a timeout or a cancellation remove the container, then stop the client."""
        client = asyncio.ensure_future(self._client.run(CommandCall(argv, merge_stderr=True), on_message))
        clean = False
        try:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(client)
            except TimeoutError:
                await self._stop(call.name, client)
                raise TaskTimeout(
                    f"The container {call.name!r} ran past its timeout of {timeout:g} s and was removed. "
                    "Raise the step's timeout or make it faster.",
                    timeout=timeout,
                    container=call.name,
                ) from None
            except asyncio.CancelledError:
                await self._stop(call.name, client)
                raise
            except StepFailed as exc:
                raise _failed(call, exc) from None
            clean = self.runtime == "podman"  # run --rm removed it; docker's status came before removal
            return 0
        finally:
            if not clean:
                await self.remove(call.name)

    async def _stop(self, name: str, client: asyncio.Future[int]) -> None:
        """Remove the container (the client then exits by itself), then make sure the client is gone."""
        try:
            await self.remove(name)
            # the client exits once its container is gone (it reports 137 then: not this task's end)
            await asyncio.wait({client}, timeout=self.kill_grace)
        finally:
            if not client.done():
                client.cancel()  # the command executor kills the client's process group
            with contextlib.suppress(BaseException):
                await client

    async def _admin(self, *args: str) -> tuple[int, str]:
        """Run ``<runtime> ARGS`` to its end (shielded: a cleanup must finish even when cancelled)."""

        async def go() -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                self._program(),
                *args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), _ADMIN_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return -1, f"{self.runtime} {args[0]} did not finish within {_ADMIN_TIMEOUT:g} s"
            return proc.returncode or 0, out.decode("utf-8", "replace")

        return await asyncio.shield(asyncio.ensure_future(go()))

    async def remove(self, name: str) -> None:
        """Kill and remove container ``name`` at once (no grace: its task is over); a missing one is fine."""
        if self.runtime == "podman":
            await self._admin("rm", "-f", "-t", "0", "--ignore", name)
        else:
            await self._admin("rm", "-f", name)

    async def sweep_at_start(self) -> list[str]:
        """:meth:`sweep` once, when the owner starts (a server, a scheduler): its names; none if no runtime.

        Leftovers of a crashed server go at once, not only when a container step next runs; the
        first call then does not sweep again.
        """
        if shutil.which(self.runtime) is None:
            return []
        self._swept = True
        return await self.sweep()

    async def sweep(self) -> list[str]:
        """Remove containers named with this executor's prefix whose starting process is gone; their names.

        A container started on this host by a process that no longer runs (a crashed server) is
        removed; containers of live processes, and of other hosts sharing the runtime, are left alone.
        """
        fmt = '{{.Names}}\t{{index .Labels "datamill.host"}}\t{{index .Labels "datamill.pid"}}'
        code, out = await self._admin("ps", "-a", "--filter", f"name=^{self.name_prefix}", "--format", fmt)
        if code != 0:
            return []
        removed = []
        for line in out.splitlines():
            name, host, pid = (line.split("\t") + ["", ""])[:3]
            if not name.startswith(self.name_prefix) or host != self._host or _alive(pid):
                continue
            await self.remove(name)
            removed.append(name)
        return removed


def _alive(pid: str) -> bool:
    """Whether process ``pid`` (text from a label) runs on this host; unknown counts as alive."""
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _with_labels(call: ContainerCall, labels: Mapping[str, str]) -> ContainerCall:
    return replace(call, labels=dict(labels))


def _write_secrets(private: str, call: ContainerCall) -> tuple[str | None, dict[str, str]]:
    """Write the call's secrets into ``private`` (0700; files 0600); the env file and the secret files."""
    os.chmod(private, 0o700)
    env_file = None
    if call.secret_env:
        env_file = os.path.join(private, "env")
        lines = []
        for key, value in call.secret_env.items():
            if "\n" in value or "\n" in key:
                raise StepFailed(f"Secret {key!r} spans several lines; pass it as a secret file.", reason="bad_secret")
            lines.append(f"{key}={value}\n")
        _private_file(env_file, "".join(lines))
    paths: dict[str, str] = {}
    for name, value in call.secret_files.items():
        path = os.path.join(private, f"file-{len(paths)}")
        _private_file(path, value)
        paths[name] = path
    return env_file, paths


def _private_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


#: What a runtime's own exit statuses mean (the container's command never sees them).
_RUNTIME_CODES = {
    125: ("runtime_error", "the container runtime could not run it"),
    126: ("not_executable", "its command cannot be invoked"),
    127: ("not_found", "its command was not found in the image"),
}


def _failed(call: ContainerCall, exc: StepFailed) -> StepFailed:
    """The StepFailed of a container from its client's, naming the image and the container's status."""
    detail: dict[str, Any] = exc.detail if isinstance(exc.detail, dict) else {}
    code = detail.get("exit_code")
    tail: list[str] = list(detail.get("stderr") or [])
    last = next((line for line in reversed(tail) if line.strip()), "")
    reason, what = _RUNTIME_CODES.get(code, ("exited", "")) if isinstance(code, int) else ("not_started", "")
    if reason == "not_started":
        message = f"Container {call.name!r} ({call.image}) could not be started: {exc.message}"
    else:
        message = f"Container {call.name!r} ({call.image}) exited with status {code}" + (f": {what}" if what else "")
        message += f" ({last})" if last else " (it printed nothing)"
    return StepFailed(
        message + ". See the task's log for its output.",
        exit_code=code,
        stderr=tail,
        image=call.image,
        container=call.name,
        reason=reason,
    )
