"""HTTP app steps in the engine: ask the app who it is when a run is planned, and run its tasks.

When a run is planned, :func:`bind_apps` asks each app step's service for its version (a CLAMS app's
``GET /`` metadata ``identifier``; a generic app's ``version_url``) and checks a CLAMS step's
parameters against the ones the app declares, so an unknown parameter is refused *before* the run
starts (CLAMS apps silently accept unknown ones). The version goes into the step's code and so into
every task key: a new app version is a new key. An app that cannot be reached at planning time is
not refused there (its tasks retry and then fail, naming the URL and the reason); its tasks check
again when they run.

:func:`run_app_step` runs one task on the HTTP executor: the body is the item's bytes (a source
MMIF for a CLAMS app) or the upstream step's output; the response becomes the task's output. For a
CLAMS app the response must be valid MMIF without an error view, else the task fails with the app's
own message.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from datamill.errors import InvalidPipeline, StepFailed, TaskTimeout
from datamill.executors.base import Executor, HttpCall, HttpResponse, OnMessage
from datamill.pipeline.apps import SECRET_RE, AppSpec, app_code
from datamill.pipeline.pipeline import Pipeline
from datamill.pipeline.runner import OutputFile, StepCall, StepResult, prepare_dirs
from datamill.pipeline.step import Step

__all__ = ["UNIVERSAL_CLAMS_PARAMS", "AppInfo", "app_info", "bind_apps", "clear_app_cache", "run_app_step"]

#: Parameters every CLAMS app takes without declaring them (clams-python's Restifier).
UNIVERSAL_CLAMS_PARAMS = frozenset({"pretty", "runningTime", "hwFetch", "tfSamplingMode"})
#: How long an app's answer to "who are you" is reused within one process (plans come in bursts).
INFO_TTL_SECONDS = 30.0
#: Timeout of the metadata request made while planning (inside the submitting transaction).
INFO_TIMEOUT_SECONDS = 5.0
#: Statuses a CLAMS request is retried on: a 500 is the app's own answer (an MMIF error view).
CLAMS_RETRY_STATUSES = frozenset({502, 503, 504})
#: How much of an error answer a failed task quotes.
QUOTE = 400


@dataclass(frozen=True)
class AppInfo:
    """What an app says about itself: its ``name``, ``version`` (for CLAMS the identifier) and parameters."""

    url: str
    name: str
    version: str
    parameters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class AppUnreachable(Exception):
    """The app did not answer its metadata request (planning goes on; the tasks will say why)."""


_cache: dict[tuple[str, str, str | None, str | None], tuple[float, AppInfo]] = {}
_cache_lock = threading.Lock()


def clear_app_cache() -> None:
    """Forget every app's cached metadata (tests that restart an app with another version)."""
    with _cache_lock:
        _cache.clear()


def _metadata_url(app: AppSpec) -> str | None:
    return app.url if app.protocol == "clams" else app.version_url


def _info_from(app: AppSpec, response: httpx.Response) -> AppInfo:
    if app.protocol == "clams":
        try:
            meta = response.json()
            identifier = str(meta["identifier"])
        except (ValueError, KeyError, TypeError):
            raise InvalidPipeline(
                f"{app.url} did not answer GET / with CLAMS app metadata (JSON with an 'identifier'); "
                "is it a CLAMS app?",
                url=app.url,
            ) from None
        version = str(meta.get("app_version") or "")
        if version and version not in identifier:
            identifier = f"{identifier}@{version}"
        params = {str(p.get("name")): p for p in meta.get("parameters") or [] if isinstance(p, dict) and p.get("name")}
        return AppInfo(app.url, str(meta.get("name") or identifier), identifier, params)
    # The app's version: one of its answer's headers, or the answer itself.
    version = response.headers.get(app.version_header, "") if app.version_header else response.text.strip()[:200]
    return AppInfo(app.url, app.url, version)


