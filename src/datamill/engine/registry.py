"""The pipeline registry: the pipelines users run, chosen by name.

Loading a pipeline runs its code in the process that loads it (the server, for runs and
dataflows submitted over the API). So only a site admin decides which code that is:

* installed packages register pipelines as entry points in the group ``datamill.pipelines``
  (``tabular = "datamill.demo.pipeline:tabular"`` in their ``pyproject.toml``);
* a site admin registers a reference under a name (``datamill pipelines add NAME REF``), kept in
  the ``pipelines`` table, and removes it again (``datamill pipelines rm NAME``).

:func:`choose` is the one rule applied wherever a caller names a pipeline (plan, run, dataflow
create and edit, a dataflow's trigger): a registered name resolves to its reference; a site admin
may also give a reference (``module:attr``, ``file.py:attr``, ``file.yaml``); anything else is
refused *before* anything is imported, opened or even looked up on disk, with the same message
whatever the text names, so the answer tells nothing about the server's files.
"""

from __future__ import annotations

import importlib.metadata
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, insert, select

from datamill import events
from datamill.db.models import RegisteredPipeline, User
from datamill.errors import (
    AlreadyExists,
    Conflict,
    DatamillError,
    ImageNotAllowed,
    InvalidInput,
    NotFound,
    PermissionDenied,
    UnknownPipeline,
)
from datamill.events import EventKind

if TYPE_CHECKING:
    from datamill.pipeline import Pipeline
from datamill.refs import image_of_ref
from datamill.store.access import Actor

__all__ = [
    "ENTRY_POINT_GROUP",
    "Choice",
    "Pipelines",
    "Registered",
    "check_image",
    "choose",
    "readmit",
    "shown",
]

#: The entry point group installed packages register their pipelines in.
ENTRY_POINT_GROUP = "datamill.pipelines"

#: Registered names: no ':', '/' or '.', so a name can never be mistaken for a reference.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")

#: The longest reference a site admin may give.
MAX_REF = 4096

#: How much of a caller's text an error message quotes.
MAX_SHOWN = 100

HOW_TO = "`datamill pipelines ls` lists them; a site admin can register one with `datamill pipelines add`"


