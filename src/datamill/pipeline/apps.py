"""HTTP app steps and CLAMS chains: a step whose work is done by an HTTP service.

``http_step(url=...)`` POSTs its input (the item's bytes, or another step's output) to the service
and stores the response as its output. ``clams_step(url=...)`` does the same for a CLAMS app: its
input is an MMIF document (a source MMIF made for the item, or the previous app's MMIF) and its
output is the MMIF the app returns. ``clams_chain([...])`` wires apps one after another::

    tokens, counts = clams_chain([
        clams_step("tokenize", url="http://127.0.0.1:5001/", params={"lowercase": True}),
        clams_step("count", url="http://127.0.0.1:5002/"),
    ])
    Pipeline("chain", [tokens, counts])

Each app is a step with its own task key, so adding a third app reruns only the third. The key
covers the URL, method, header *templates* (never secret values), parameters and the app's own
version: the ``identifier`` of a CLAMS app's ``GET /`` metadata, or what ``version_url`` (or the
``version_header`` of its answer) says for a generic app. The engine asks the app for it when it
plans a run (:mod:`datamill.engine.apps`), so a new app version is a new key.

Headers may use secrets from the settings (``app_secrets``) as ``${secret:NAME}``; the value is
filled in when the request is sent and never logged, shown or keyed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

import blake3

from datamill.canonical import canonical_json
from datamill.errors import InvalidPipeline, InvalidStepOption
from datamill.pipeline.options import PYTHON, Spelling, StepOptions
from datamill.pipeline.step import Step, option_fields
from datamill.pipeline.wiring import Arg, Role

__all__ = ["SECRET_RE", "AppSpec", "clams_chain", "clams_step", "http_step", "make_app_step"]

#: ``${secret:NAME}`` in a header value: replaced by the setting ``app_secrets``' value for NAME.
SECRET_RE = re.compile(r"\$\{secret:([A-Za-z_][A-Za-z0-9_]*)\}")

_METHODS = ("POST", "PUT", "PATCH", "GET")


@dataclass(frozen=True)
class AppSpec:
    """What an app step sends where; see :func:`http_step` and :func:`clams_step`.

    ``app_version`` is empty as declared and filled in when a run is planned (the app's own version).
    """

    url: str
    protocol: Literal["http", "clams"] = "http"
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    retries: int = 2
    backoff: float = 0.5
    concurrency: int = 8
    version_url: str | None = None
    version_header: str | None = None
    app_version: str = ""

    @property
    def secrets(self) -> tuple[str, ...]:
        """Names of the secrets the headers use."""
        return tuple(sorted({m for v in self.headers.values() for m in SECRET_RE.findall(v)}))

    def remake(self, options: StepOptions, input_step: str | None, spelling: Spelling = PYTHON) -> Step:
        """The app step with ``options`` (what :meth:`Step.configure` calls)."""
        return make_app_step(options, self, input_step, spelling)

    def identity(self) -> dict[str, Any]:
        """What the key covers of the app besides its version: URL, method, header templates."""
        return {
            "url": self.url,
            "protocol": self.protocol,
            "method": self.method,
            "headers": dict(sorted(self.headers.items())),
        }


def _problem(name: str, field_: str, problem: str) -> InvalidStepOption:
    return InvalidStepOption(f"step '{name}': {field_} {problem}", field=field_, problem=problem, step=name)


def check_app(name: str, app: AppSpec) -> AppSpec:
    """``app`` checked: an http(s) URL, a known method, string headers, sane retries and concurrency."""
    parts = urlsplit(app.url) if isinstance(app.url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise _problem(
            name, "url", f"must be an http:// or https:// URL like 'http://127.0.0.1:5000/', got {app.url!r}"
        )
    if parts.username or parts.password:
        raise _problem(name, "url", "must not carry a user or password; put credentials in headers with ${secret:NAME}")
    method = str(app.method).upper()
    if method not in _METHODS:
        raise _problem(name, "method", f"must be one of {', '.join(_METHODS)}, got {app.method!r}")
    if not isinstance(app.headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in app.headers.items()
    ):
        raise _problem(name, "headers", "must map header names to strings")
    if isinstance(app.retries, bool) or not isinstance(app.retries, int) or app.retries < 0:
        raise _problem(name, "retries", f"must be a whole number ≥ 0, got {app.retries!r}")
    if isinstance(app.concurrency, bool) or not isinstance(app.concurrency, int) or app.concurrency < 1:
        raise _problem(name, "concurrency", f"must be a whole number ≥ 1, got {app.concurrency!r}")
    if app.version_url is not None and urlsplit(str(app.version_url)).scheme not in ("http", "https"):
        raise _problem(name, "version_url", f"must be an http:// or https:// URL, got {app.version_url!r}")
    return replace(app, method=method, headers=dict(app.headers))


def app_code(app: AppSpec, version: str | None) -> str:
    """The step's code: protocol, the app's version (once known) and a digest of the rest."""
    digest = blake3.blake3(canonical_json({**app.identity(), "version": version}).encode("utf-8")).hexdigest()
    return f"{app.protocol}:{app.app_version or '?'}:{digest[:32]}"


def make_app_step(options: StepOptions, app: AppSpec, input_step: str | None, spelling: Spelling = PYTHON) -> Step:
    """An HTTP app step from checked ``options``; it reads ``input_step``'s output, or the item when None."""
    opts = options.validate(spelling)
    assert opts.name is not None and opts.params is not None
    name = opts.name
    if opts.aggregate:
        raise _problem(name, "aggregate", "is not available for app steps: an app gets one document per request")
    if opts.inputs:
        raise _problem(name, "inputs", "is not used by app steps: name the step to read with input=...")
    app = check_app(name, app)
    arg = Arg("input", Role.INPUT, input_step) if input_step else Arg("item", Role.ITEM)
    for pname, value in opts.params.items():
        if not isinstance(value, (str, int, float, bool, list)):
            raise _problem(name, f"params.{pname}", f"must be a string, number, true/false or a list, got {value!r}")
    return Step(
        name=name,
        kind="http",
        code=app_code(app, opts.version),
        args=(arg,),
        params=dict(opts.params),
        **{
            **option_fields(opts, (arg,)),
            "retries": 0,  # the executor retries the request itself, with backoff (app.retries)
        },
        codec=None,
        description=opts.description or f"{app.method} {app.url}",
        options=opts,
        app=app,
    )


def http_step(
    name: str,
    url: str,
    *,
    method: str = "POST",
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float | None = 60.0,
    retries: int = 2,
    retry_backoff: float = 0.5,
    concurrency: int = 8,
    version: str | None = None,
    version_url: str | None = None,
    version_header: str | None = None,
    publish: bool | Sequence[str] = True,
    name_template: str | None = None,
    cache: bool = True,
    force: bool = False,
    description: str | None = None,
) -> Step:
    """A step that sends its input to an HTTP service and stores the response as its output.

    Args:
        url: the service; ``params`` go in its query string (part of the task key).
        method: POST (default), PUT, PATCH or GET (GET sends no body).
        headers: sent with every request; ``${secret:NAME}`` takes NAME from the ``app_secrets`` setting.
        input: the step whose output to send; default: the input item.
        timeout: seconds for the whole request, retries included.
        retries: how often a connection error or a 5xx answer is retried, waiting ``retry_backoff``
            seconds, doubling each time.
        concurrency: at most this many requests to this app at once.
        version: the app's version as you know it; ``version_url`` (or ``version_header``, a header
            of the app's answer to ``GET version_url``) asks the app itself when a run is planned.
    """
    options = StepOptions(
        name=name,
        version=version,
        params=params,
        publish=publish,
        name_template=name_template,
        timeout=timeout,
        retry_backoff=retry_backoff,
        cache=cache,
        force=force,
        description=description,
    )
    app = AppSpec(
        url=url,
        method=method,
        headers=dict(headers or {}),
        retries=retries,
        backoff=retry_backoff,
        concurrency=concurrency,
        version_url=version_url,
        version_header=version_header,
    )
    return make_app_step(options, app, input)


def clams_step(
    name: str,
    url: str,
    *,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float | None = 300.0,
    retries: int = 2,
    retry_backoff: float = 0.5,
    concurrency: int = 4,
    publish: bool | Sequence[str] = True,
    name_template: str | None = None,
    cache: bool = True,
    force: bool = False,
    description: str | None = None,
) -> Step:
    """A CLAMS app as a step: MMIF in, MMIF out (see the module docstring and :func:`http_step`).

    The first app of a chain gets a source MMIF made for the item (a TextDocument for text, a
    Video/Audio/ImageDocument for media); ``input=`` names the app before it. ``params`` are
    checked against the app's declared parameters (``GET /``) before a run starts. A 500 answer is
    the app's own error (an MMIF error view) and is not retried; connection errors and 502-504 are.
    """
    options = StepOptions(
        name=name,
        params=params,
        publish=publish,
        name_template=name_template,
        timeout=timeout,
        retry_backoff=retry_backoff,
        cache=cache,
        force=force,
        description=description,
    )
    app = AppSpec(
        url=url,
        protocol="clams",
        headers=dict(headers or {}),
        retries=retries,
        backoff=retry_backoff,
        concurrency=concurrency,
    )
    return make_app_step(options, app, input)


def clams_chain(apps: Sequence[Step]) -> list[Step]:
    """``apps`` wired one after another: each reads the MMIF of the one before (the first, the item).

    Returns new steps; put them in a pipeline (``Pipeline("chain", clams_chain([...]))``).
    """
    steps = list(apps)
    if not steps:
        raise InvalidPipeline("clams_chain needs at least one app step (clams_step(...))")
    out: list[Step] = []
    previous: str | None = None
    for s in steps:
        if s.kind != "http" or s.app is None or s.app.protocol != "clams":
            raise InvalidPipeline(f"clams_chain takes clams_step(...) steps; {s!r} is not one", step=s.name)
        out.append(make_app_step(s.options, s.app, previous))
        previous = s.name
    return out
