"""Items: ``datamill put``, ``get``, ``ls``, ``versions``, ``meta``, ``find`` and ``rm``."""

import itertools
from pathlib import Path
from typing import Annotated

import typer

from datamill.cli.context import get_client, get_state
from datamill.cli.output import (
    TableStream,
    human_size,
    human_time,
    print_json,
    print_json_items,
    print_table,
    say,
    show_or_change_metadata,
    stderr,
    transfer_progress,
)
from datamill.cli.params import JsonFlag, MetaOption, UnsetOption, parse_pairs
from datamill.client import Client
from datamill.client.ignore import walk as walk_files
from datamill.errors import BlobCorrupted, InvalidInput, NotFound
from datamill.limits import INT64_MAX
from datamill.records import ItemInfo, VersionInfo
from datamill.store.blobs import hasher

PANEL = "Items"
#: Items `datamill ls` reads first (soon on screen), then at a time (fewer requests for a large folder).
FIRST_PAGE = 1000
LATER_PAGES = 10_000

ItemPath = Annotated[str, typer.Argument(metavar="FOLDER/ITEM", help="Item path, e.g. `Raw Data/a.csv`.")]
FolderArg = Annotated[str, typer.Argument(metavar="FOLDER", help="Folder path, e.g. `Raw Data/2026`.")]


def _local_bytes(sources: list[str]) -> int:
    """How many bytes the files in ``sources`` hold (what the ignore rules leave out not counted).

    Raises for an empty or missing source, so that a typo in the last argument fails before
    anything is uploaded.
    """
    total = 0
    for text in sources:
        if not text.strip():
            # Path("") is Path("."): an empty argument would upload the current directory.
            raise InvalidInput("an empty SRC names no file or directory; nothing was uploaded")
        src = Path(text)
        if src.is_file():
            total += src.stat().st_size
        elif src.is_dir():
            total += sum(path.stat().st_size for path, _ in walk_files(src))
        else:
            raise NotFound(f"{text!r} does not exist on this machine; nothing was uploaded", path=text)
    return total


def put(
    ctx: typer.Context,
    sources: Annotated[
        list[str],
        typer.Argument(metavar="SRC", help="Files and directories to upload.", show_default=False),
    ],
    folder: FolderArg,
    meta: MetaOption = None,
    parents: Annotated[
        bool, typer.Option("--parents", "-p", help="Create FOLDER (and its missing parents) if it does not exist.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the new versions as JSON on stdout.")] = False,
) -> None:
    """Upload files and whole directories into FOLDER (which must exist, unless `-p` is given).

    A directory is uploaded with its subfolders kept: `datamill put run-7/ "Raw Data"` makes
    `Raw Data/run-7/...`. Left out of a directory: version control (`.git`, `.hg`, `.svn`),
    virtual environments, `__pycache__`, `.DS_Store`, datamill homes, and what the directory's
    `.datamillignore` names (`.gitignore` syntax; `!pattern` brings a default back). Uploading a
    name that exists adds a new version. An interrupted upload removes the folders it created
    while they are still empty. Large transfers show a progress bar on stderr; `datamill -v put
    ...` lists each file and each path left out. Example:

        datamill put a.csv more-data/ "Raw Data/2026" --meta instrument=xrd-1
    """
    metadata = parse_pairs(meta) or None
    client = get_client(ctx)
    verbose = get_state(ctx).verbose
    total = _local_bytes(sources)
    done: list[VersionInfo] = []
    skipped: list[Path] = []

    def on_file(path: Path, info: VersionInfo) -> None:
        if verbose:
            say(f"  {path} -> {info.path} v{info.version} ({human_size(info.size)})")

    def on_skip(path: Path) -> None:
        skipped.append(path)
        if verbose:
            say(f"  {path} left out (ignore rules)")

    with transfer_progress(total, "uploading") as progress:
        for src in sources:
            done += client.put_path(
                src, folder, metadata=metadata, progress=progress, on_file=on_file, parents=parents, on_skip=on_skip
            )
    if json_:
        print_json([v.to_dict() for v in done])
    n = len(done)
    left_out = ""
    if skipped:
        kinds = sorted({p.name for p in skipped})
        names = ", ".join(kinds[:5]) + (", ..." if len(kinds) > 5 else "")
        plural = "s" if len(skipped) != 1 else ""
        left_out = f"; left out {len(skipped)} path{plural} ({names}; see -v, .datamillignore)"
    say(
        f"uploaded {n} file{'s' if n != 1 else ''} ({human_size(sum(v.size for v in done))}) "
        f"to {folder.strip('/')!r}{left_out}"
    )


