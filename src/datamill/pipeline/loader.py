"""Loading a pipeline by reference: :func:`load_pipeline`.

References are strings so that worker processes can load the same pipeline:
``"package.module:attr"``, ``"path/to/file.py:attr"``, ``"path/to/file.py"`` (the file's only
Pipeline), or ``"path/to/pipeline.yaml"`` (:mod:`datamill.pipeline.yaml`); ``"image://IMAGE"``
is the one-step pipeline running a container image's default command (:func:`image_pipeline`).

A module of its own, above both :mod:`datamill.pipeline.pipeline` and :mod:`datamill.pipeline.yaml`:
the YAML loader builds a Pipeline, and loading dispatches to the YAML loader, so neither of those two
may import the other's way.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import blake3
import cloudpickle

from datamill.errors import DatamillError, InvalidPipeline
from datamill.pipeline.pipeline import Pipeline, refuse_main_module
from datamill.pipeline.step import Step, container_step
from datamill.refs import image_of_ref, image_ref

__all__ = ["IMAGE_STEP", "image_pipeline", "load_pipeline"]

#: The name of the one step of an image's pipeline (:func:`image_pipeline`).
IMAGE_STEP = "image"

# Loaded pipeline files by path: (mtime_ns, size, module or YAML pipeline). Workers load the
# same reference for every task; executing the file each time would cost more than the task.
_FILE_CACHE: dict[str, tuple[int, int, Any]] = {}


def _is_file_ref(target: str) -> bool:
    return target.endswith((".py", ".yaml", ".yml")) or "/" in target or os.sep in target


def load_pipeline(ref: str | os.PathLike[str]) -> Pipeline:
    """The pipeline a reference names.

    * ``"package.module:attr"`` — an attribute of an importable module;
    * ``"path/to/file.py:attr"`` — an attribute of a Python file (its directory goes on
      ``sys.path`` so it can import its neighbours);
    * ``"path/to/file.py"`` or ``"package.module"`` — the only Pipeline defined there;
    * ``"path/to/pipeline.yaml"`` / ``.yml`` — a YAML pipeline (:mod:`datamill.pipeline.yaml`);
    * ``"image://localhost/tool:1"`` — a container image as a whole pipeline (:func:`image_pipeline`).

    The returned pipeline's :attr:`Pipeline.ref` is set to a reference that works from any
    working directory (file paths made absolute).

    Raises:
        InvalidPipeline: the module or file cannot be found or imported, the attribute does not
            exist or is not a Pipeline, or the pipeline itself is invalid.
    """
    text = os.fspath(ref).strip()
    if not text:
        raise InvalidPipeline("empty pipeline reference; use 'module:attr', 'file.py:attr' or 'file.yaml'")
    image = image_of_ref(text)
    if image is not None:
        return image_pipeline(image)
    target, attr = text, None
    head, sep, tail = text.rpartition(":")
    # "C:\\x.py" style drive letters are a path, not module:attr.
    if sep and head and not (len(head) == 1 and tail.startswith(("\\", "/"))):
        target, attr = head, tail
        if not attr.replace(".", "").replace("_", "").isalnum():
            raise InvalidPipeline(f"pipeline reference {text!r}: {attr!r} is not an attribute name")
    if target.endswith((".yaml", ".yml")):
        if attr is not None:
            raise InvalidPipeline(f"pipeline reference {text!r}: a YAML file holds one pipeline; drop ':{attr}'")
        return _load_yaml(target)
    if _is_file_ref(target):
        return _load_file(target, attr, text)
    return _load_module(target, attr, text)


def image_pipeline(image: str) -> Pipeline:
    """The pipeline of a dataflow whose implementation is ``image`` (the DMS's shape).

    One container step, named ``image``, per item: the image's default command gets the item's
    file and the output directory as its arguments (``/in/<name> /out``), and every file it
    writes to ``/out`` is published. The step depends only on the image's name (its digest enters
    the task key when a run is planned), so loading it again gives the same keys and the cache
    holds across runs and servers. Its reference is ``image://<image>``.

    Raises:
        InvalidStepOption: ``image`` is not an image reference.
    """
    return Pipeline(image, [container_step(IMAGE_STEP, image)], ref=image_ref(image))


def _load_yaml(target: str) -> Pipeline:
    from datamill.pipeline.yaml import load_yaml_pipeline

    path = Path(target).resolve()
    stat = _stat(path, target)
    hit = _FILE_CACHE.get(str(path))
    if hit and hit[:2] == stat and isinstance(hit[2], Pipeline):
        return hit[2]
    pipeline = load_yaml_pipeline(target)
    pipeline._ref = str(path)
    _FILE_CACHE[str(path)] = (*stat, pipeline)
    return pipeline


def _stat(path: Path, shown: str) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError as e:
        raise InvalidPipeline(f"pipeline file {shown!r} cannot be read: {e.strerror or e}") from None
    if not path.is_file():
        raise InvalidPipeline(f"pipeline file {shown!r} is not a file")
    return st.st_mtime_ns, st.st_size


def _load_file(target: str, attr: str | None, text: str) -> Pipeline:
    path = Path(target).resolve()
    stat = _stat(path, target)
    hit = _FILE_CACHE.get(str(path))
    if hit and hit[:2] == stat and not isinstance(hit[2], Pipeline):
        module = hit[2]
    else:
        module = _exec_file(path, target)
        _FILE_CACHE[str(path)] = (*stat, module)
    pipeline, found = _pick(module, attr, text, target)
    pipeline._ref = f"{path}:{found}"
    return pipeline


def _exec_file(path: Path, target: str) -> Any:
    """Execute a pipeline file as a fresh module."""
    # A name unique per file, so two files called pipeline.py do not replace each other.
    digest = blake3.blake3(str(path).encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() else "_" for c in path.stem)
    mod_name = f"_datamill_pipeline_{safe}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise InvalidPipeline(f"pipeline file {target!r} cannot be loaded as Python; name it *.py")
    module = importlib.util.module_from_spec(spec)
    parent = str(path.parent)
    if parent not in sys.path:
        # Pipeline files import their neighbours ("from helpers import clean"), as scripts can.
        sys.path.insert(0, parent)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(mod_name, None)
        raise InvalidPipeline(f"{target} line {e.lineno}: {e.msg}; fix the Python syntax") from None
    except DatamillError:
        sys.modules.pop(mod_name, None)
        raise
    except (Exception, SystemExit) as e:  # SystemExit: a script's sys.exit() must not end the server's thread
        sys.modules.pop(mod_name, None)
        raise InvalidPipeline(f"loading pipeline file {target!r} failed: {type(e).__name__}: {e}") from e
    # The module cannot be imported by name in another process: ship its functions by value.
    cloudpickle.register_pickle_by_value(module)
    return module


def _load_module(target: str, attr: str | None, text: str) -> Pipeline:
    refuse_main_module(target, text)
    try:
        module = importlib.import_module(target)
    except ModuleNotFoundError as e:
        if e.name and (target == e.name or target.startswith(e.name + ".")):
            raise InvalidPipeline(
                f"pipeline reference {text!r}: no module named '{e.name}'. Check the name and that the "
                "package is installed, or give a file path (path/to/file.py:attr)"
            ) from None
        raise InvalidPipeline(f"importing module '{target}' failed: {e}") from e
    except SyntaxError as e:
        raise InvalidPipeline(f"{e.filename} line {e.lineno}: {e.msg}; fix the Python syntax") from None
    except DatamillError:
        raise
    except (Exception, SystemExit) as e:
        raise InvalidPipeline(f"importing module '{target}' failed: {type(e).__name__}: {e}") from e
    pipeline, found = _pick(module, attr, text, target)
    if pipeline._ref is None:
        pipeline._ref = f"{target}:{found}"
    return pipeline


def _pick(module: Any, attr: str | None, text: str, where: str) -> tuple[Pipeline, str]:
    """The pipeline ``attr`` of ``module`` (or its only one), and the attribute it was found under."""
    candidates: dict[int, str] = {}
    for name, found in vars(module).items():
        if isinstance(found, Pipeline) and id(found) not in candidates:
            candidates[id(found)] = name
    listed = ", ".join(sorted(candidates.values())) or "none"
    if attr is None:
        if len(candidates) == 1:
            name = next(iter(candidates.values()))
            return getattr(module, name), name
        if not candidates:
            raise InvalidPipeline(
                f"{where} defines no Pipeline; define one (pipeline = Pipeline('name', steps=[...])) "
                "or name it as 'file.py:attr'"
            )
        raise InvalidPipeline(f"{where} defines several pipelines ({listed}); say which one: '{where}:<name>'")
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise InvalidPipeline(
                f"pipeline reference {text!r}: {where} has no attribute '{attr}' (pipelines: {listed})"
            )
        value = getattr(value, part)
    if isinstance(value, Step):
        raise InvalidPipeline(
            f"pipeline reference {text!r} names a step, not a pipeline; make one: Pipeline('name', steps=[{attr}])"
        )
    if not isinstance(value, Pipeline):
        raise InvalidPipeline(
            f"pipeline reference {text!r} names a {type(value).__name__}, not a Pipeline (pipelines: {listed})"
        )
    return value, attr
