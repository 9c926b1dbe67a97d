"""The world every security test starts from: a private source, a dataflow, a shared destination.

``alice`` owns the folder :data:`SRC` (private: three items with a secret metadata value) and
:data:`DEST`, and a dataflow :data:`FLOW` between them with a secret webhook URL. Two runs of it
are recorded and executed: one that succeeded (publishing ``total.json`` and a file per item into
:data:`DEST`) and one that failed (a task whose error names its item, and an aggregate task whose
error names the failed input). Roles (:data:`ROLES`), each with a token:

* ``anonymous`` (no token), ``revoked`` and ``expired`` (tokens of ``src_reader``);
* ``other``: a signed-in user with no grant;
* ``src_reader``, ``src_writer``, ``src_admin``: read, write and admin on :data:`SRC` only;
* ``dest_reader``: read on :data:`DEST` only (the reader of a dataflow's destination);
* ``owner``: alice; ``site_admin``: a site admin.

What must never reach a role is in :meth:`World.secrets_for`: everything about :data:`SRC`
(names, paths, digests, metadata) for roles that may not read it, the name of :data:`DEST` for
roles that may not read it, the webhook URL for all but the owner and site admins, and the
home's path on the server for everyone but site admins.

Roles and the folders they read are data: add a role by adding it to :data:`ROLES`,
:data:`GRANTS` (and :data:`READS`), then give it an expected status per operation in the matrix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import quote

from sqlalchemy import update

from datamill.api import ServerHandle
from datamill.client.local import LocalClient
from datamill.db.models import Token
from datamill.home import Home

from .leak_pipelines import REF

#: the name under which a site admin registers :data:`REF`
PIPELINE = "leaky"

SRC = "Vault Kestrel"
DEST = "Harbor Ledger"
FLOW = "kestrel-flow"
BATCH = "kestrel-batch"
ITEMS = {"kestrel-alpha.csv": b"a,b\n1,2\n", "kestrel-beta.csv": b"x\n42\n"}
DOOMED = "kestrel-doomed.csv"
SECRET_META = "nightjar-77"
WEBHOOK = "https://hooks.example.org/services/hook-secret-5x"

ROLES = [
    "anonymous",
    "revoked",
    "expired",
    "other",
    "src_reader",
    "src_writer",
    "src_admin",
    "dest_reader",
    "owner",
    "site_admin",
]
#: Roles without a valid token.
UNAUTHENTICATED = {"anonymous", "revoked", "expired"}
#: The grants each signed-in role gets: folder -> level.
GRANTS: dict[str, dict[str, str]] = {
    "src_reader": {SRC: "read"},
    "src_writer": {SRC: "write"},
    "src_admin": {SRC: "admin"},
    "dest_reader": {DEST: "read"},
}
#: Which of SRC and DEST each role may read.
READS: dict[str, set[str]] = {
    "anonymous": set(),
    "revoked": set(),
    "expired": set(),
    "other": set(),
    "src_reader": {SRC},
    "src_writer": {SRC},
    "src_admin": {SRC},
    "dest_reader": {DEST},
    "owner": {SRC, DEST},
    "site_admin": {SRC, DEST},
}
#: Who may see a dataflow's secrets (its webhook URLs): who may change it.
SEES_FLOW_SECRETS = {"owner", "site_admin"}


def q(path: str) -> str:
    """A path as it goes into a URL."""
    return quote(path, safe="/")


@dataclass
class World:
    """What the tests need to know about the world they run in."""

    home: Home
    server: ServerHandle
    tokens: dict[str, str | None]
    run_ok: int
    run_failed: int
    #: task ids by planned id, per run
    tasks: dict[int, dict[str, int]]
    src_digests: list[str] = field(default_factory=list)
    #: the run of the batch :data:`BATCH` (SRC into DEST; its DOOMED item failed)
    run_batch: int = 0

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self.server.url

    def headers(self, role: str) -> dict[str, str]:
        """The Authorization header of a role (none for the anonymous caller)."""
        token = self.tokens[role]
        return {"Authorization": f"Bearer {token}"} if token else {}

    def task(self, run: int, planned_prefix: str) -> int:
        """The id of the task of ``run`` whose planned id starts with ``planned_prefix``."""
        return next(tid for pid, tid in self.tasks[run].items() if pid.startswith(planned_prefix))

    def ids(self) -> dict[str, object]:
        """Values the operation templates of the matrix are filled with."""
        return {
            "src": q(SRC),
            "dest": q(DEST),
            "item": q(next(iter(ITEMS))),
            "item_path": f"{SRC}/{next(iter(ITEMS))}",  # for a query parameter, which httpx quotes itself
            "run_ok": self.run_ok,
            "run_failed": self.run_failed,
            "task_item": self.task(self.run_ok, "measure["),
            "task_failed": self.task(self.run_failed, f"measure[{SRC}/{DOOMED}"),
            "task_total": self.task(self.run_failed, "total"),
            "flow": FLOW,
            "batch": BATCH,
        }

    def secrets_for(self, role: str) -> list[str]:
        """Strings that must appear in no answer and no event delivered to ``role``."""
        reads = READS[role]
        out: list[str] = []
        if SRC not in reads:
            out += [SRC, q(SRC), *ITEMS, DOOMED, SECRET_META, *self.src_digests]
        if DEST not in reads:
            out += [DEST, q(DEST)]
        if role not in SEES_FLOW_SECRETS:
            out += ["hook-secret-5x"]
        if role != "site_admin":
            # the server's paths: its home, and the file of the registered pipeline that runs
            out += [str(self.home.path), REF.rsplit(":", 1)[0]]
        return out


def build(home: Home, server: ServerHandle) -> World:
    """Make the world on ``home`` (served by ``server``)."""
    admin = LocalClient(home)
    for name in ["alice", "other", *GRANTS]:
        admin.create_user(name)
    admin.create_user("site_admin", admin=True)
    alice = admin.as_user("alice")
    alice.create_folder(SRC)
    alice.create_folder(DEST)
    digests = [alice.put(SRC, n, data, metadata={"codename": SECRET_META}).digest for n, data in ITEMS.items()]
    for role, grants in GRANTS.items():
        for folder, level in grants.items():
            alice.share(folder, role, level)
    admin.add_pipeline(PIPELINE, REF)  # non-admins choose registered pipelines by name
    create_flow(alice)
    run_ok = alice.run_dataflow(FLOW)
    assert run_ok is not None
    assert alice.execute(run_ok, "inline")["status"] == "succeeded"
    digests.append(alice.put(SRC, DOOMED, b"fail, please\n", metadata={"codename": SECRET_META}).digest)
    run_failed = alice.run_dataflow(FLOW)
    assert run_failed is not None
    assert alice.execute(run_failed, "inline")["status"] == "failed"
    tasks = {rid: {t["planned_id"]: t["id"] for t in alice.tasks(rid)} for rid in (run_ok, run_failed)}
    # A batch over SRC into DEST, run once (its DOOMED item fails: there is something to retry).
    alice.create_batch(BATCH, PIPELINE, DEST, folders=[SRC])
    run_batch = alice.start_batch(BATCH)
    alice.execute(run_batch, "inline")

    tokens: dict[str, str | None] = {"anonymous": None}
    for role in ["other", *GRANTS, "site_admin"]:
        tokens[role] = admin.create_token(role).token
    tokens["owner"] = admin.create_token("alice").token
    revoked = admin.create_token("src_reader")
    admin.revoke_token(revoked.id)
    tokens["revoked"] = revoked.token
    expired = admin.create_token("src_reader", ttl=3600)
    with home.db.write() as conn:  # expired an hour ago, without waiting for it
        conn.execute(update(Token).where(Token.id == expired.id).values(expires_at=time.time() - 3600))
    tokens["expired"] = expired.token
    return World(home, server, tokens, run_ok, run_failed, tasks, digests, run_batch)


def create_flow(owner: LocalClient) -> None:
    """The dataflow SRC -> DEST, owned by ``owner``, with a secret webhook; manual trigger."""
    owner.create_dataflow(FLOW, SRC, DEST, PIPELINE, trigger="manual", webhooks=[WEBHOOK])
