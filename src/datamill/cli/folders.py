"""``datamill folder ...``: create, list, move, delete folders and edit their metadata."""

from typing import Annotated

import typer

from datamill.cli.context import get_client
from datamill.cli.output import human_time, print_json, print_table, say, show_or_change_metadata
from datamill.cli.params import JsonFlag, MetaOption, UnsetOption, parse_pairs

app = typer.Typer(
    help="Create, list, move and delete folders; edit their metadata.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

FolderPath = Annotated[str, typer.Argument(metavar="PATH", help="Folder path, e.g. `Raw Data/2026`.")]


@app.command("create")
def create(
    ctx: typer.Context,
    path: FolderPath,
    meta: MetaOption = None,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="Succeed quietly if the folder already exists.")] = False,
    json_: JsonFlag = False,
) -> None:
    """Create a folder, and any missing parents.

    Example:

        datamill folder create "Raw Data/2026" --meta project=alpha
    """
    info = get_client(ctx).create_folder(path, parents=True, exist_ok=exist_ok, metadata=parse_pairs(meta) or None)
    if json_:
        print_json(info.to_dict())
    say(f"created folder {info.path!r}")


@app.command("ls")
def list_folders(
    ctx: typer.Context,
    path: Annotated[
        str, typer.Argument(metavar="PATH", help="Folder whose subfolders to list; the top level if omitted.")
    ] = "",
    json_: JsonFlag = False,
) -> None:
    """List the subfolders of PATH (the top-level folders without PATH).

    Only folders you may read are shown. Items are listed by `datamill ls FOLDER`.
    """
    folders = get_client(ctx).list_folders(path)
    if json_:
        print_json([f.to_dict() for f in folders])
        return
    print_table(
        ["name", "owner", "public", "updated", "path"],
        [(f.name, f.owner or "-", "yes" if f.public_read else "", human_time(f.updated_at), f.path) for f in folders],
        empty=f"no folders in {path!r}" if path else "no folders yet; create one with `datamill folder create NAME`",
    )


@app.command("rm")
def remove(
    ctx: typer.Context,
    path: FolderPath,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Also delete the items and subfolders inside.")
    ] = False,
) -> None:
    """Delete a folder. A folder that is not empty needs `--recursive`.

    Needs admin access on the folder.
    """
    n = get_client(ctx).delete_folder(path, recursive=recursive)
    say(f"deleted folder {path.strip('/')!r}" + (f" and {n} item{'s' if n != 1 else ''}" if n else ""))


@app.command("mv")
def move(
    ctx: typer.Context,
    path: FolderPath,
    new_parent: Annotated[
        str, typer.Argument(metavar="NEW_PARENT", help="Folder to move it into; `/` for the top level.")
    ],
    name: Annotated[str | None, typer.Option("--name", metavar="NEW", help="Also rename it to NEW.")] = None,
) -> None:
    """Move a folder (with everything in it) under NEW_PARENT, optionally renaming it.

    Example:

        datamill folder mv "Inbox/run-7" "Raw Data/2026" --name run-007
    """
    info = get_client(ctx).move_folder(path, new_parent, name)
    say(f"moved folder {path.strip('/')!r} to {info.path!r}")


@app.command("meta")
def metadata(
    ctx: typer.Context,
    path: FolderPath,
    pairs: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="KEY=VALUE",
            help="Keys to set; VALUE is parsed as JSON when valid (`n=3`), else taken as a string.",
        ),
    ] = None,
    unset: UnsetOption = None,
    json_: JsonFlag = False,
) -> None:
    """Show a folder's metadata, or set and remove keys.

    Without KEY=VALUE or `--unset` it prints the metadata. Example:

        datamill folder meta "Raw Data" owner=ana retention=30 --unset draft
    """
    client = get_client(ctx)
    changes = parse_pairs(pairs, "KEY=VALUE")
    show_or_change_metadata(
        changes,
        unset or [],
        lambda: client.set_folder_metadata(path, changes, unset or ()),
        lambda: client.folder(path),
        lambda info: f"folder {info.path!r}",
        json_,
    )


def register(root: typer.Typer) -> None:
    """Add ``datamill folder ...`` to the root command."""
    root.add_typer(app, name="folder", rich_help_panel="Folders")
