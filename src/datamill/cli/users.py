"""Users, tokens and access: ``datamill user``, ``token``, ``group``, ``share``, ``public``, ``access``, ``whoami``."""

import sys
from typing import Annotated

import typer

from datamill.cli import groups
from datamill.cli.context import get_client
from datamill.cli.output import human_time, print_json, print_table, say
from datamill.cli.params import JsonFlag
from datamill.errors import InvalidInput
from datamill.limits import INT64_MAX

PANEL = "Users and access"

user_app = typer.Typer(
    help="Create and list users (site admins only).", no_args_is_help=True, rich_markup_mode="markdown"
)
token_app = typer.Typer(help="Create and revoke API tokens.", no_args_is_help=True, rich_markup_mode="markdown")

FolderArg = Annotated[str, typer.Argument(metavar="FOLDER", help="Folder path, e.g. `Raw Data`.")]


@user_app.command("create")
def create_user(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Letters, digits, `.`, `_`, `-`, `@`.")],
    admin: Annotated[bool, typer.Option("--admin", help="Make the user a site admin.")] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read a password for the web login from stdin.")
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Create a user. Give them access with `datamill share` and a token with `datamill token create`.

    Example:

        printf '%s' "$PW" | datamill user create ana --password-stdin
    """
    password = None
    if password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
        if not password:
            raise InvalidInput("--password-stdin read an empty password; pipe the password in")
    user = get_client(ctx).create_user(name, password=password, admin=admin)
    if json_:
        print_json(user)
    say(f"created {'site admin' if user.get('is_admin') else 'user'} {user['name']!r}")


@user_app.command("ls")
def list_users(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """List all users (site admins only)."""
    found = get_client(ctx).list_users()
    if json_:
        print_json(found)
        return
    print_table(["id", "name", "admin"], [(u["id"], u["name"], "yes" if u.get("is_admin") else "") for u in found])


@token_app.command("create")
def create_token(
    ctx: typer.Context,
    user: Annotated[
        str | None,
        typer.Option("--user", metavar="NAME", help="Whose token; yourself by default (others need a site admin)."),
    ] = None,
    name: Annotated[str, typer.Option("--name", metavar="N", help="A label to recognise the token by.")] = "",
    expires_in: Annotated[
        float | None,
        typer.Option("--expires-in", metavar="DAYS", help="Expire after this many days; never by default.", min=0),
    ] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print `{id, user, token, expires_at}` as JSON instead of the bare token.")
    ] = False,
) -> None:
    """Create an API token and print it on stdout. It is shown only this once.

    Example, and then using the token:

        datamill token create --user ana --expires-in 30
        datamill --url http://host:8765 --token dm_... ls "Raw Data"
    """
    ttl = expires_in * 86400 if expires_in else None
    new = get_client(ctx).create_token(user=user, name=name, ttl=ttl)
    if json_:
        print_json({"id": new.id, "user": new.user, "token": new.token, "expires_at": new.expires_at})
    else:
        typer.echo(new.token)
    expiry = f"expires {human_time(new.expires_at)}" if new.expires_at else "does not expire"
    say(f"token {new.id} for {new.user!r} ({expiry}); it is shown only now, keep it safe")


@token_app.command("revoke")
def revoke_token(
    ctx: typer.Context,
    token_id: Annotated[int, typer.Argument(metavar="ID", min=1, max=INT64_MAX, help="The token's id.")],
) -> None:
    """Revoke a token: yours, or anyone's as a site admin. It stops working at once."""
    get_client(ctx).revoke_token(token_id)
    say(f"revoked token {token_id}")


def share(
    ctx: typer.Context,
    folder: FolderArg,
    user: Annotated[
        str | None, typer.Argument(metavar="[USER]", help="The user to grant access to (or use --group).")
    ] = None,
    group: Annotated[
        str | None, typer.Option("--group", "-g", metavar="GROUP", help="Grant a group instead of a user.")
    ] = None,
    read: Annotated[bool, typer.Option("--read", help="See the folder, its items and their bytes.")] = False,
    write: Annotated[bool, typer.Option("--write", help="Also add, change and remove items and subfolders.")] = False,
    admin: Annotated[bool, typer.Option("--admin", help="Also share, rename, move and delete the folder.")] = False,
    none: Annotated[bool, typer.Option("--none", help="Remove the grant.")] = False,
) -> None:
    """Grant USER (or every member of `--group`) access to FOLDER and everything below it.

    Needs admin on the folder; a group must be one of yours. Give exactly one of `--read`,
    `--write`, `--admin` or `--none`. Examples:

        datamill share "Raw Data" ana --write
        datamill share "Raw Data" --group imaging --read
        datamill share "Raw Data" --group imaging --none
    """
    chosen = [lvl for lvl, on in [("read", read), ("write", write), ("admin", admin), ("none", none)] if on]
    if len(chosen) != 1:
        raise InvalidInput("give exactly one of --read, --write, --admin or --none")
    if (user is None) == (group is None):
        raise InvalidInput("name exactly one user (`datamill share FOLDER USER ...`) or one `--group GROUP`")
    client = get_client(ctx)
    if group is not None:
        client.share_group(folder, group, chosen[0])
        who = f"group {group!r}"
    else:
        assert user is not None
        client.share(folder, user, chosen[0])
        who = repr(user)
    if chosen[0] == "none":
        say(f"removed the grant of {who} on {folder.strip('/')!r}")
    else:
        say(f"granted {who} {chosen[0]} on {folder.strip('/')!r}")


def public(
    ctx: typer.Context,
    folder: FolderArg,
    on: Annotated[bool, typer.Option("--on/--off", help="Switch public read on or off.", show_default=False)],
) -> None:
    """Make FOLDER readable by every signed-in user (`--on`), or not (`--off`)."""
    get_client(ctx).set_public(folder, on)
    say(f"{folder.strip('/')!r} is {'now' if on else 'no longer'} public")


def access(ctx: typer.Context, folder: FolderArg, json_: JsonFlag = False) -> None:
    """List the grants made on FOLDER to users and groups (grants on folders above it also apply)."""
    grants = get_client(ctx).access_list(folder)
    if json_:
        print_json(grants)
        return
    keys = ["user", "group", "level"] if any("group" in g for g in grants) else ["user", "level"]
    print_table(keys, [[g.get(k, "") for k in keys] for g in grants], empty=f"no grants on {folder.strip('/')!r}")


def whoami(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """Show the user this command acts as."""
    me = get_client(ctx).whoami()
    if json_:
        print_json(me)
    else:
        typer.echo(f"{me['name']}{' (site admin)' if me.get('is_admin') else ''}")


def register(app: typer.Typer) -> None:
    """Add the user, token, group and access commands to the root command."""
    app.add_typer(user_app, name="user", rich_help_panel=PANEL)
    app.add_typer(token_app, name="token", rich_help_panel=PANEL)
    app.add_typer(groups.app, name="group", rich_help_panel=PANEL)
    app.command("share", rich_help_panel=PANEL)(share)
    app.command("public", rich_help_panel=PANEL)(public)
    app.command("access", rich_help_panel=PANEL)(access)
    app.command("whoami", rich_help_panel=PANEL)(whoami)
