"""Real podman for the container tests: configured once, the offline busybox image built once per session.

Tests here skip (with the reason) only when podman is not installed; scripts/test.sh installs it in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUSYBOX = "localhost/busybox:ci"


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS``; its output as text."""
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=120)


def containers_named(prefix: str) -> list[str]:
    """Names of every container (running or not) whose name starts with ``prefix``."""
    out = podman("ps", "-a", "--filter", f"name=^{prefix}", "--format", "{{.Names}}").stdout
    return [n for n in out.split() if n.startswith(prefix)]


@dataclass(frozen=True)
class Images:
    """The session's images: busybox, and two tiny images differing in the content of /v."""

    busybox: str
    a: str
    b: str
    #: an image whose entrypoint takes an input file and an output directory (the DMS's shape) and
    #: writes ``upper.txt`` there: the file upper-cased; an input holding ``bad`` exits 4
    upper: str
    #: a unique prefix for this session's container names and tags
    tag: str


def ensure_busybox() -> str:
    """podman set up as scripts/services.sh does it, and the offline busybox image built (once); its name.

    Skips the calling test (with the reason) when podman is not installed.
    """
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/test.sh installs it: apt-get install podman runc busybox-static)")
    # scripts/test.sh exports CONTAINERS_CONF; a test run started by hand gets the same file
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "scripts" / "containers.conf"))
    subprocess.run(["bash", "-c", f". '{ROOT}/scripts/services.sh' && busybox_image {BUSYBOX}"], check=True)
    return BUSYBOX


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    """podman set up as scripts/services.sh does it, and the images the tests run."""
    ensure_busybox()
    tag = f"dmtest{uuid.uuid4().hex[:8]}"
    made = []
    for which in ("a", "b"):
        ctx = tmp_path_factory.mktemp(f"image-{which}")
        (ctx / "Containerfile").write_text(f"FROM {BUSYBOX}\nRUN echo {which} > /v\n")
        name = f"localhost/{tag}-{which}:1"
        podman("build", "-q", "-t", name, str(ctx))
        made.append(name)
    ctx = tmp_path_factory.mktemp("image-upper")
    (ctx / "upper").write_text('#!/bin/sh\ngrep -q bad "$1" && exit 4\ntr a-z A-Z < "$1" > "$2/upper.txt"\n')
    (ctx / "Containerfile").write_text(f'FROM {BUSYBOX}\nCOPY upper /upper\nENTRYPOINT ["/bin/sh", "/upper"]\n')
    upper = f"localhost/{tag}-upper:1"
    podman("build", "-q", "-t", upper, str(ctx))
    made.append(upper)
    try:
        yield Images(BUSYBOX, made[0], made[1], upper, tag)
    finally:
        for name in containers_named(f"{tag}"):
            podman("rm", "-f", "-t", "0", name, check=False)
        podman("rmi", "-f", *made, f"localhost/{tag}:current", check=False)