def get(
    ctx: typer.Context,
    path: ItemPath,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="DEST",
            help="File or directory to write to; `-` writes the bytes to stdout. Default: the item's name "
            "in the current directory.",
        ),
    ] = None,
    version: Annotated[
        int | None,
        typer.Option(
            "--version", metavar="N", min=1, max=INT64_MAX, help="Version to fetch; the current one by default."
        ),
    ] = None,
    parents: Annotated[bool, typer.Option("--parents", "-p", help="Create the missing directories of DEST.")] = False,
) -> None:
    """Download an item (its current version, or `--version N`).

    The bytes are checked against the version's digest as they arrive; a file is written under
    a temporary name and renamed at the end, so an interrupted download never leaves a partial
    file. The file's mode follows the umask, like any new file. DEST's directory must exist
    unless `--parents` is given. Examples:

        datamill get "Raw Data/a.csv" -o copy.csv --version 1
        datamill get "Raw Data/a.csv" -o - | head
    """
    client = get_client(ctx)
    if output == "-":
        _to_stdout(client, path, version)
        return
    size = client.version(path, version).size if stderr().is_terminal else 0
    dest = Path(output) if output else Path.cwd()
    with transfer_progress(size, "downloading") as progress:
        info = client.download(path, dest, version, progress=progress, parents=parents)
    target = dest / info.name if dest.is_dir() else dest
    say(f"saved {info.path!r} v{info.version} ({human_size(info.size)}) to {str(target)!r}")


def _to_stdout(client: Client, path: str, version: int | None) -> None:
    """Stream a version's bytes to stdout, checking the digest at the end."""
    info, chunks = client.iter_bytes(path, version)
    out = typer.get_binary_stream("stdout")
    h = hasher()
    for chunk in chunks:
        h.update(chunk)
        out.write(chunk)
    out.flush()
    if f"blake3:{h.hexdigest()}" != info.digest:
        raise BlobCorrupted(
            f"the bytes received for {path!r} do not match digest {info.digest}; do not trust the output",
            digest=info.digest,
        )


