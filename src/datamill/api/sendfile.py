"""Zero-copy file responses: the ASGI ``http.response.zerocopysend`` extension on uvicorn's h11 protocol.

uvicorn's h11 protocol only takes bytes. :func:`offer_zerocopy` adds the extension (ASGI spec,
"Zero Copy Send") to a request cycle of :class:`~datamill.api.protocol.ServerProtocol` on a plain
TCP connection: a ``{"type": "http.response.zerocopysend", "file": f, "offset": o, "count": n,
"more_body": b}`` message goes out with ``loop.sendfile`` (``sendfile(2)``: from the page cache to
the socket, no bytes through Python or h11), while h11 still counts them against the
``Content-Length``. Apps look for the extension in ``scope["extensions"]`` and stream bytes as
usual where it is missing (TLS, other servers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import h11

log = logging.getLogger("datamill.api")

#: The ASGI extension's name (in ``scope["extensions"]`` and as the message type).
ZEROCOPY = "http.response.zerocopysend"


class _Span:
    """Stands for ``count`` bytes of the body in h11's output: h11 counts them, ``sendfile`` sends them."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


def offer_zerocopy(cycle: Any) -> None:
    """Offer the extension to the app of ``cycle`` (uvicorn's request cycle, its app not started yet)."""
    if getattr(cycle, "_datamill_zerocopy", False) or cycle.response_started:
        return
    cycle._datamill_zerocopy = True
    extensions: dict[str, Any] = cycle.scope.setdefault("extensions", {})
    extensions[ZEROCOPY] = {}
    plain: Callable[[Any], Awaitable[None]] = cycle.send

    async def send(message: Any) -> None:
        if message["type"] != ZEROCOPY:
            await plain(message)
            return
        await _send_file(cycle, plain, message)

    cycle.send = send


async def _send_file(cycle: Any, plain: Callable[[Any], Awaitable[None]], message: Any) -> None:
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected:
        return
    if not cycle.response_started or cycle.response_complete:
        raise RuntimeError(f"{ZEROCOPY} is only valid after http.response.start and before the body ends")
    count = int(message.get("count") or 0)
    offset = int(message.get("offset") or 0)
    if count and cycle.scope["method"] != "HEAD":
        transport = cycle.transport
        span = h11.Data(data=_Span(count))  # type: ignore[arg-type]  # h11 only takes len() of it
        for part in cycle.conn.send_with_data_passthrough(span):
            if not isinstance(part, _Span):
                transport.write(part)
                continue
            try:
                await asyncio.get_running_loop().sendfile(transport, message["file"], offset, count, fallback=False)
            except (ConnectionError, RuntimeError, OSError) as exc:
                # The client went away (or the transport closed under us): as for a bytes body,
                # nothing more is sent on this connection.
                log.info("a file response was cut short: %s", exc)
                cycle.disconnected = True
                transport.close()
                return
    if not message.get("more_body", False):
        await plain({"type": "http.response.body", "body": b"", "more_body": False})
