"""The REST API: FastAPI app, streaming upload/download, SSE of events, and the server process.

``create_app(home)`` builds the ASGI app; ``serve(home)`` runs it with uvicorn in the foreground;
``start_background_server(home)`` runs it in a thread (tests, benchmarks, notebooks).
"""

from datamill.api.app import create_app
from datamill.api.server import ServerHandle, serve, start_background_server

__all__ = ["ServerHandle", "create_app", "serve", "start_background_server"]