def app_info(app: AppSpec, fresh: bool = False) -> AppInfo | None:
    """The app's metadata (cached for :data:`INFO_TTL_SECONDS`); None for an app with nothing to ask.

    Raises:
        AppUnreachable: no answer (connection refused, timeout, a 5xx).
        InvalidPipeline: an answer that is not what the protocol says (not CLAMS metadata).
    """
    url = _metadata_url(app)
    if url is None:
        return None
    key = (app.protocol, url, app.version_header, None)
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None and not fresh and now - hit[0] < INFO_TTL_SECONDS:
        return hit[1]
    try:
        response = httpx.get(url, timeout=INFO_TIMEOUT_SECONDS, trust_env=False, follow_redirects=False)
    except httpx.TransportError as exc:
        raise AppUnreachable(f"{url}: {type(exc).__name__}: {exc}") from None
    if response.status_code >= 500:
        raise AppUnreachable(f"{url}: HTTP {response.status_code}")
    if response.status_code >= 400:
        raise InvalidPipeline(f"GET {url} answered HTTP {response.status_code}; check the app's URL", url=url)
    info = _info_from(app, response)
    with _cache_lock:
        _cache[key] = (now, info)
    return info


def check_clams_params(step: Step, info: AppInfo, params: Mapping[str, Any]) -> None:
    """Refuse a parameter the CLAMS app does not declare, naming the step, the app and the parameter."""
    known = set(info.parameters) | UNIVERSAL_CLAMS_PARAMS
    for pname in params:
        if pname not in known:
            declared = ", ".join(sorted(info.parameters)) or "none"
            raise InvalidPipeline(
                f"step '{step.name}': app {info.name!r} ({info.version}) at {info.url} has no parameter '{pname}' "
                f"(it declares: {declared}); fix the step's params",
                step=step.name,
                param=pname,
                app=info.version,
            )


def bind(step: Step, info: AppInfo | None) -> Step:
    """``step`` with the app's version in its code (and so in its task keys)."""
    assert step.app is not None
    if info is None or not info.version:
        return step
    app = replace(step.app, app_version=info.version)
    return replace(step, app=app, code=app_code(app, step.version))


def bind_apps(pipeline: Pipeline, params: Mapping[str, Mapping[str, Any]] | None = None) -> Pipeline:
    """``pipeline`` with each app step bound to its app's version, CLAMS parameters checked.

    ``params`` are the run's overrides per step (checked too). Steps already bound are left alone.

    Raises:
        InvalidPipeline: a CLAMS step's parameter the app does not declare, or an app that answers
            with something else than its metadata.
    """
    changed: dict[str, Step] = {}
    for step in pipeline.steps:
        if step.kind != "http" or step.app is None or step.app.app_version:
            continue
        try:
            info = app_info(step.app)
        except AppUnreachable:
            continue  # the tasks retry and fail with the URL and the reason (or find it up again)
        if info is not None and step.app.protocol == "clams":
            check_clams_params(step, info, {**step.params, **dict((params or {}).get(step.name) or {})})
        changed[step.name] = bind(step, info)
    return pipeline.with_steps(changed)


# ---------------------------------------------------------------------------------- running a task


