"""The HTTP protocol uvicorn runs: h11 for requests and answers, an upload's body passed around it.

An upload (``PUT /api/v1/content/...`` with a ``Content-Length``) is bytes the app hashes and
writes as they come; h11 parses nothing in them, yet it cost most of an upload's CPU: each network
read (64-256 KiB) went into h11's buffer (a copy), out of it as an event (one or two more), through
its state machine, then into uvicorn's body buffer. :class:`ServerProtocol` lets h11 parse the
request head as usual and then hands the body's bytes to uvicorn's body buffer straight from the
socket read, counting them; when the last has arrived, h11 is told its body is complete and takes
over again (the end of the message, the answer, the next request on the connection).

The upload route goes one step further when the connection offers it (:data:`SOCKET_BODY` in the
request scope's ``extensions``: plain TCP, no TLS): :class:`SocketBody` reads the rest of the body
from the socket itself with ``recv_into`` into two reused blocks, which the route hashes and
writes in a worker thread while the other block fills. Each byte is then copied once from the
kernel, with no fresh buffer per read (uvicorn's buffer took two more copies: into a bytearray,
then out of it as ``bytes``), and the event loop does one coroutine step per read instead of a
callback, a buffer append and an event.

Into a local file, :meth:`SocketBody.land` takes the event loop out of the body altogether: a
thread of its own moves the bytes from the socket into the upload's file with ``splice(2)``
(socket to pipe: the kernel passes page references; pipe to file: the one copy, into the page
cache) while a second thread hashes the file's bytes as they land (read back from the page
cache). Profiled before it, a 1 GiB upload spent its time not in work but in the hand-overs:
each block's hash and write waited for the GIL the event loop kept taking back for its next read.

uvicorn's flow control, disconnect handling and the app's ``receive`` are untouched: the bytes go
where h11's ``Data`` events would have put them. Telling h11 the body is complete means setting
its Content-Length reader's count of remaining bytes; a version of h11 without that reader or count
gets no fast path (every body then goes through h11, as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

import h11
from starlette.requests import ClientDisconnect

from datamill.api.limits import UPLOAD_PREFIX, BoundedH11Protocol
from datamill.api.sendfile import offer_zerocopy
from datamill.store.blobs.transfer import land_hashed, preallocate

log = logging.getLogger("datamill.api")

#: Bytes of an upload's body buffered for the app before reading pauses. uvicorn's own limit
#: (64 KiB) paused and resumed reading after nearly every socket read of a fast sender; with 1 MiB
#: the app takes the body in fewer, larger pieces and the event loop spends ~40 % less CPU on it.
BODY_HIGH_WATER = 1 << 20

#: Bodies shorter than this go through h11 (nothing to gain for a small file).
DIRECT_BODY_MIN = 1 << 20

#: The ASGI extension (in ``scope["extensions"]``) under which an upload's body can be read by
#: :class:`SocketBody`.
SOCKET_BODY = "datamill.socket_body"

#: Bytes of each of :class:`SocketBody`'s two reused blocks.
SOCKET_BLOCK = 1 << 20

#: Whether :meth:`SocketBody.land` can move a body into a file (``splice(2)``: Linux).
CAN_LAND = hasattr(os, "splice")
#: Size asked for the pipe a landing splices through (Linux's default cap for unprivileged users:
#: larger pipes mean fewer calls; a smaller one granted is used as it is).
LAND_PIPE = 1 << 20
#: Bytes of the file a landing reserves on disk ahead of what has arrived (``fallocate``): ext4 then
#: takes the writes into blocks it already has, not reserving them page by page (~10 % less CPU in
#: the writes); ahead by this much only, so that a client announcing a huge body and sending little
#: cannot have the server reserve the disk for it.
LAND_RESERVE = 64 << 20
#: How often a landing thread waiting for bytes looks whether it was told to stop (seconds).
LAND_WAKE = 0.2
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class LandingStopped(Exception):
    """A landing was told to stop (its request was cancelled) before the body was in."""


class ServerProtocol(BoundedH11Protocol):
    """:class:`BoundedH11Protocol`, with an upload's body passed from the socket to the app without h11."""

    #: Bytes of the current upload's body still to come past h11 (0: h11 reads everything).
    _body_left = 0
    #: The app reads the body from the socket itself (:class:`SocketBody`) while this is set.
    _socket_reader: SocketBody | None = None

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

    def handle_events(self) -> None:
        """uvicorn's, then: a plain TCP connection offers a new GET's app ``sendfile`` (api/sendfile.py)."""
        super().handle_events()
        cycle = self.cycle
        if cycle is not None and cycle.scope["method"] == "GET" and not self._lingering and self._plain_tcp():
            offer_zerocopy(cycle)

    def _plain_tcp(self) -> bool:
        transport = self.transport
        return transport.get_extra_info("sslcontext") is None and transport.get_extra_info("socket") is not None

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
        if self._plain_tcp():
            extensions: dict[str, Any] = cycle.scope.setdefault("extensions", {})
            extensions[SOCKET_BODY] = SocketBody(self, cycle)

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
            self._end_body()
        return rest

    def _end_body(self) -> None:
        """The body is in: h11's next event is its end."""
        reader: Any = self.conn._reader
        reader._remaining = 0


