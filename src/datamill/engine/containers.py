"""Container steps in the engine: one task becomes a :class:`~datamill.executors.base.ContainerCall`.

Inside the container the task's files have fixed places: its item (or all items) under ``/in``,
other steps' outputs under ``/up``, both mounted read-only file by file, and ``/out``, the one
writable directory (the attempt's output directory: every file written there is an output). The
command line's placeholders are filled with those paths. The image runs by its digest, the one
resolved when the run was planned, so what runs is what the task key names even if the tag moves
meanwhile. Secrets named by the step come from the server's ``DATAMILL_SECRET_<NAME>`` variables.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from datamill.engine.planner import PlannedTask
from datamill.errors import ImageNotAllowed, StepFailed, TaskTimeout
from datamill.executors.base import ContainerCall, ContainerMount, Executor, OnMessage
from datamill.executors.container import image_allowed
from datamill.pipeline.pipeline import Pipeline
from datamill.pipeline.runner import (
    ItemInput,
    StepCall,
    StepResult,
    UpstreamInput,
    collect_outputs,
    command_argv,
    prepare_dirs,
)
from datamill.pipeline.step import Step

__all__ = ["OUT", "SECRET_PREFIX", "ImageUsed", "check_images", "container_call", "run_container_step", "step_images"]

#: The output directory inside a container.
OUT = "/out"
#: A step's secret ``NAME`` is the server's environment variable ``DATAMILL_SECRET_NAME``.
SECRET_PREFIX = "DATAMILL_SECRET_"


@dataclass(frozen=True)
class ImageUsed:
    """The image a container step of a run ran: as named, and its digest (``sha256:...``, the image ID)."""

    image: str
    digest: str | None


def step_images(run_params: Mapping[str, Any] | None) -> dict[str, ImageUsed]:
    """Each container step's image in a run, by step name, from the run's recorded parameters
    (or ``runs.params_meta``, which keeps these two as they are).

    The run records the digests it resolved (``images``: image -> digest) and which step names
    which image (``step_images``: step -> image) when it is submitted; provenance reads them here.
    """
    params = run_params or {}
    digests = params.get("images") or {}
    return {
        str(step): ImageUsed(str(image), digests.get(image))
        for step, image in (params.get("step_images") or {}).items()
    }


class _Paths:
    """Host files → their read-only places inside the container, and the mounts that put them there."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounts: list[ContainerMount] = []
        self._seen: dict[Path, str] = {}

    def inside(self, host: Path) -> Path:
        if host in self._seen:
            return Path(self._seen[host])
        try:
            target = "/" + host.relative_to(self.base).as_posix()  # in/a.csv -> /in/a.csv, up/x-0/f -> /up/x-0/f
        except ValueError:
            target = f"/in/{len(self._seen)}/{host.name}"
        # A blob is linked into the work directory: mount the file the link points at.
        self.mounts.append(ContainerMount(os.path.realpath(host), target))
        self._seen[host] = target
        return Path(target)

    def item(self, i: ItemInput | None) -> ItemInput | None:
        if i is None or i.path is None:
            return i
        return ItemInput(i.ref, self.inside(Path(i.path)))

    def upstream(self, up: UpstreamInput) -> UpstreamInput:
        outs = tuple(tuple(replace(o, path=self.inside(o.path)) for o in task) for task in up.outputs)
        return UpstreamInput(up.step, outs, up.many)


def container_call(call: StepCall, step: Step, name: str, digest: str | None) -> ContainerCall:
    """The container that runs ``call`` of container step ``step``, named ``name``, image ``digest``."""
    assert step.image is not None
    paths = _Paths(call.output_dir.parent)
    inside = replace(
        call,
        output_dir=Path(OUT),
        scratch_dir=Path("/tmp"),
        item=paths.item(call.item),
        items=tuple(i for i in (paths.item(i) for i in call.items) if i is not None),
        upstream={k: paths.upstream(v) for k, v in call.upstream.items()},
    )
    argv = command_argv(inside, step)
    settings = step.container
    params = {**step.params, **dict(call.params)}
    env = {
        **dict(settings.get("env") or {}),
        "DATAMILL_OUTPUT_DIR": OUT,
        "DATAMILL_PARAMS": json.dumps(params, sort_keys=True),
    }
    return ContainerCall(
        image=digest or step.image,
        name=name,
        command=argv if settings.get("command") else None,
        args=() if settings.get("command") else argv,
        mounts=[*paths.mounts, ContainerMount(str(call.output_dir), OUT, writable=True)],
        env=env,
        secret_env=_secrets(step),
        network=str(settings.get("network") or "none"),
        cpus=settings.get("cpus"),
        memory=settings.get("memory"),
        gpus=settings.get("gpus"),
        labels={"datamill.step": step.name},
    )


def _secrets(step: Step) -> dict[str, str]:
    """The values of the step's secrets, from the server's environment; a missing one fails the task."""
    out = {}
    for name in step.container.get("secrets") or ():
        value = os.environ.get(SECRET_PREFIX + name)
        if value is None:
            raise StepFailed(
                f"step '{step.name}': secret {name!r} is not set on the server; set the environment variable "
                f"{SECRET_PREFIX}{name} where the server runs",
                step=step.name,
            )
        out[name] = value
    return out


async def run_container_step(
    executor: Executor, call: StepCall, on_message: OnMessage, pt: PlannedTask, step: Step, name: str
) -> StepResult:
    """Run one task of a container step on ``executor``; returns what it wrote to ``call.output_dir``.

    Raises ``StepFailed`` (the container exited non-zero, or could not start) and ``TaskTimeout``,
    naming the step; the container is gone either way.
    """
    started = time.perf_counter()
    prepare_dirs(call)
    container = container_call(call, step, name, pt.image_digest)
    try:
        await executor.run(container, on_message, timeout=pt.timeout)
    except TaskTimeout:
        raise TaskTimeout(
            f"step '{step.name}': the container ran past its timeout of {pt.timeout:g} s and was removed; "
            "raise the step's timeout or make it faster",
            step=step.name,
        ) from None
    except StepFailed as exc:
        detail = exc.detail if isinstance(exc.detail, dict) else {}
        raise StepFailed(
            f"step '{step.name}': {exc.message}", step=step.name, returncode=detail.get("exit_code"), image=step.image
        ) from None
    return StepResult(tuple(collect_outputs(call.output_dir)), time.perf_counter() - started)


def check_images(pipeline: Pipeline, patterns: tuple[str, ...] | None) -> None:
    """Refuse a pipeline whose container steps name an image outside ``patterns`` (None: no check).

    Raises:
        ImageNotAllowed: naming the step, the image and the ``allowed_images`` setting.
    """
    if patterns is None:
        return
    for step in pipeline.steps:
        if step.image is not None and not image_allowed(step.image, patterns):
            raise ImageNotAllowed(
                f"step '{step.name}': image {step.image!r} is not allowed on this server; the allowed_images "
                f"setting allows {', '.join(patterns) or 'no image'}. Use an allowed image or ask a site admin "
                "to add it to allowed_images",
                step=step.name,
                image=step.image,
                setting="allowed_images",
            )
