"""What the global options resolve to: one :class:`State` per invocation, holding the client.

The client is opened lazily, on the first command that needs it, so ``datamill config`` and
``--help`` never touch a database, and closed once by the root command when the command ends.
"""

from __future__ import annotations  # no commands here for Typer to read; Client is named only in hints

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

from datamill.errors import InvalidInput

if TYPE_CHECKING:
    from datamill.client import Client


@dataclass
class State:
    """The global options of one ``datamill`` invocation."""

    home: str | None = None
    profile: str | None = None
    url: str | None = None
    token: str | None = field(default=None, repr=False)
    user: str | None = None
    verbose: bool = False
    _client: Client | None = field(default=None, repr=False)

    @property
    def client(self) -> Client:
        """The client for this invocation: on ``--url`` when given, else on the local home."""
        if self._client is None:
            if self.token and not self.url:
                # Else the token would be silently ignored and the command act on a local home.
                raise InvalidInput(
                    "a token was given (--token or DATAMILL_TOKEN) but no server: pass --url (or set "
                    "DATAMILL_URL) to use it; on a local home, act as a user with --user instead"
                )
            if self.url and self.user:
                raise InvalidInput(
                    "--user acts as a user on a local home only; against a server, pass that user's --token"
                )
            from datamill.client import connect  # the client package only when a command needs it

            self._client = connect(home=self.home, url=self.url, token=self.token, user=self.user, profile=self.profile)
        return self._client

    def close(self) -> None:
        """Close the client if one was opened."""
        client, self._client = self._client, None
        if client is not None:
            client.close()


def get_state(ctx: typer.Context) -> State:
    """The :class:`State` the root command stored on the context (defaults when run standalone)."""
    state = ctx.find_object(State)
    if state is None:
        state = ctx.ensure_object(State)
    return state


def get_client(ctx: typer.Context) -> Client:
    """The client of this invocation."""
    return get_state(ctx).client
