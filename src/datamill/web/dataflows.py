"""The dataflow pages: the list, one dataflow, its form (create and edit), its history, its actions.

* ``GET /dataflows``: every dataflow the user may see, with its state.
* ``GET|POST /dataflows/_new`` and ``/dataflows/{name}/edit``: the form with every field. Saving
  goes through the dataflows layer's own validation; its errors (an invalid cron expression, a
  destination inside the source, a missing pipeline, ...) come back next to the field they name,
  and nothing is saved.
* ``GET /dataflows/_picker`` (the folder picker's tree, a level at a time) and
  ``GET /dataflows/_cron`` (the next fire times of a cron trigger): fragments htmx loads into the form.
* ``GET /dataflows/{name}``: description (Markdown, raw HTML disabled), configuration, next fire
  times, recent runs with counts, and Start / Stop / Run now / Delete.
* ``GET /dataflows/{name}/history``: every configuration version and a diff between two of them.

Paths starting with ``_`` cannot be dataflow names (a name starts with a letter or digit).
"""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from markupsafe import Markup

from datamill.api.deps import blocking
from datamill.dataflows.dataflow import CONFIG_KEYS, KINDS, Trigger
from datamill.dataflows.records import DataflowInfo, DataflowVersionInfo
from datamill.errors import AlreadyExists, DatamillError, InvalidPipeline, NotFound, PermissionDenied
from datamill.service import Service
from datamill.web.render import redirect, render
from datamill.web.runs import RunRow, duration_text, run_row
from datamill.web.session import SessionDep

router = APIRouter(include_in_schema=False)

#: The form's fields, in order.
FIELDS = (
    "name",
    "description",
    "kind",
    "source",
    "destination",
    "recursive",
    "topic",
    "pipeline",
    "params",
    "trigger",
    "cron",
    "webhooks",
)
TRIGGERS = (
    ("new-items", "When new items arrive"),
    ("manual", "Only when started by hand (Run now)"),
    ("cron", "On a schedule (cron)"),
)
#: How many fire times the cron preview shows.
PREVIEW_FIRES = 5


# ------------------------------------------------------------------------ rendering helpers


@lru_cache(maxsize=1)
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    # Raw HTML off: a description is text; markdown-it also refuses javascript: and data: links.
    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def markdown(text: str) -> Markup:
    """A description's Markdown as safe HTML (raw HTML in it is shown as text)."""
    return Markup(_markdown().render(text or ""))  # markdown-it escapes text; raw HTML is off


def canonical(config: Mapping[str, Any]) -> str:
    """A configuration as canonical JSON (sorted keys, indented), the form the diff compares."""
    return json.dumps(dict(config), indent=2, sort_keys=True, ensure_ascii=False, default=str)


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], old_name: str, new_name: str) -> list[tuple[str, str]]:
    """A unified diff of two configurations, as ``(kind, line)``: kind is ``add``, ``del``, ``hunk`` or ``same``."""
    lines = difflib.unified_diff(
        canonical(old).splitlines(), canonical(new).splitlines(), old_name, new_name, lineterm="", n=3
    )
    out = []
    for line in lines:
        if line.startswith(("+++", "---")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "same"
        out.append((kind, line))
    return out


# ------------------------------------------------------------------------ the form


@dataclass
class FlowForm:
    """The form's values (as text) and its errors by field (``""``: about the whole form)."""

    values: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)
    editing: bool = False


def form_values(info: DataflowInfo | None) -> dict[str, str]:
    """The form's text values for an existing dataflow (empty ones for a new one)."""
    if info is None:
        return {f: "" for f in FIELDS} | {"kind": "workflow", "trigger": "new-items", "params": "{}"}
    trigger, cron = ("cron", info.trigger[5:]) if info.trigger.startswith("cron:") else (info.trigger, "")
    return {
        "name": info.name,
        "description": info.description,
        "kind": info.kind,
        "source": info.source,
        "destination": info.destination,
        "recursive": "on" if info.recursive else "",
        "topic": info.topic or "",
        "pipeline": info.pipeline,
        "params": json.dumps(info.params, indent=2, sort_keys=True),
        "trigger": trigger,
        "cron": cron,
        "webhooks": "\n".join(info.webhooks),
    }


