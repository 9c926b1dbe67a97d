"""``datamill lineage``: what an item version was derived from, or (``--down``) what was derived from it.

On a local home the query runs here, on the home and as the acting user; against a server it calls
``GET /api/v1/lineage/{path}``. Formats: an indented ``tree`` (default), ``json``, W3C PROV
(``prov-json``, ``prov-n``) and ``ro-crate`` (the run that generated the item, with its files, as a
directory or, when ``-o`` ends in ``.zip``, a zip file).
"""

from pathlib import Path, PurePosixPath
from typing import Annotated

import typer

from datamill.cli.context import get_client
from datamill.cli.output import say
from datamill.errors import InvalidInput
from datamill.limits import INT64_MAX

#: What ``--format`` takes.
FORMATS = ("tree", "json", "prov-json", "prov-n", "ro-crate")


def _default_crate_path(path: str) -> Path:
    """``Out/a.report.txt`` -> ``./a.report.txt.ro-crate``."""
    return Path(f"{PurePosixPath(path).name}.ro-crate")


def _check_crate_dest(dest: Path) -> None:
    """A crate directory must be new or empty; a zip file may be replaced."""
    if dest.suffix.lower() != ".zip" and dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidInput(f"{dest} exists and is not an empty directory; choose another -o", path=str(dest))


def lineage(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(metavar="FOLDER/ITEM", help="The item, e.g. 'Derived Data/a.report.txt'.")],
    version: Annotated[
        int | None,
        typer.Option("--version", metavar="N", min=1, max=INT64_MAX, help="This version (default: the current one)."),
    ] = None,
    down: Annotated[
        bool, typer.Option("--down", help="Show what was derived from it instead of what it was derived from.")
    ] = False,
    depth: Annotated[
        int | None,
        typer.Option("--depth", metavar="N", min=1, max=INT64_MAX, help="Follow at most N tasks (default: all)."),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="tree (default), json, prov-json, prov-n (W3C PROV), or ro-crate (the generating run's RO-Crate).",
        ),
    ] = "tree",
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            metavar="PATH",
            help="Write here instead of stdout. For ro-crate: a directory, or a .zip file (default ./ITEM.ro-crate).",
        ),
    ] = None,
) -> None:
    """Show an item version's provenance: the runs, tasks and input versions it came from.

    Items in folders you may not read appear as `(not visible)`. Examples:
    `datamill lineage "Derived Data/a.report.txt"`,
    `datamill lineage "Raw Data/a.csv" --version 1 --down`,
    `datamill lineage "Derived Data/total.json" --format prov-n -o total.provn`,
    `datamill lineage "Derived Data/total.json" --format ro-crate -o total-crate.zip`
    """
    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    dest = output
    if fmt == "ro-crate":
        dest = output or _default_crate_path(path)
        _check_crate_dest(dest)
    client = get_client(ctx)
    text = None
    if dest is not None and fmt == "ro-crate":
        client.export_crate(path, dest, version)
    else:
        text = client.lineage(path, version, down, depth, fmt)
    if text is None:
        say(f"wrote the RO-Crate of the run that made {path} to {dest}")
    elif output is not None:
        output.write_text(text, encoding="utf-8")
        say(f"wrote {fmt} lineage of {path} to {output}")
    else:
        typer.echo(text, nl=False)


def register(app: typer.Typer) -> None:
    """Add ``lineage`` to the root command."""
    app.command("lineage", rich_help_panel="Provenance")(lineage)