class SocketBody:
    """The rest of an upload's body, read by the app from the connection's socket into two reused blocks.

    Offered to the app as ``scope["extensions"][SOCKET_BODY]`` by :class:`ServerProtocol`.
    :meth:`read_block` returns the next filled block (a view of one of two buffers), None after
    the last: a view stays valid until :meth:`read_block` has been called twice more, so the app
    may hash and write one block in a thread while the next one fills. :meth:`close` must follow
    (in a ``finally``): if the body was not read to its end (an error, a cancelled request), the
    protocol takes over its rest again (and drops it once the answer is out).

    While the app reads, the connection's transport is paused (uvicorn's flow control), so no
    other reader takes bytes from the socket; the reads go through a duplicate of the socket's
    descriptor, which stays valid even if the server closes the connection meanwhile. A client
    that goes away raises :class:`ClientDisconnect`, as ``request.stream()`` does.
    """

    def __init__(self, protocol: ServerProtocol, cycle: Any) -> None:
        self._protocol = protocol
        self._cycle = cycle
        self._sock: socket.socket | None = None
        self._blocks: tuple[memoryview, ...] = ()  # made when the app takes the body over
        self._next = 0
        self._started = False
        self._closed = False
        #: Bytes of the body the app has been given.
        self.received = 0
        self._landing: asyncio.Future[tuple[str, int]] | None = None
        self._lander: _Lander | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._running = False  # a landing thread is running (under _lock)
        self._released = False

    async def read_block(self) -> memoryview | None:
        """The next part of the body (up to one block), None once it has all been read."""
        protocol, cycle = self._protocol, self._cycle
        if self._closed:
            raise RuntimeError("the socket body was closed")
        if not self._started:
            self._started = True
            self._start()
        if cycle.body:
            # What arrived before the app took over, or (should uvicorn have resumed reading) since.
            early, cycle.body = cycle.body, bytearray()
            self.received += len(early)
            return memoryview(early)
        if protocol._body_left == 0:
            return None
        if cycle.disconnected:
            raise ClientDisconnect()
        assert self._sock is not None
        view = self._blocks[self._next]
        self._next ^= 1
        loop = asyncio.get_running_loop()
        filled = 0
        want = min(len(view), protocol._body_left)
        while filled < want:
            try:
                n = await loop.sock_recv_into(self._sock, view[filled:want])
            except OSError:  # reset by the client
                raise ClientDisconnect() from None
            if n == 0:  # the client closed its side short of Content-Length
                raise ClientDisconnect()
            filled += n
        protocol._body_left -= filled
        self.received += filled
        if protocol._body_left == 0:
            protocol._end_body()
            protocol.handle_events()  # h11's end of the message: uvicorn's cycle ends its body too
        else:
            await asyncio.sleep(0)  # a fast sender must not keep the event loop from other connections
        return view[:filled]

    def _start(self) -> None:
        """Take over the socket (what arrived before is in uvicorn's body buffer)."""
        protocol, cycle = self._protocol, self._cycle
        if cycle.disconnected or protocol.cycle is not cycle:
            raise ClientDisconnect()
        protocol.flow.pause_reading()
        protocol._socket_reader = self
        if cycle.waiting_for_100_continue and not protocol.transport.is_closing():
            # What uvicorn's receive() would have sent: the client waits for it before the body.
            event = h11.InformationalResponse(status_code=100, headers=[], reason="Continue")
            protocol.transport.write(protocol.conn.send(event))
            cycle.waiting_for_100_continue = False
        self._blocks = (memoryview(bytearray(SOCKET_BLOCK)), memoryview(bytearray(SOCKET_BLOCK)))
        sock = protocol.transport.get_extra_info("socket")
        self._sock = socket.socket(fileno=os.dup(sock.fileno()))
        self._sock.setblocking(False)

    def land(self, fd: int, abandon: Callable[[], None]) -> asyncio.Future[tuple[str, int]]:
        """Move the rest of the body into file ``fd`` (empty, open for reading and writing) in threads
        of their own; the future gives the BLAKE3 hex digest of the bytes written and their number.

        Use only instead of :meth:`read_block`, where :data:`CAN_LAND`. A client that goes away
        fails the future with :class:`ClientDisconnect`. The file is written until the threads
        end: if :meth:`close` comes first (the request gave up: an error, a cancellation, the
        server stopping), it tells them to stop and returns True, and the landing thread calls
        ``abandon`` itself once nothing writes into ``fd`` any more (the caller throws the file
        away there, and must not touch it after close() returned True). This does not need the
        event loop to be still running then.
        """
        protocol, cycle = self._protocol, self._cycle
        if self._closed or self._started:
            raise RuntimeError("the socket body was already read")
        self._started = True
        self._start()
        early, cycle.body = bytes(cycle.body), bytearray()
        # The landing thread owns the duplicate descriptor from here on, and closes it when it ends.
        sock, self._sock = self._sock, None
        assert sock is not None
        try:
            lander = _Lander(sock, fd, early, protocol._body_left, self._stopping)
        except BaseException:
            sock.close()
            raise
        self._lander = lander
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[str, int]] = loop.create_future()
        self._landing = future

        def settle(result: tuple[str, int] | None, error: BaseException | None) -> None:
            self._account()
            if error is not None:
                if not future.done():
                    future.set_exception(error)
                if not isinstance(error, LandingStopped | ClientDisconnect):
                    log.debug("an upload's landing failed: %s", error)
            elif not future.done():
                future.set_result(result)  # type: ignore[arg-type]
            if self._closed:
                self._release()
            elif error is None and protocol._body_left == 0:
                protocol._end_body()
                protocol.handle_events()  # h11's end of the message: uvicorn's cycle ends its body too

        def run() -> None:
            result: tuple[str, int] | None = None
            error: BaseException | None = None
            try:
                # Written back behind the hashing: the commit's fsync finds little left to write.
                result = land_hashed(lander.step, fd, 0, len(early) + lander.left, write_back=True)
            except BaseException as exc:  # handed to the event loop
                error = exc
            finally:
                lander.close()
            with self._lock:
                self._running = False
                abandoned = self._stopping.is_set()
            if abandoned:
                try:
                    abandon()
                except Exception:
                    log.exception("could not throw away an abandoned upload's file")
            # RuntimeError: the server's loop is gone (it stopped meanwhile), nothing waits for this.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, result, error)

        self._running = True
        threading.Thread(target=run, name="datamill-upload", daemon=True).start()
        return future

    def close(self) -> bool:
        """Give the connection back to the protocol (any unread rest of the body with it).

        Returns True if a landing (:meth:`land`) was still running: it is told to stop, calls its
        ``abandon`` once it has, and the connection is given back after that.
        """
        if self._closed:
            return False
        self._closed = True
        with self._lock:
            if self._running:
                self._stopping.set()
                return True
        self._release()
        return False

    def _account(self) -> None:
        """Count the bytes an ended landing took from the socket against the body (once)."""
        lander, self._lander = self._lander, None
        if lander is not None:
            self._protocol._body_left -= lander.taken  # taken from the socket, written or not
            self.received = lander.taken + len(lander.early)

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        self._account()
        if self._sock is not None:
            # A read cancelled mid-wait leaves its reader registered until a later callback
            # removes it by number; removed here, before the number can be reused.
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
        protocol = self._protocol
        if protocol._socket_reader is self:
            protocol._socket_reader = None
            if protocol._body_left:
                # Cut short (an error): the protocol reads the rest, and drops it once the answer is out.
                protocol.flow.resume_reading()


