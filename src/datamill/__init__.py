"""datamill: a data management system with dataflows built in.

>>> import datamill
>>> @datamill.step
... def words(item) -> int:
...     return len(item.read_text().split())
>>> datamill.Pipeline("count", [words]).run([("a.txt", b"one two")]).outputs
{'words[inputs/a.txt]': 2}
"""

from datamill.client import Client, connect
from datamill.pipeline import Context, InputFile, Pipeline, command_step, load_pipeline, step

__version__ = "0.1.0"

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