def query_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Parameters as query-string pairs: booleans as ``true``/``false``, a list as repeated pairs."""
    out: list[tuple[str, str]] = []
    for name, value in sorted(params.items()):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, bool):
                out.append((name, "true" if v else "false"))
            elif isinstance(v, (str, int, float)):
                out.append((name, str(v)))
            else:
                out.append((name, json.dumps(v, sort_keys=True)))
    return out


def fill_secrets(step: Step, headers: Mapping[str, str], secrets: Mapping[str, str]) -> dict[str, str]:
    """Headers with ``${secret:NAME}`` replaced; a missing secret fails the task (naming it, not a value)."""

    def sub(m: Any) -> str:
        name = m.group(1)
        if name not in secrets:
            raise StepFailed(
                f"step '{step.name}': a header uses the secret {name!r}, which is not set; add {name}=... to the "
                "app_secrets setting (DATAMILL_APP_SECRETS)",
                step=step.name,
            )
        return secrets[name]

    return {k: SECRET_RE.sub(sub, v) for k, v in headers.items()}


def _single_input(step: Step, call: StepCall) -> OutputFile | Path:
    """The one file an app step sends: the item's local copy, or the upstream task's (first) output."""
    if call.item is not None and any(a.name == "item" for a in step.args):
        if call.item.path is None:
            raise ValueError(f"step '{step.name}' takes the item but the call carries no fetched item")
        return Path(call.item.path)
    up = call.upstream.get("input")
    outs = [o for task in up.outputs for o in task] if up is not None else []
    if not outs:
        raise StepFailed(f"step '{step.name}': the step it reads ({step.upstream}) wrote no output", step=step.name)
    return outs[0]


def _ext(content_type: str) -> str:
    if content_type in ("application/json", "application/ld+json"):
        return ".json"
    if content_type.startswith("text/plain"):
        return ".txt"
    return mimetypes.guess_extension(content_type) or ".bin"


async def run_app_step(
    executor: Executor,
    call: StepCall,
    on_message: OnMessage,
    step: Step,
    timeout: float | None = None,
    secrets: Mapping[str, str] | None = None,
) -> StepResult:
    """Run one task of an app step on ``executor`` (the HTTP executor); returns its one output.

    Raises ``StepFailed`` (no answer, an error answer, invalid MMIF, an MMIF error view) and
    ``TaskTimeout``, naming the step and the app's URL.
    """
    assert step.app is not None
    app = step.app
    started = time.perf_counter()
    prepare_dirs(call)
    params = {**step.params, **dict(call.params)}
    if app.protocol == "clams" and not app.app_version:
        # Unreachable when the run was planned: ask now, and check the parameters before sending.
        try:
            info = await asyncio.to_thread(app_info, app, True)
        except Exception:
            info = None  # the request below fails with the URL and the reason
        if info is not None:
            check_clams_params(step, info, params)
    source = _single_input(step, call)
    headers = fill_secrets(step, app.headers, secrets or {})
    body_path: str | None = None
    body: bytes | None = None
    if app.protocol == "clams":
        headers.setdefault("Content-Type", "application/json")
        if isinstance(source, Path):
            body = (
                await asyncio.to_thread(source_mmif, source, call.item.ref.content_type if call.item else "")
            ).encode()
        else:
            body_path = str(source.path)
    else:
        if isinstance(source, Path):
            path, ctype = source, call.item.ref.content_type if call.item else ""
        else:
            path, ctype = source.path, source.content_type
        if ctype:
            headers.setdefault("Content-Type", ctype)
        body_path = None if app.method == "GET" else str(path)
    http = HttpCall(
        url=app.url,
        method=app.method,
        params=query_params(params),
        headers=headers,
        body=body,
        body_path=body_path,
        retries=app.retries,
        backoff=app.backoff,
        retry_statuses=CLAMS_RETRY_STATUSES if app.protocol == "clams" else frozenset(range(500, 600)),
        app=app.url,
        concurrency=app.concurrency,
    )
    try:
        response: HttpResponse = await executor.run(http, on_message, timeout=timeout)
    except TaskTimeout as exc:
        raise TaskTimeout(f"step '{step.name}': {exc.message}", step=step.name, url=app.url) from None
    except StepFailed as exc:
        raise StepFailed(f"step '{step.name}': {exc.message}", step=step.name, url=app.url) from None
    if app.protocol == "clams":
        out = await asyncio.to_thread(_clams_output, step, response, call.output_dir)
    else:
        out = _http_output(step, response, call.output_dir)
    return StepResult((out,), time.perf_counter() - started)


def _quote(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    return text if len(text) <= QUOTE else text[:QUOTE] + " …"


def _http_output(step: Step, response: HttpResponse, output_dir: Path) -> OutputFile:
    assert step.app is not None
    if not 200 <= response.status < 300:
        raise StepFailed(
            f"step '{step.name}': {step.app.method} {step.app.url} answered HTTP {response.status} "
            f"(after {response.attempts} attempt(s)): {_quote(response.body) or 'no body'}",
            step=step.name,
            url=step.app.url,
            status=response.status,
        )
    ctype = response.content_type or "application/octet-stream"
    name = "return" + _ext(ctype)
    (output_dir / name).write_bytes(response.body)
    return OutputFile(name, output_dir / name, ctype, "file")


# ---------------------------------------------------------------------------------- MMIF


def source_mmif(path: Path, content_type: str) -> str:
    """A source MMIF for one item: its text inline for text, else a document pointing at ``path``.

    A media document's ``location`` is the item's local copy: the app opens it itself, so the app
    must run where it can read that path (apps on this machine can).
    """
    import mmif  # the [clams] extra; imported here so datamill stays light without it
    from mmif import Document, DocumentTypes, Mmif

    ctype = (content_type or mimetypes.guess_type(path.name)[0] or "").split(";")[0]
    doc = Document()
    doc.properties.id = "d1"
    major = ctype.split("/")[0]
    if major == "text" or ctype in ("", "application/json"):
        doc.at_type = DocumentTypes.TextDocument
        doc.properties.mime = ctype or "text/plain"
        doc.properties.text_value = path.read_text(encoding="utf-8", errors="replace")
    else:
        kinds = {"video": DocumentTypes.VideoDocument, "audio": DocumentTypes.AudioDocument}
        doc.at_type = kinds.get(major, DocumentTypes.ImageDocument)
        doc.properties.mime = ctype
        doc.properties.location = path.resolve().as_uri()
    made = Mmif(validate=False)
    made.metadata.mmif = f"http://mmif.clams.ai/{mmif.__specver__}"
    made.add_document(doc)
    text: str = made.serialize()
    return text


def _clams_output(step: Step, response: HttpResponse, output_dir: Path) -> OutputFile:
    """The app's MMIF as the task's output; an error answer, invalid MMIF or an error view fails the task."""
    from mmif import Mmif

    assert step.app is not None
    who = f"app {step.app.app_version or step.app.url}"
    parsed: Any = None
    problem = ""
    try:
        parsed = Mmif(response.body.decode("utf-8"))
    except Exception as exc:  # mmif raises jsonschema / ValueError / TypeError for bad documents
        problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if parsed is not None:
        error_view = parsed.get_view_with_error()
        if error_view is not None:
            raise StepFailed(
                f"step '{step.name}': {who} reported an error: {_error_message(error_view)}",
                step=step.name,
                url=step.app.url,
                status=response.status,
            )
    if response.status != 200:
        raise StepFailed(
            f"step '{step.name}': {who} at {step.app.url} answered HTTP {response.status}: {_quote(response.body)}",
            step=step.name,
            url=step.app.url,
            status=response.status,
        )
    if parsed is None:
        raise StepFailed(
            f"step '{step.name}': {who} at {step.app.url} answered with something that is not valid MMIF ({problem})",
            step=step.name,
            url=step.app.url,
        )
    name = "return.mmif"
    (output_dir / name).write_bytes(response.body)
    return OutputFile(name, output_dir / name, "application/json", "file")


def _error_message(view: Any) -> str:
    error = view.metadata.get("error") if hasattr(view.metadata, "get") else None
    if error is None:
        error = getattr(view.metadata, "error", None)
    message = getattr(error, "message", None) if error is not None else None
    if message is None and isinstance(error, Mapping):
        message = error.get("message")
    text = str(message or "no message").strip()
    return text if len(text) <= QUOTE else text[:QUOTE] + " …"