def parse_form(values: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The configuration the form's values ask for, and errors for the fields that cannot be read."""
    errors: dict[str, str] = {}
    params: Any = {}
    text = values.get("params", "").strip()
    if text:
        try:
            params = json.loads(text)
        except json.JSONDecodeError as exc:
            errors["params"] = (
                f"the parameters are not valid JSON ({exc.msg} at line {exc.lineno}); "
                'write an object such as {"step.param": 1}'
            )
        else:
            if not isinstance(params, dict):
                errors["params"] = 'the parameters must be a JSON object such as {"step.param": 1}'
    trigger = values.get("trigger", "new-items")
    if trigger == "cron":
        cron = values.get("cron", "").strip()
        if not cron:
            errors["cron"] = "enter a cron expression (five fields, e.g. */5 * * * *) or choose another trigger"
        trigger = f"cron:{cron}"
    config = {
        "description": values.get("description", ""),
        "kind": values.get("kind") or "workflow",
        "source": values.get("source", "").strip(),
        "destination": values.get("destination", "").strip(),
        "recursive": values.get("recursive") == "on",  # a ticked checkbox sends "on", an unticked one nothing
        "topic": values.get("topic", "").strip() or None,
        "pipeline": values.get("pipeline", "").strip(),
        "params": params if isinstance(params, dict) else {},
        "trigger": trigger,
        "webhooks": [w.strip() for w in values.get("webhooks", "").splitlines() if w.strip()],
    }
    return config, errors


#: Fields the dataflows layer names in its messages (``"trigger: ..."``) -> the form's fields.
_ERROR_FIELDS = {key: key for key in CONFIG_KEYS} | {"name": "name", "dest": "destination"}


def field_error(exc: DatamillError, values: Mapping[str, str]) -> tuple[str, str]:
    """The form field an error is about (``""``: none) and its message, worded for that place."""
    message = exc.message
    named = str(exc.detail.get("field") or "")
    head, sep, rest = message.partition(": ")
    if not named and sep and head in _ERROR_FIELDS:
        named = head
    if sep and head == named:
        message = rest
    if not named and isinstance(exc, InvalidPipeline):
        named = "pipeline"
    if not named and isinstance(exc, AlreadyExists):
        named = "name"
    target = _ERROR_FIELDS.get(named, "")
    if target == "trigger" and values.get("trigger") == "cron":
        target = "cron"
    if target == "batch_window_ms":
        target = ""
    return target, message[:1:].upper() + message[1:]


def form_error(exc: DatamillError, values: Mapping[str, str], errors: dict[str, str]) -> None:
    """A mistake in the form goes into ``errors`` by its field (:func:`field_error`); a missing
    object or a server fault is raised again, for its own page."""
    if isinstance(exc, NotFound) or exc.status >= 500:
        raise exc
    key, message = field_error(exc, values)
    errors[key] = message


def _changes(config: dict[str, Any], shown: dict[str, str], values: Mapping[str, str]) -> dict[str, Any]:
    """Only the fields the user changed.

    A value shown masked (a pipeline reference, a webhook URL) comes back as it was shown: unchanged.
    """
    out: dict[str, Any] = {}
    for key in ("source", "destination", "recursive", "pipeline", "webhooks", "description", "kind", "topic", "params"):
        if values.get(key, "").strip() != shown.get(key, "").strip():
            out[key] = config[key]
    if (values.get("trigger"), values.get("cron", "").strip()) != (shown.get("trigger"), shown.get("cron", "").strip()):
        out["trigger"] = config["trigger"]
    return out


@dataclass
class CronPreview:
    """What the form shows under the cron field: the next fire times, or what is wrong."""

    trigger: str
    fires: list[float] = field(default_factory=list)
    error: str | None = None


def cron_preview_of(trigger: str, cron: str) -> CronPreview:
    """The preview of ``cron`` for a form whose trigger is ``trigger`` (fire times only for ``cron``)."""
    preview = CronPreview(trigger)
    if trigger == "cron" and cron.strip():
        try:
            preview.fires = Trigger.parse(f"cron:{cron}").next_fire(time.time(), PREVIEW_FIRES)
        except DatamillError as exc:
            preview.error = field_error(exc, {"trigger": "cron"})[1]
    return preview


def _form_page(request: Request, session: Any, form: FlowForm, service: Service, status: int = 200) -> Response:
    # Names only: listing with details would load (import) every registered pipeline.
    names = [str(p["name"]) for p in service.registry.list(service.actor, details=False)]
    # A form sent back with a cron trigger shows its preview at once: the page does not grow when
    # the preview's request answers, which moved the Save button under a pointer about to click it.
    values = form.values
    preview = cron_preview_of(values.get("trigger", ""), values.get("cron", "")) if values.get("cron") else None
    return render(
        request,
        "dataflows/form.html",
        session,
        status=status,
        form=form,
        kinds=KINDS,
        triggers=TRIGGERS,
        pipelines=names,
        preview=preview,
    )


async def _form_values(request: Request) -> dict[str, str]:
    form = await request.form()
    return {f: str(form.get(f) or "") for f in FIELDS}


# ------------------------------------------------------------------------ list and form pages


@router.get("/dataflows")
async def list_page(request: Request, session: SessionDep) -> Response:
    """Every dataflow the user may see."""
    flows = await blocking(session.service(request.app.state.home).dataflows)
    return render(request, "dataflows/list.html", session, flows=flows)


@router.get("/dataflows/_new")
async def new_page(request: Request, session: SessionDep) -> Response:
    """An empty form."""
    service = session.service(request.app.state.home)
    return await blocking(_form_page, request, session, FlowForm(form_values(None)), service)


@router.post("/dataflows/_new")
async def create(request: Request, session: SessionDep) -> Response:
    """Save a new dataflow (stopped); on bad input, the form again with the errors by its fields."""
    values = await _form_values(request)
    service = session.service(request.app.state.home)
    config, errors = parse_form(values)
    form = FlowForm(values, errors)
    if not values["name"].strip():
        errors["name"] = "give the dataflow a name (letters, digits, '-', '_' or '.')"
    if not errors:
        try:
            info = await blocking(service.flows.create, service.actor, values["name"].strip(), config)
        except DatamillError as exc:
            form_error(exc, values, errors)
        else:
            return redirect(
                f"/dataflows/{info.name}", f"Dataflow {info.name} saved (stopped). Start it to let its trigger act."
            )
    return await blocking(_form_page, request, session, form, service, 400)


@router.get("/dataflows/_picker")
async def picker(
    request: Request, session: SessionDep, field_id: str = Query("source", alias="field"), path: str = ""
) -> Response:
    """One level of the folder picker's tree: the subfolders of ``path`` the user may see."""
    if field_id not in ("source", "destination"):
        field_id = "source"
    folders = await blocking(session.service(request.app.state.home).list_folders, path)
    return render(request, "dataflows/picker.html", session, folders=folders, field=field_id, parent=path)


@router.get("/dataflows/_cron")
async def cron_preview(request: Request, session: SessionDep, trigger: str = "", cron: str = "") -> Response:
    """The next fire times of a cron trigger, or what is wrong with the expression."""
    return render(request, "dataflows/cron.html", session, preview=cron_preview_of(trigger, cron))


# ------------------------------------------------------------------------ one dataflow


@dataclass(frozen=True)
class FlowView:
    """A dataflow's page: the dataflow and its recent runs' rows."""

    flow: DataflowInfo
    runs: list[RunRow]


def flow_view(service: Service, name: str) -> FlowView:
    """A dataflow with its recent runs and their counts."""
    info = service.dataflow(name, recent=10)
    flows = {info.id: info.name}
    rows = []
    for r in info.recent_runs or []:
        try:
            rows.append(run_row(service, r.id, flows))
        except DatamillError:
            continue
    return FlowView(info, rows)


@router.get("/dataflows/{name}")
async def flow_page(request: Request, name: str, session: SessionDep) -> Response:
    """One dataflow."""
    view = await blocking(flow_view, session.service(request.app.state.home), name)
    return render(request, "dataflows/flow.html", session, v=view, markdown=markdown, duration=duration_text)


@router.get("/dataflows/{name}/edit")
async def edit_page(request: Request, name: str, session: SessionDep) -> Response:
    """The form filled with the dataflow's configuration."""
    service = session.service(request.app.state.home)
    info = _editable(await blocking(service.dataflow, name, 0))
    return await blocking(_form_page, request, session, FlowForm(form_values(info), editing=True), service)


def _editable(info: DataflowInfo) -> DataflowInfo:
    """``info`` if the caller may change it; a 403 page saying who may, before any form is shown or read."""
    if not info.may_change:
        raise PermissionDenied(
            f"only the owner of dataflow {info.name!r} or an admin of its destination may change it; ask its owner"
        )
    return info


@router.post("/dataflows/{name}/edit")
async def edit(request: Request, name: str, session: SessionDep) -> Response:
    """Save the changed fields as a new configuration version; on bad input, the form with the errors."""
    values = await _form_values(request)
    service = session.service(request.app.state.home)
    info = _editable(await blocking(service.dataflow, name, 0))
    values["name"] = info.name
    config, errors = parse_form(values)
    form = FlowForm(values, errors, editing=True)
    if not errors:
        changes = _changes(config, form_values(info), values)
        try:
            await blocking(service.flows.edit, service.actor, info.name, changes)
        except DatamillError as exc:
            form_error(exc, values, errors)
        else:
            return redirect(f"/dataflows/{info.name}", f"Dataflow {info.name} saved.")
    return await blocking(_form_page, request, session, form, service, 400)


def _act(service: Service, name: str, action: str) -> str:
    if action == "start":
        service.start_dataflow(name)
        return f"Dataflow {name} is running: its trigger acts now."
    if action == "stop":
        service.stop_dataflow(name)
        return f"Dataflow {name} is stopped."
    if action == "run":
        run_id = service.run_dataflow(name)
        return f"Run {run_id} started." if run_id else "Nothing to run: the source has no items."
    service.delete_dataflow(name)
    return f"Dataflow {name} deleted; its runs and results stay."


@router.post("/dataflows/{name}/{action}")
async def act(request: Request, name: str, action: str, session: SessionDep) -> Response:
    """Start, Stop, Run now or Delete; the outcome (or why it was refused) shows on the next page."""
    if action not in ("start", "stop", "run", "delete"):
        raise NotFound("no such page")
    service = session.service(request.app.state.home)
    try:
        message = await blocking(_act, service, name, action)
    except DatamillError as exc:
        if isinstance(exc, NotFound):
            raise
        return redirect(f"/dataflows/{name}", exc.message, "error")
    return redirect("/dataflows" if action == "delete" else f"/dataflows/{name}", message)


@router.get("/dataflows/{name}/history")
async def history(request: Request, name: str, session: SessionDep, a: int = 0, b: int = 0) -> Response:
    """Every configuration version, and the diff between versions ``a`` and ``b`` (default: the last two)."""
    versions: list[DataflowVersionInfo] = await blocking(session.service(request.app.state.home).dataflow_history, name)
    numbers = [v.version for v in versions]
    new = b if b in numbers else numbers[-1]
    old = a if a in numbers else (numbers[-2] if len(numbers) > 1 else numbers[0])
    by_number = {v.version: v for v in versions}
    diff = config_diff(by_number[old].config, by_number[new].config, f"version {old}", f"version {new}")
    return render(request, "dataflows/history.html", session, name=name, versions=versions, old=old, new=new, diff=diff)