class _Lander:
    """The steps of :meth:`SocketBody.land` (:func:`land_hashed`'s stepping thread runs them).

    The socket stays non-blocking (its flag is shared with the event loop's descriptor); an empty
    socket is waited for with ``poll``, waking every :data:`LAND_WAKE` s to see whether to stop.
    """

    def __init__(self, sock: socket.socket, fd: int, early: bytes, left: int, stopping: threading.Event) -> None:
        self._socket = sock
        self.sock = sock.fileno()
        self.fd = fd
        self.early = early
        #: Bytes of the body still in the socket when the landing began.
        self.left = left
        #: Bytes taken from the socket so far.
        self.taken = 0
        #: Bytes of the file reserved on disk so far (:data:`LAND_RESERVE`).
        self.reserved = 0
        self.stopping = stopping
        self.pipe_r, self.pipe_w = os.pipe()
        try:
            with contextlib.suppress(OSError):  # a smaller pipe: more calls, same bytes
                fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, LAND_PIPE)
            self.pipe_size = fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ + 1)  # F_GETPIPE_SZ
            self.poll = select.poll()
            self.poll.register(self.sock, select.POLLIN)
        except BaseException:
            os.close(self.pipe_r)
            os.close(self.pipe_w)
            raise

    def step(self, done: int, want: int) -> int:
        """Put up to ``want`` bytes at offset ``done`` of the file: the early bytes first, then the socket's.

        Waits for the first bytes only; after them it moves what the socket holds, up to ``want``,
        so that a fast sender's body lands in few large steps (one hand-over to the hashing thread
        each) rather than one per pipe-full.
        """
        if done < len(self.early):
            return os.pwrite(self.fd, memoryview(self.early)[done : done + want], done)
        want = min(want, self.left - self.taken)
        end = len(self.early) + self.left
        if done + want > self.reserved and self.reserved < end:
            more = min(max(LAND_RESERVE, done + want - self.reserved), end - self.reserved)
            preallocate(self.fd, self.reserved, more)
            self.reserved += more
        moved = 0
        while moved < want:
            if self.stopping.is_set():
                raise LandingStopped()
            try:
                n = os.splice(
                    self.sock,
                    self.pipe_w,
                    min(want - moved, self.pipe_size),
                    flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK,
                )
            except BlockingIOError:
                if moved:
                    break  # the socket is empty for now: hand over what has landed
                self.poll.poll(LAND_WAKE * 1000)
                continue
            except OSError:  # reset by the client
                raise ClientDisconnect() from None
            if n == 0:  # the client closed its side short of Content-Length
                raise ClientDisconnect()
            self.taken += n
            at, left = done + moved, n
            while left:
                written = os.splice(self.pipe_r, self.fd, left, offset_dst=at, flags=os.SPLICE_F_MOVE)
                at += written
                left -= written
            moved += n
        return moved

    def close(self) -> None:
        os.close(self.pipe_r)
        os.close(self.pipe_w)
        self._socket.close()
