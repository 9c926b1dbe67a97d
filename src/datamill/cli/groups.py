"""``datamill group ...``: groups of users, to share folders with (`datamill share FOLDER --group G`)."""

from typing import Annotated

import typer

from datamill.cli.context import get_client
from datamill.cli.output import human_time, print_json, print_table, say
from datamill.cli.params import JsonFlag
from datamill.records import GroupInfo

app = typer.Typer(
    help="Create groups, add and remove their members; share folders with them with `datamill share --group`.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

GroupArg = Annotated[str, typer.Argument(metavar="GROUP", help="The group's name.")]
UserArg = Annotated[str, typer.Argument(metavar="USER", help="A user's name.")]


def _show(group: GroupInfo) -> None:
    say(f"group {group.name!r}, created by {group.created_by or '-'} on {human_time(group.created_at)}")
    print_table(
        ["member", "group admin", "added"],
        [(m.user, "yes" if m.admin else "", human_time(m.added_at)) for m in group.members],
        empty="no members",
    )
    print_table(
        ["folder", "level"],
        [(g.folder, g.level) for g in group.grants],
        empty=f"no folders shared with {group.name!r}; "
        f"share one with `datamill share FOLDER --group {group.name} --read`",
    )


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Letters, digits, `.`, `_`, `-`, `@`; a letter or digit first.")
    ],
    json_: JsonFlag = False,
) -> None:
    """Create a group. You become its first group admin.

    Example:

        datamill group create imaging
        datamill group add imaging ana
        datamill share "Raw Data" --group imaging --read
    """
    group = get_client(ctx).create_group(name)
    if json_:
        print_json(group.to_dict())
    say(f"created group {group.name!r}; you are its admin")


@app.command("ls")
def list_groups(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """List your groups (every group for a site admin)."""
    found = get_client(ctx).groups()
    if json_:
        print_json([g.to_dict() for g in found])
        return
    print_table(
        ["name", "members", "admins", "folders"],
        [(g.name, len(g.members), ", ".join(g.admins()) or "-", len(g.grants)) for g in found],
        empty="you are in no group; create one with `datamill group create NAME`",
    )


@app.command("show")
def show(ctx: typer.Context, name: GroupArg, json_: JsonFlag = False) -> None:
    """Show a group's members and the folders shared with it (members and site admins only)."""
    group = get_client(ctx).group(name)
    if json_:
        print_json(group.to_dict())
        return
    _show(group)


@app.command("add")
def add(
    ctx: typer.Context,
    name: GroupArg,
    users: Annotated[list[str], typer.Argument(metavar="USER...", help="Users to add.")],
    admin: Annotated[
        bool | None,
        typer.Option(
            "--admin/--no-admin",
            help="Make them group admins, or (`--no-admin`) ordinary members; without either, new members "
            "are ordinary and existing ones stay as they are.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Add users to a group, or change whether members are group admins (needs group admin).

    They get every folder grant of the group at once. Example:

        datamill group add imaging ana bo
        datamill group add imaging ana --admin
    """
    client = get_client(ctx)
    for user in users:
        group = client.add_group_member(name, user, admin=admin)
        is_admin = any(m.user == user and m.admin for m in group.members)
        say(f"{user!r} is {'an admin' if is_admin else 'a member'} of group {name!r}")


@app.command("remove")
def remove(ctx: typer.Context, name: GroupArg, users: Annotated[list[str], typer.Argument(metavar="USER...")]) -> None:
    """Remove users from a group (needs group admin; anyone may remove themselves).

    Their access through the group ends at once, open event streams included.
    """
    client = get_client(ctx)
    for user in users:
        client.remove_group_member(name, user)
        say(f"removed {user!r} from group {name!r}")


@app.command("rm")
def delete(ctx: typer.Context, name: GroupArg) -> None:
    """Delete a group and the folder grants made to it (needs group admin)."""
    n = get_client(ctx).delete_group(name)
    say(f"deleted group {name!r}" + (f" and its {n} folder grant{'s' if n != 1 else ''}" if n else ""))
