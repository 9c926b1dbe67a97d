"""How users define pipelines: steps (Python functions or commands), pipelines, YAML, codecs.

>>> from datamill.pipeline import Pipeline, step
>>> @step(version="1")  # in a REPL there is no source file to digest: declare a version
... def double(item) -> bytes:
...     return item.read_bytes() * 2
>>> Pipeline("demo", steps=[double]).names
('double',)

See :mod:`datamill.pipeline.step` for wiring rules, :mod:`datamill.pipeline.yaml` for YAML
pipelines, :mod:`datamill.pipeline.codecs` for how return values are stored, and
:mod:`datamill.pipeline.runner` for running one task.
"""

from datamill.pipeline.context import Context
from datamill.pipeline.inputs import InputFile, InputRef
from datamill.pipeline.loader import load_pipeline
from datamill.pipeline.pipeline import Pipeline
from datamill.pipeline.step import Step, command_step, container_step, dagster_step, step

__all__ = [
    "Context",
    "InputFile",
    "InputRef",
    "Pipeline",
    "Step",
    "command_step",
    "container_step",
    "dagster_step",
    "load_pipeline",
    "step",
]