def shown(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters (the caller sent it: it may be huge)."""
    cut = text if len(text) <= limit else text[:limit] + "…"
    return repr(cut)


@dataclass(frozen=True)
class Choice:
    """A pipeline admitted for a run or a dataflow: the reference to load, and the registered
    name it was chosen by (None: a reference a site admin gave)."""

    ref: str
    name: str | None = None
    #: the pipeline already loaded from ``ref`` by whoever chose it (a trigger reads its steps before
    #: submitting), so that the engine does not load it a second time
    loaded: Pipeline | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Registered:
    """One registered pipeline: ``origin`` is ``package`` (an entry point) or ``admin``."""

    name: str
    ref: str
    description: str
    origin: str
    package: str | None = None
    registered_by: str | None = None
    registered_at: float | None = None

    def to_dict(self, actor: Actor) -> dict[str, Any]:
        """As JSON for ``actor``: the reference (it may be a server path) only for site admins."""
        out: dict[str, Any] = {"name": self.name, "description": self.description, "origin": self.origin}
        if self.package:
            out["package"] = self.package
        if actor.is_admin:
            out.update(ref=self.ref, registered_by=self.registered_by, registered_at=self.registered_at)
        return out


def is_name(text: str) -> bool:
    """Whether ``text`` has the form of a registered name."""
    return NAME_RE.fullmatch(text) is not None


def _entry_points() -> dict[str, Registered]:
    # Read each time: cheap (a few ms), and a package installed while the server runs counts at once.
    out: dict[str, Registered] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if is_name(ep.name) and ep.name not in out:
            dist = getattr(ep, "dist", None)
            out[ep.name] = Registered(ep.name, ep.value, "", "package", package=dist.name if dist else None)
    return out


def _from_row(conn: Connection, row: Any) -> Registered:
    by = conn.execute(select(User.name).where(User.id == row.created_by)).scalar() if row.created_by else None
    return Registered(row.name, row.ref, row.description, "admin", registered_by=by, registered_at=row.created_at)


def lookup(conn: Connection, name: str) -> Registered | None:
    """The pipeline registered as ``name``, or None."""
    if not is_name(name):
        return None
    found = _entry_points().get(name)
    if found is not None:
        return found
    row = conn.execute(select(RegisteredPipeline).where(RegisteredPipeline.name == name)).first()
    return None if row is None else _from_row(conn, row)


def registered(conn: Connection) -> list[Registered]:
    """Every registered pipeline, by name (an installed package's name wins over an admin's)."""
    found = _entry_points()
    for row in conn.execute(select(RegisteredPipeline).order_by(RegisteredPipeline.name)):
        found.setdefault(row.name, _from_row(conn, row))
    return [found[n] for n in sorted(found)]


def choose(conn: Connection, actor: Actor, text: str, allowed_images: tuple[str, ...] | None = None) -> Choice:
    """The pipeline ``actor`` chose with ``text``: a registered name, or (site admins only) a reference.

    Nothing is imported, opened or stat-ed here. An ``image://IMAGE`` reference (a dataflow whose
    implementation is a container image) is anyone's choice when ``allowed_images`` (the setting's
    glob patterns) admits the image; with ``allowed_images`` None it is a site admin's reference.

    Raises:
        UnknownPipeline: ``text`` is not a registered name and ``actor`` is not a site admin; the
            message is the same whatever ``text`` is (a path that exists or not, a module...).
        InvalidPipeline: a site admin's reference is empty or too long.
        ImageNotAllowed: an image reference names an image outside ``allowed_images``.
    """
    if not isinstance(text, str):
        raise UnknownPipeline(f"a pipeline is chosen by its registered name (a string); {HOW_TO}")
    text = text.strip()
    image = image_of_ref(text)
    if image is not None and allowed_images is not None:
        check_image(image, allowed_images)
        return Choice(text)
    found = lookup(conn, text)
    if found is not None:
        return Choice(found.ref, found.name)
    if not actor.is_admin:
        raise UnknownPipeline(f"no registered pipeline {shown(text)}; {HOW_TO}", pipeline=text[:MAX_SHOWN])
    if not text:
        raise UnknownPipeline(f"no pipeline given: name a registered pipeline; {HOW_TO}")
    if len(text) > MAX_REF or any(ord(c) < 32 for c in text):
        raise UnknownPipeline(
            f"pipeline reference {shown(text)} is not a reference: at most {MAX_REF} characters, no control "
            "characters (module:attr, file.py:attr or file.yaml)"
        )
    return Choice(text)


def check_image(image: str, allowed_images: tuple[str, ...], where: str = "image") -> None:
    """Refuse ``image`` unless it matches one of ``allowed_images`` (glob patterns, the setting's).

    Raises:
        ImageNotAllowed: naming the image and the ``allowed_images`` setting (``where``: the field).
    """
    from datamill.executors.container import image_allowed

    if not image_allowed(image, allowed_images):
        raise ImageNotAllowed(
            f"{where}: {shown(image)} is not allowed on this server; the allowed_images setting allows "
            f"{', '.join(allowed_images) or 'no image'}. Use an allowed image or ask a site admin to add it "
            "to allowed_images",
            field=where,
            image=image[:MAX_SHOWN],
            setting="allowed_images",
        )


def readmit(
    conn: Connection, actor: Actor, ref: str, what: str, allowed_images: tuple[str, ...] | None = None
) -> Choice:
    """A reference recorded earlier (``what``: e.g. "run 7"), admitted again for ``actor``.

    A site admin may use any; anyone else only one that is still the reference of a registered
    pipeline, so removing a registration also stops re-runs of what it ran, or an image that
    ``allowed_images`` still admits.
    """
    if actor.is_admin:
        return Choice(ref)
    image = image_of_ref(ref)
    if image is not None and allowed_images is not None:
        check_image(image, allowed_images)
        return Choice(ref)
    for r in registered(conn):
        if r.ref == ref:
            return Choice(ref, r.name)
    raise UnknownPipeline(
        f"{what} used a pipeline that is no longer registered; a site admin can register it again "
        f"(`datamill pipelines add`) or run it; {HOW_TO}"
    )


class Pipelines:
    """List, register and remove pipelines; registering and removing are for site admins and write events."""

    def __init__(self, db: Any, allowed_images: tuple[str, ...] | None = None) -> None:
        self.db = db
        #: glob patterns of the container images a registered pipeline may name (None: no check)
        self.allowed_images = allowed_images

    def list(self, actor: Actor, details: bool = True) -> list[dict[str, Any]]:
        """Every registered pipeline as ``actor`` may see it; with ``details``, its steps too.

        Loading a registered pipeline runs only code a site admin registered. One that does not
        load is listed with an ``error`` (its reason for site admins; others are told to ask one).
        """
        with self.db.read() as conn:
            found = registered(conn)
        out = []
        for r in found:
            entry = r.to_dict(actor)
            if details:
                entry.update(_details(r, actor))
            out.append(entry)
        return out

    def add(self, actor: Actor, name: str, ref: str, description: str = "") -> dict[str, Any]:
        """Register ``ref`` as ``name`` after checking that it loads; returns the new entry."""
        from datamill.pipeline import load_pipeline

        _require_admin(actor, "register")
        name = name.strip() if isinstance(name, str) else ""
        if not is_name(name):
            raise InvalidInput(
                f"pipeline name {shown(name)} is not valid: 1-100 letters, digits, '_' or '-', starting with a "
                "letter or digit",
                field="name",
            )
        ref = ref.strip() if isinstance(ref, str) else ""
        with self.db.read() as conn:
            self._check_free(conn, name)
            choice = choose(conn, actor, ref)
        if choice.name is not None:
            raise InvalidInput(
                f"{shown(ref)} is a registered name; give a reference (module:attr, file.py:attr or file.yaml)",
                field="ref",
            )
        pipeline = load_pipeline(choice.ref)  # a site admin's reference: refused here if it does not load
        from datamill.engine.containers import check_images

        check_images(pipeline, self.allowed_images)
        with self.db.write() as conn:
            self._check_free(conn, name)
            now = time.time()
            conn.execute(
                insert(RegisteredPipeline).values(
                    name=name,
                    ref=choice.ref,
                    description=description or pipeline.description,
                    created_by=actor.id,
                    created_at=now,
                )
            )
            events.append(
                conn, EventKind.PIPELINE_REGISTERED, actor_id=actor.id, data={"name": name, "ref": choice.ref}
            )
            row = conn.execute(select(RegisteredPipeline).where(RegisteredPipeline.name == name)).one()
            return _from_row(conn, row).to_dict(actor)

    def remove(self, actor: Actor, name: str) -> None:
        """Remove a pipeline a site admin registered (an installed package's stays while it is installed)."""
        _require_admin(actor, "remove")
        with self.db.write() as conn:
            ep = _entry_points().get(name)
            if ep is not None:
                raise Conflict(
                    f"pipeline {shown(name)} comes from the installed package {ep.package or '?'}; "
                    "uninstall the package to remove it",
                    name=name,
                )
            row = conn.execute(select(RegisteredPipeline).where(RegisteredPipeline.name == name)).first()
            if row is None:
                raise NotFound(f"no registered pipeline {shown(name)}; {HOW_TO}", name=name[:MAX_SHOWN])
            conn.execute(delete(RegisteredPipeline).where(RegisteredPipeline.id == row.id))
            events.append(conn, EventKind.PIPELINE_REMOVED, actor_id=actor.id, data={"name": name, "ref": row.ref})

    def _check_free(self, conn: Connection, name: str) -> None:
        if lookup(conn, name) is not None:
            raise AlreadyExists(
                f"a pipeline named {shown(name)} is already registered; remove it first (`datamill pipelines rm`) or "
                "choose another name",
                name=name,
            )


def _require_admin(actor: Actor, verb: str) -> None:
    if not actor.is_admin:
        raise PermissionDenied(f"only a site admin may {verb} pipelines; ask one to run `datamill pipelines`")


def _details(r: Registered, actor: Actor) -> dict[str, Any]:
    from datamill.pipeline import load_pipeline

    try:
        p = load_pipeline(r.ref)
    except DatamillError as e:
        return {"error": e.message if actor.is_admin else "it does not load; ask a site admin to fix it"}
    return {"description": r.description or p.description, "steps": list(p.names)}
