"""The HTTP protocol uvicorn runs: h11 for requests and answers, an upload's body passed around it.

An upload (``PUT /api/v1/content/...`` with a ``Content-Length``) is bytes the app hashes and
writes as they come; h11 parses nothing in them, yet it cost most of an upload's CPU: each network
read (64-256 KiB) went into h11's buffer (a copy), out of it as an event (one or two more), through
its state machine, then into uvicorn's body buffer. :class:`ServerProtocol` lets h11 parse the
request head as usual and then hands the body's bytes to uvicorn's body buffer straight from the
socket read, counting them; when the last has arrived, h11 is told its body is complete and takes
over again (the end of the message, the answer, the next request on the connection).

uvicorn's flow control, disconnect handling and the app's ``receive`` are untouched: the bytes go
where h11's ``Data`` events would have put them. Telling h11 the body is complete means setting
its Content-Length reader's count of remaining bytes; a version of h11 without that reader or count
gets no fast path (every body then goes through h11, as before).
"""

from __future__ import annotations

from typing import Any

import h11

from datamill.api.limits import UPLOAD_PREFIX, BoundedH11Protocol

#: Bytes of an upload's body buffered for the app before reading pauses. uvicorn's own limit
#: (64 KiB) paused and resumed reading after nearly every socket read of a fast sender; with 1 MiB
#: the app takes the body in fewer, larger pieces and the event loop spends ~40 % less CPU on it.
BODY_HIGH_WATER = 1 << 20

#: Bodies shorter than this go through h11 (nothing to gain for a small file).
DIRECT_BODY_MIN = 1 << 20


class ServerProtocol(BoundedH11Protocol):
    """:class:`BoundedH11Protocol`, with an upload's body passed from the socket to the app without h11."""

    #: Bytes of the current upload's body still to come past h11 (0: h11 reads everything).
    _body_left = 0

    def data_received(self, data: bytes) -> None:
        """An upload body's bytes go to the app directly; anything else to h11 (and uvicorn)."""
        if self._body_left and not self._lingering:
            self._unset_keepalive_if_required()
            rest = self._take_body(data)
            if self._body_left:
                return
            if not rest:
                # h11 now finds its body complete: the end of the message, and the answer's turn.
                self.handle_events()
                return
            data = rest  # a pipelined request after the body: h11's again
        super().data_received(data)
        self._start_body()

    def _start_body(self) -> None:
        """After h11 has read a request's head: pass the rest of an upload's body around it."""
        cycle = self.cycle
        if cycle is None or self._lingering or self.conn.their_state is not h11.SEND_BODY:
            return
        if cycle.scope["method"] != "PUT" or not cycle.scope["path"].startswith(UPLOAD_PREFIX):
            return
        reader = getattr(self.conn, "_reader", None)
        left = getattr(reader, "_remaining", None)
        if type(reader).__name__ != "ContentLengthReader" or not isinstance(left, int) or left < DIRECT_BODY_MIN:
            return  # chunked, or small, or an h11 that reads bodies otherwise
        self._body_left = left

    def _take_body(self, data: bytes) -> bytes:
        """Give the body's share of ``data`` to the app, as h11's ``Data`` events would; returns what follows it."""
        n = min(len(data), self._body_left)
        piece, rest = (data, b"") if n == len(data) else (data[:n], data[n:])
        self._body_left -= n
        cycle = self.cycle
        # Once the answer is out (an error before the body was read), the rest of the body is dropped.
        if cycle is not None and self.conn.our_state is not h11.DONE:
            cycle.body += piece
            if len(cycle.body) > BODY_HIGH_WATER:
                self.flow.pause_reading()
            cycle.message_event.set()
        if not self._body_left:
            reader: Any = self.conn._reader
            reader._remaining = 0  # the body is in: h11's next event is its end
        return rest
