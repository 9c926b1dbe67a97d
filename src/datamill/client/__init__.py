"""One Python client for datamill, embedded (a local home) or remote (a server URL + token).

>>> import datamill
>>> dm = datamill.connect()                      # ./.datamill, or DATAMILL_HOME / DATAMILL_URL
>>> dm.create_folder("Raw Data")
>>> dm.put("Raw Data", "a.csv", b"x,y\\n1,2\\n")

:class:`LocalClient` is loaded on first use (PEP 562) and :func:`connect` imports only the client it
returns: a remote client never loads the database layer, the engine or the local home.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datamill.client.base import Client

if TYPE_CHECKING:
    from datamill.client.local import LocalClient


def connect(
    home: str | Path | None = None,
    url: str | None = None,
    token: str | None = None,
    user: str | None = None,
    profile: str | None = None,
) -> Client:
    """A client on a server (``url`` + ``token``, or ``DATAMILL_URL``/``DATAMILL_TOKEN``) or a local home.

    Without a URL the home directory comes from ``home``, ``DATAMILL_HOME`` or ``datamill.toml``
    (default ``./.datamill``); the local client acts as ``user`` (the admin by default).
    """
    url = url or os.environ.get("DATAMILL_URL")
    if url:
        from datamill.client.remote import RemoteClient

        return RemoteClient(url, token or os.environ.get("DATAMILL_TOKEN"))
    from datamill.client.local import LocalClient
    from datamill.config import load_settings
    from datamill.home import Home

    settings = load_settings(profile=profile, home=str(home) if home is not None else None)
    h = Home(settings)
    client = LocalClient(h, owns_home=True)
    if user:
        client.actor = h.actor(user)
    return client


def __getattr__(name: str) -> Any:
    """:class:`LocalClient`, imported when first asked for."""
    if name == "LocalClient":
        from datamill.client.local import LocalClient

        globals()[name] = LocalClient
        return LocalClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Client", "LocalClient", "connect"]
