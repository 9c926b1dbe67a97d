"""Live pages' streams over real HTTP: no update lost between the page and its stream.

A live page names the ``seq`` it was rendered at; its stream must bring every event after it,
however many came in between, and a reconnect (``Last-Event-ID``) must never resume past rows the
client did not get. Each interleaving is set up before the stream is opened, so nothing waits.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from datamill import events
from datamill.api.routes.events import STREAM_BATCH
from datamill.home import Home
from datamill.service import Service
from datamill.store import lookups
from tests.helpers import open_home, serve

pytestmark = pytest.mark.slow

#: Seconds any one read may take: it only bounds how long a failing run takes (a first page
#: render compiles templates, which on a loaded machine can take longer than httpx's 5 s).
LIMIT = 60.0


def messages(lines: Iterator[str]) -> Iterator[tuple[int | None, str, str]]:
    """``(id or None, event name, data)`` of each message of a ``text/event-stream``."""
    seq: int | None = None
    name, data = "", []
    for line in lines:
        if line.startswith("id: "):
            seq = int(line[4:])
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif not line and name:
            yield seq, name, "\n".join(data)
            seq, name, data = None, "", []


def row_seqs(html: str) -> set[int]:
    """The seqs of the event rows (``<tr id="ev-N">``) in ``html``."""
    return {int(n) for n in re.findall(r'<tr id="ev-(\d+)"', html)}


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    """A fresh SQLite home with a folder ``watched``."""
    h = open_home(tmp_path / "home")
    Service(h).create_folder("watched")
    yield h
    h.close()


def filler(home: Home, n: int) -> None:
    """``n`` events on ``watched`` in one transaction (a busy server's share of the log)."""
    with home.db.write() as conn:
        fid = lookups.folder_id(conn, "watched")
        events.append_many(
            conn, [{"kind": "metadata.changed", "folder_id": fid, "data": {"path": f"watched/{i}"}} for i in range(n)]
        )


def follow_until(http: httpx.Client, url: str, last: int) -> list[tuple[int | None, set[int]]]:
    """The stream's messages, as (id, event rows), up to the one showing event ``last``."""
    got: list[tuple[int | None, set[int]]] = []
    with http.stream("GET", url, timeout=LIMIT) as answer:
        assert answer.status_code == 200
        for seq, name, data in messages(answer.iter_lines()):
            assert name == "event"
            got.append((seq, row_seqs(data)))
            if last in got[-1][1]:
                return got
    raise AssertionError(f"the stream ended before event {last}")


def test_a_page_far_behind_gets_every_event_after_it(home: Home) -> None:
    """More than a page of events between the page and its stream: the first one still comes.

    The stream used to start a page behind the head instead, dropping the events before: the
    page never showed them (a run page never showed its run's end).
    """
    service = Service(home)
    with serve(home) as server, httpx.Client(base_url=server.url, follow_redirects=True, timeout=LIMIT) as http:
        http.get(f"/?token={home.admin_token()}").raise_for_status()
        page_seq = home.events.latest()  # the seq the page was rendered at
        service.create_folder("watched/early")
        early = home.events.latest()
        filler(home, STREAM_BATCH + 100)
        service.create_folder("watched/marker")
        marker = home.events.latest()
        got = follow_until(http, f"/events/live?since={page_seq}&folder=watched", marker)
    shown = set().union(*(rows for _, rows in got))
    assert early in shown
    assert shown == set(range(page_seq + 1, marker + 1))


def test_an_id_is_sent_only_once_every_row_before_it_is(home: Home) -> None:
    """A client cut off after any message resumes (``Last-Event-ID``) before the rows it did not get.

    Every message of a batch used to carry the batch's last seq: a client cut off after the
    first row of a batch resumed after the others, which it then never got.
    """
    service = Service(home)
    with serve(home) as server, httpx.Client(base_url=server.url, follow_redirects=True, timeout=LIMIT) as http:
        http.get(f"/?token={home.admin_token()}").raise_for_status()
        page_seq = home.events.latest()
        for name in ("a", "b", "c"):  # one batch of three rows: the stream opens after them
            service.create_folder(f"watched/{name}")
        marker = home.events.latest()
        got = follow_until(http, f"/events/live?since={page_seq}", marker)
        # A reconnect from any id the client could hold brings exactly the rows after it.
        delivered: set[int] = set()
        resumes = []
        for seq, rows in got:
            delivered |= rows
            if seq is not None:
                assert delivered >= set(range(page_seq + 1, seq + 1)), f"id {seq} sent before rows up to it"
                resumes.append(seq)
        assert resumes == [marker]


def test_a_page_ahead_of_the_log_gets_the_next_event(home: Home) -> None:
    """A page naming a seq past the log's head (a home since restored from a backup) still updates.

    Its stream used to wait for seqs the log had not reached, showing nothing new until then.
    """
    service = Service(home)
    with serve(home) as server, httpx.Client(base_url=server.url, follow_redirects=True, timeout=LIMIT) as http:
        http.get(f"/?token={home.admin_token()}").raise_for_status()
        ahead = home.events.latest() + 1_000
        with http.stream("GET", f"/events/live?since={ahead}&folder=watched") as answer:
            # The answer's head comes once the stream has its starting point: the event is newer.
            assert answer.status_code == 200
            service.create_folder("watched/next")
            marker = home.events.latest()
            for _, name, data in messages(answer.iter_lines()):
                assert name == "event"
                if marker in row_seqs(data):
                    break