def list_items(
    ctx: typer.Context,
    folder: FolderArg,
    json_: JsonFlag = False,
    page_size: Annotated[
        int | None,
        typer.Option(
            "--page-size",
            metavar="N",
            min=1,
            max=10_000,
            help="Items read at a time (default: 1,000 first, then 10,000).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """List the items of FOLDER: name, current version, size, type and last update.

    Subfolders are shown first, with a trailing `/`. With `--json` only the items are printed
    (subfolders: `datamill folder ls FOLDER --json`). A large folder is read and printed a page
    at a time; a later page's columns widen if its rows are wider.
    """
    client = get_client(ctx)
    # Page by page (a page read when the previous one has been printed): a large folder starts
    # printing at once and is never held whole in memory.
    pages = client.iter_item_pages(folder, limit=page_size or FIRST_PAGE, then=page_size or LATER_PAGES)
    first = next(pages)
    if json_:
        print_json_items(i.to_dict() for page in itertools.chain([first], pages) for i in page)
        return
    table = TableStream(["name", "version", "size", "type", "updated"])
    rows = [(f"{f.name}/", "", "", "folder", human_time(f.updated_at)) for f in client.list_folders(folder)]
    for page in itertools.chain([first], pages):
        rows += [(i.name, str(i.version), human_size(i.size), i.content_type, human_time(i.updated_at)) for i in page]
        table.add(rows)
        rows = []
    if not table.widths:
        say(f"folder {folder.strip('/')!r} is empty")


def versions(ctx: typer.Context, path: ItemPath, json_: JsonFlag = False) -> None:
    """List all versions of an item, oldest first: size, digest, who made it and how."""
    found = get_client(ctx).versions(path)
    if json_:
        print_json([v.to_dict() for v in found])
        return
    print_table(
        ["version", "size", "digest", "by", "via", "created"],
        [
            (
                str(v.version),
                human_size(v.size),
                _short(v.digest),
                v.created_by or "-",
                v.created_via,
                human_time(v.created_at),
            )
            for v in found
        ],
    )


def _short(digest: str) -> str:
    """``blake3:0123456789abcdef...`` -> ``blake3:0123456789ab``."""
    algo, _, hexdigest = digest.partition(":")
    return f"{algo}:{hexdigest[:12]}" if hexdigest else digest[:19]


def metadata(
    ctx: typer.Context,
    path: ItemPath,
    pairs: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="KEY=VALUE",
            help="Keys to set; VALUE is parsed as JSON when valid (`n=3`, `tags='[\"a\"]'`), else taken as a string.",
        ),
    ] = None,
    unset: UnsetOption = None,
    json_: JsonFlag = False,
) -> None:
    """Show an item's metadata, or set and remove keys (no new version is made).

    Without KEY=VALUE or `--unset` it prints the metadata. Example:

        datamill meta "Raw Data/a.csv" operator=ana n=3 'tags=["a"]' --unset draft
    """
    client = get_client(ctx)
    changes = parse_pairs(pairs, "KEY=VALUE")
    show_or_change_metadata(
        changes,
        unset or [],
        lambda: client.set_metadata(path, changes, unset or ()),
        lambda: client.item(path),
        lambda info: repr(info.path),
        json_,
    )


def find(
    ctx: typer.Context,
    folder: FolderArg,
    name: Annotated[
        str | None, typer.Option("--name", metavar="GLOB", help="Item names matching this glob, e.g. `'*.csv'`.")
    ] = None,
    meta: Annotated[
        list[str] | None,
        typer.Option(
            "--meta",
            "-m",
            metavar="KEY=VALUE",
            help="Only items whose metadata has KEY equal to VALUE (parsed as JSON when valid); repeatable.",
        ),
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Search subfolders too.")] = True,
    json_: JsonFlag = False,
) -> None:
    """Find items below FOLDER by name and metadata.

    Example:

        datamill find "Raw Data" --name '*.csv' --meta instrument=xrd-1 --json
    """
    found = get_client(ctx).find(folder, name=name, metadata=parse_pairs(meta) or None, recursive=recursive)
    if json_:
        print_json([i.to_dict() for i in found])
        return
    _print_items(found)


def _print_items(found: list[ItemInfo]) -> None:
    print_table(
        ["path", "version", "size", "type", "updated"],
        [(i.path, i.version, human_size(i.size), i.content_type, human_time(i.updated_at)) for i in found],
        empty="no items found",
    )


def remove(ctx: typer.Context, path: ItemPath) -> None:
    """Delete an item with all its versions."""
    get_client(ctx).delete_item(path)
    say(f"deleted {path.strip('/')!r}")


def register(app: typer.Typer) -> None:
    """Add the item commands to the root command."""
    app.command("put", rich_help_panel=PANEL)(put)
    app.command("get", rich_help_panel=PANEL)(get)
    app.command("ls", rich_help_panel=PANEL)(list_items)
    app.command("versions", rich_help_panel=PANEL)(versions)
    app.command("meta", rich_help_panel=PANEL)(metadata)
    app.command("find", rich_help_panel=PANEL)(find)
    app.command("rm", rich_help_panel=PANEL)(remove)
