"""A home with ``Raw`` and ``Out`` folders, dataflows over them, and a clock the tests move by hand.

Triggers are polled directly with clock values (``world.poll(t)``) and runs are driven to their
end by an inline scheduler in this process (``world.drive()``): nothing sleeps.
"""

from __future__ import annotations

from typing import Any

from datamill.dataflows.dataflow import DataflowInfo, Dataflows
from datamill.dataflows.triggers import Triggers
from datamill.db.models import Dataflow
from datamill.home import Home
from datamill.store import users
from datamill.store.access import Actor
from tests.helpers import DEST, SOURCE, Clock, HomeWorld

from .flow_pipelines import ref

__all__ = ["DEST", "SOURCE", "FlowWorld"]


class FlowWorld(HomeWorld):
    """Folders ``Raw`` and ``Out``, the dataflow API, a triggers object on a manual clock, and checks."""

    def __init__(self, home: Home) -> None:
        super().__init__(home)
        self.flows = Dataflows(home.db)
        self.clock = Clock()
        self.triggers = Triggers(home, self.engine, clock=self.clock)

    # ------------------------------------------------------------------ setup

    def user(self, name: str) -> Actor:
        with self.home.db.write() as conn:
            return users.create_user(conn, name)

    def create(self, name: str = "flow", actor: Actor | None = None, **config: Any) -> DataflowInfo:
        """A dataflow ``Raw`` -> ``Out`` running the echo pipeline, with ``config`` on top."""
        cfg: dict[str, Any] = {"source": SOURCE, "destination": DEST, "pipeline": ref("echo_pipeline")}
        cfg.update(config)
        return self.flows.create(actor or self.admin, name, cfg)

    def start(self, name: str = "flow") -> DataflowInfo:
        return self.flows.set_state(self.admin, name, "running")

    def stop(self, name: str = "flow") -> DataflowInfo:
        return self.flows.set_state(self.admin, name, "stopped")

    # ------------------------------------------------------------------ running

    def poll(self, at: float | None = None) -> list[int]:
        """One trigger pass at clock time ``at`` (the clock moves there); the runs it recorded."""
        if at is not None:
            self.clock.set(at)
        return self.triggers.poll()

    def run(self, run_id: int) -> dict[str, Any]:
        return self.engine.get_run(self.admin, run_id)

    def run_inputs(self, run_id: int) -> list[str]:
        """Names of a run's input items, in order."""
        return [i["name"] for i in self.run(run_id)["inputs"]]

    def flow_row(self, name: str = "flow") -> Any:
        from sqlalchemy import select

        with self.home.db.read() as conn:
            return conn.execute(select(Dataflow).where(Dataflow.name == name)).one()
