"""The server process: uvicorn running the app, in the foreground or in a background thread.

The listening socket is bound here rather than by uvicorn, so that port 0 picks a free port whose
number is known before anyone is told the URL, and a port in use is a clear :class:`ConfigError`.
Shutting down (SIGINT/SIGTERM, or :meth:`ServerHandle.stop`) first ends open event streams,
which would otherwise keep their connections (and so the server) alive; requests still running
get ``GRACEFUL_SECONDS`` before they are cancelled.

uvicorn's access log is off: it prints query strings, and a login URL carries a token there.
:class:`~datamill.api.middleware.AccessLog` logs paths only (logger ``datamill.access``).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from datamill.api.app import create_app
from datamill.api.limits import MAX_HEAD_BYTES
from datamill.api.protocol import ServerProtocol
from datamill.errors import ConfigError, DatamillError
from datamill.home import Home

log = logging.getLogger("datamill.api")

GRACEFUL_SECONDS = 10
STARTUP_SECONDS = 30.0


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve host {host!r}: {exc.strerror}; check the host setting", key="host") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}. Pick another port with --port "
            "(DATAMILL_PORT), or 0 for any free one",
            key="port",
        ) from None
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, plus a ready signal and a shutdown that first ends event streams."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, url: str, on_ready: Callable[[str], None] | None) -> None:
        super().__init__(config)
        self.app = app
        self.url = url
        self.on_ready = on_ready
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            log.info("datamill serving at %s", self.url)
            self.ready.set()
            # A Ctrl-C during start-up: say nothing about a server that is already stopping.
            if self.on_ready is not None and not self.should_exit:
                self.on_ready(self.url)

    def request_stop(self) -> None:
        """Begin a graceful shutdown; safe from any thread."""
        self.should_exit = True
        self.app.state.broadcaster.close()
        self.app.state.guard.close()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Deliberately not uvicorn's: it re-raises the signal once shut down (a KeyboardInterrupt
        # in the caller); serve() returns normally instead. A second Ctrl-C still forces the exit.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.request_stop()


def _config(app: FastAPI, log_level: str | None = None, graceful: float = GRACEFUL_SECONDS) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_config=None,  # leave logging to the application (and to pytest's capture)
        log_level=log_level,
        access_log=False,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        ws="none",
        timeout_graceful_shutdown=graceful,  # type: ignore[arg-type]  # uvicorn takes seconds as a float
        # Oversized or malformed request heads get a JSON 4xx instead of a reset (api/limits.py);
        # an upload's body goes to the app without h11 (api/protocol.py).
        http=ServerProtocol,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )


def serve(
    home: Home,
    host: str | None = None,
    port: int | None = None,
    on_ready: Callable[[str], None] | None = None,
    services: bool = True,
) -> None:
    """Serve ``home`` until SIGINT/SIGTERM; ``on_ready(url)`` is called once it listens.

    With ``services`` (the default) the scheduler, dataflow triggers and notifier run in the
    same process, and runs and dataflows left running by a previous process resume.

    ``host`` and ``port`` default to the home's settings (127.0.0.1:8765); port 0 picks a free
    port, which ``on_ready`` reports.
    """
    host = host or home.settings.host
    port = home.settings.port if port is None else port
    level = home.settings.log_level.upper()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = bind_socket(host, port)
    app = create_app(home, services=services, register=True)
    server = _Server(_config(app, home.settings.log_level.lower()), app, url_of(sock), on_ready)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class ServerHandle:
    """A server running in a background thread: ``.url``, ``.app``, ``.stop()``; a context manager."""

    def __init__(self, server: _Server, thread: threading.Thread, sock: socket.socket) -> None:
        self._server = server
        self._thread = thread
        self._sock = sock
        self.url = server.url
        self.app = server.app

    def stop(self, timeout: float = GRACEFUL_SECONDS + 5) -> None:
        """Shut down gracefully and wait for the thread; safe to call more than once."""
        self._server.request_stop()
        self._thread.join(timeout)
        self._sock.close()
        if self._thread.is_alive():
            log.warning("the server thread did not stop within %.0f s", timeout)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_background_server(
    home: Home,
    host: str = "127.0.0.1",
    port: int = 0,
    sse_keepalive: float | None = None,
    services: bool = False,
    graceful: float = GRACEFUL_SECONDS,
) -> ServerHandle:
    """Serve ``home`` from a daemon thread; returns once it accepts connections.

    ``graceful``: seconds a stop waits for requests in progress before it cancels them."""
    sock = bind_socket(host, port)
    app = (
        create_app(home, services=services)
        if sse_keepalive is None
        else create_app(home, sse_keepalive=sse_keepalive, services=services)
    )
    server = _Server(_config(app, graceful=graceful), app, url_of(sock), None)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # SystemExit from a failed startup included
            failure.append(exc)
            server.ready.set()

    thread = threading.Thread(target=run, name="datamill-server", daemon=True)
    thread.start()
    if not server.ready.wait(STARTUP_SECONDS) or failure:
        server.request_stop()
        thread.join(GRACEFUL_SECONDS)
        sock.close()
        raise DatamillError(f"the server did not start: {failure[0] if failure else 'timed out'}")
    return ServerHandle(server, thread, sock)
