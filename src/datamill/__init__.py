"""datamill: a data management system with dataflows built in.

>>> import datamill
>>> @datamill.step
... def words(item) -> int:
...     return len(item.read_text().split())
>>> datamill.Pipeline("count", [words]).run([("a.txt", b"one two")]).outputs
{'words[inputs/a.txt]': 2}

The public names are imported on first use, so that importing the package is instant: the
``datamill`` command's entry point (:mod:`datamill.console`) must be able to catch a Ctrl-C
pressed while the rest (SQLAlchemy, pandas, ...) is still loading.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from datamill.client import Client, connect
    from datamill.pipeline import Context, InputFile, Pipeline, command_step, load_pipeline
    from datamill.pipeline.step import step

#: Public name -> the module that defines it.
_LAZY = {
    "Client": "datamill.client",
    "connect": "datamill.client",
    "Context": "datamill.pipeline",
    "InputFile": "datamill.pipeline",
    "Pipeline": "datamill.pipeline",
    "command_step": "datamill.pipeline",
    "load_pipeline": "datamill.pipeline",
    "step": "datamill.pipeline",
}


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'datamill' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Client",
    "Context",
    "InputFile",
    "Pipeline",
    "__version__",
    "command_step",
    "connect",
    "load_pipeline",
    "step",
]
