"""Executors: how a task's code is run — inline, in the local process pool, as a command, in a container,
as a Dagster job, as an HTTP request.

The scheduler builds one with :func:`get_executor` and hands it calls; see :mod:`datamill.executors.base`.
"""

from .base import (
    EXECUTORS,
    Call,
    CommandCall,
    ContainerCall,
    ContainerMount,
    DagsterCall,
    Executor,
    HttpCall,
    HttpResponse,
    LogMessage,
    Message,
    OnMessage,
    ProgressMessage,
    PythonCall,
    Reporter,
    get_executor,
)

__all__ = [
    "EXECUTORS",
    "Call",
    "CommandCall",
    "ContainerCall",
    "ContainerMount",
    "DagsterCall",
    "Executor",
    "HttpCall",
    "HttpResponse",
    "LogMessage",
    "Message",
    "OnMessage",
    "ProgressMessage",
    "PythonCall",
    "Reporter",
    "get_executor",
]
