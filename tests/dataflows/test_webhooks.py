"""Webhooks: a real HTTP receiver on loopback gets one POST per finished run, retried with backoff.

The notifier's clock is moved by hand, so backoff is tested without waiting for it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from datamill.dataflows.notifications import MAX_ATTEMPTS, Notifier
from tests.helpers import T0, Clock, free_port, open_home

from .flow_world import FlowWorld

BASE = "http://datamill.test:8765"


class Receiver:
    """An HTTP server on 127.0.0.1 that records POSTs; the first ``fail_first`` get a 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.posts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    status = 500 if len(receiver.posts) < receiver.fail_first else 200
                    receiver.posts.append(
                        {
                            "path": self.path,
                            "status": status,
                            "json": json.loads(body),
                            "content_type": self.headers.get("Content-Type"),
                            "user_agent": self.headers.get("User-Agent"),
                        }
                    )
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    @property
    def delivered(self) -> list[dict[str, Any]]:
        with self._lock:
            return [p for p in self.posts if p["status"] == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def finished_run(w: FlowWorld, hooks: list[str], data: str = "a", name: str = "a.txt") -> int:
    """A dataflow with ``hooks`` that has run once over ``name``; returns the run."""
    w.create(webhooks=hooks)
    w.start()
    w.poll(T0)
    w.put(name, data)
    (run_id,) = w.poll(T0 + 1)
    w.drive()
    return run_id


def test_a_finished_run_is_posted_with_its_dataflow_status_counts_and_links(
    db_world: FlowWorld, receiver: Receiver
) -> None:
    w = db_world
    run_id = finished_run(w, [receiver.url])
    notifier = Notifier(w.home, clock=w.clock, base_url=BASE)
    assert notifier.queue() == 1
    assert receiver.posts == []  # recorded, not sent yet
    assert notifier.deliver_due() == 1
    (post,) = receiver.posts
    assert post["path"] == "/hook"
    assert post["content_type"] == "application/json"
    assert post["user_agent"] == "datamill-webhook"
    body = post["json"]
    assert body["event"] == "run.finished"
    assert (body["dataflow"], body["run"], body["status"]) == ("flow", run_id, "succeeded")
    assert body["counts"] == {"succeeded": 1}
    assert body["reason"] == "dataflow flow: 1 new or updated item(s)"
    assert body["finished_at"] >= body["requested_at"] > 0
    assert body["links"] == {"run": f"{BASE}/api/v1/runs/{run_id}", "dataflow": f"{BASE}/api/v1/dataflows/flow"}
    # Delivered once: nothing more to queue or send.
    assert notifier.queue() == 0
    w.clock.set(T0 + 3600)
    assert notifier.deliver_due() == 0
    assert len(receiver.posts) == 1
    (d,) = notifier.deliveries(w.flow_row().id)
    assert (d["status"], d["attempts"], d["run"], d["url"]) == ("delivered", 1, run_id, receiver.url)


def test_a_failed_run_is_posted_as_failed(world: FlowWorld, receiver: Receiver) -> None:
    w = world
    run_id = finished_run(w, [receiver.url], data="fail please", name="bad.txt")
    assert w.run(run_id)["status"] == "failed"
    notifier = Notifier(w.home, clock=w.clock, base_url=BASE)
    notifier.queue()
    assert notifier.deliver_due() == 1
    body = receiver.posts[0]["json"]
    assert (body["event"], body["status"], body["run"]) == ("run.failed", "failed", run_id)
    assert body["counts"] == {"failed": 1}


def test_every_url_of_a_dataflow_gets_the_notification(world: FlowWorld, receiver: Receiver) -> None:
    other = Receiver()
    try:
        finished_run(world, [receiver.url, other.url])
        notifier = Notifier(world.home, clock=world.clock)
        assert notifier.queue() == 2
        assert notifier.deliver_due() == 2
        assert len(receiver.delivered) == len(other.delivered) == 1
    finally:
        other.close()


def test_a_failing_receiver_is_retried_with_backoff_and_gets_it_once(world: FlowWorld) -> None:
    w = world
    receiver = Receiver(fail_first=2)
    try:
        finished_run(w, [receiver.url])
        clock = Clock(T0 + 100)
        notifier = Notifier(w.home, clock=clock)
        notifier.queue()
        assert notifier.deliver_due() == 0  # HTTP 500
        (d,) = notifier.deliveries()
        assert (d["status"], d["attempts"], d["last_error"]) == ("pending", 1, "HTTP 500")
        assert notifier.next_due() == pytest.approx(1.0)  # first backoff: 1 s
        clock.set(T0 + 100.5)
        assert notifier.deliver_due() == 0
        assert len(receiver.posts) == 1  # not due yet: not tried
        clock.set(T0 + 101)
        assert notifier.deliver_due() == 0  # second failure
        assert notifier.next_due() == pytest.approx(2.0)  # doubled
        clock.set(T0 + 102.9)
        assert notifier.deliver_due() == 0
        assert len(receiver.posts) == 2
        clock.set(T0 + 103)
        assert notifier.deliver_due() == 1
        assert [p["status"] for p in receiver.posts] == [500, 500, 200]
        (d,) = notifier.deliveries()
        assert (d["status"], d["attempts"]) == ("delivered", 3)
        assert notifier.next_due() is None
        clock.set(T0 + 10_000)
        assert notifier.deliver_due() == 0
        assert len(receiver.delivered) == 1
    finally:
        receiver.close()


def test_an_unreachable_receiver_is_given_up_after_the_last_attempt(world: FlowWorld) -> None:
    w = world
    finished_run(w, [f"http://127.0.0.1:{free_port()}/nobody-listens"])
    clock = Clock(T0)
    notifier = Notifier(w.home, clock=clock, timeout=2.0)
    notifier.queue()
    for _ in range(MAX_ATTEMPTS):
        assert notifier.deliver_due() == 0
        due = notifier.next_due()
        if due is None:
            break
        clock.set(clock.now + due)
    (d,) = notifier.deliveries()
    assert (d["status"], d["attempts"]) == ("failed", MAX_ATTEMPTS)
    assert "Connect" in d["last_error"]


def test_a_recorded_delivery_survives_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    home = open_home(tmp_path / "home")
    w = FlowWorld(home)
    finished_run(w, [receiver.url])
    assert Notifier(home, clock=w.clock).queue() == 1  # recorded; the process "dies" before sending
    home.close()

    again = open_home(tmp_path / "home")
    try:
        notifier = Notifier(again)
        assert notifier.queue() == 0  # not recorded twice
        assert notifier.deliver_due() == 1
        assert len(receiver.delivered) == 1
        assert receiver.posts[0]["json"]["dataflow"] == "flow"
    finally:
        again.close()


def test_a_run_finished_before_a_restart_is_still_notified(tmp_path: Path, receiver: Receiver) -> None:
    home = open_home(tmp_path / "home")
    w = FlowWorld(home)
    run_id = finished_run(w, [receiver.url])  # the process dies before the notifier saw the run end
    home.close()

    again = open_home(tmp_path / "home")
    try:
        notifier = Notifier(again)
        assert notifier.queue() == 1
        assert notifier.deliver_due() == 1
        assert [p["json"]["run"] for p in receiver.delivered] == [run_id]
    finally:
        again.close()


def test_runs_without_webhooks_notify_nobody(world: FlowWorld, receiver: Receiver) -> None:
    finished_run(world, [])
    notifier = Notifier(world.home, clock=world.clock)
    assert notifier.queue() == 0
    assert notifier.deliver_due() == 0
    assert notifier.deliveries() == []
