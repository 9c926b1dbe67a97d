"""Pipeline references as a caller gives them: a file path here is made absolute before it travels."""

from __future__ import annotations

import os
from pathlib import Path


def absolute_ref(ref: str) -> str:
    """A pipeline reference that names a local file, made absolute; anything else unchanged.

    ``"pipelines/p.py:pipeline"`` -> ``"/home/ana/work/pipelines/p.py:pipeline"`` when that file
    exists here, so the reference still works from a server or a dataflow with another working
    directory. ``"package.module:attr"`` is left as it is.
    """
    text = ref.strip()
    target, attr = text, ""
    head, sep, tail = text.rpartition(":")
    if sep and head and not (len(head) == 1 and tail.startswith(("\\", "/"))):
        target, attr = head, sep + tail
    path = Path(target).expanduser()
    if path.suffix in (".py", ".yaml", ".yml") or "/" in target or os.sep in target:
        if path.is_file():
            return f"{path.resolve()}{attr}"
    return text


#: A dataflow whose implementation is a container image runs the pipeline ``image://<image>``: one
#: container step built on the fly (:func:`datamill.pipeline.loader.image_pipeline`). The reference
#: names only the image, so the step, and so the task keys, are the same on every load.
IMAGE_REF_PREFIX = "image://"


def image_ref(image: str) -> str:
    """The pipeline reference of the one-step pipeline that runs ``image``'s default command."""
    return IMAGE_REF_PREFIX + image


def image_of_ref(ref: str | None) -> str | None:
    """The image an ``image://`` reference names, or None for any other reference."""
    if ref and ref.startswith(IMAGE_REF_PREFIX):
        return ref[len(IMAGE_REF_PREFIX) :]
    return None
