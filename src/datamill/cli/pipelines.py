"""``datamill pipelines ls|add|rm``: the registered pipelines runs and dataflows choose by name.

Installed packages register theirs (entry points in the group ``datamill.pipelines``); a site
admin registers more with ``add``. Users who are not site admins run only registered pipelines.
"""

from typing import Annotated

import typer

from datamill.cli.context import get_client
from datamill.cli.output import print_json, print_table, say
from datamill.cli.params import JsonFlag

app = typer.Typer(
    help="Registered pipelines: the ones users run by name (site admins register and remove them).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="1-100 letters, digits, `_` or `-`, e.g. `wordcount`.")]


@app.command("ls")
def list_pipelines(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """List the registered pipelines: name, where it comes from, its steps and description.

    Run one by name: `datamill run NAME --on FOLDER --to FOLDER`. Site admins also see each one's
    reference (`--json`: `ref`).
    """
    found = get_client(ctx).pipelines()
    if json_:
        print_json(found)
        return
    rows = []
    for p in found:
        origin = f"package {p['package']}" if p.get("package") else p.get("origin", "")
        steps = f"(does not load: {p['error']})" if p.get("error") else " -> ".join(p.get("steps") or [])
        rows.append((p["name"], origin, steps, p.get("description", "")))
    print_table(
        ["name", "from", "steps", "description"],
        rows,
        empty="no registered pipelines; a site admin registers one with `datamill pipelines add NAME REF`",
    )


@app.command("add")
def add_pipeline(
    ctx: typer.Context,
    name: NameArg,
    ref: Annotated[
        str,
        typer.Argument(
            metavar="REF", help="What to load: `module:attr`, `path/file.py:attr` or `path/file.yaml` (on the server)."
        ),
    ],
    description: Annotated[
        str, typer.Option("--description", metavar="TEXT", help="Shown in listings; the pipeline's own by default.")
    ] = "",
    json_: JsonFlag = False,
) -> None:
    """Register the pipeline REF as NAME (site admins only); it is loaded once to check it.

    From then on anyone runs it by name, and no one needs to give a reference. Example:

        datamill pipelines add wordcount /srv/pipelines/wordcount.py:pipeline
    """
    info = get_client(ctx).add_pipeline(name, ref, description)
    if json_:
        print_json(info)
    say(f"registered pipeline {info['name']!r}")


@app.command("rm")
def remove_pipeline(ctx: typer.Context, name: NameArg) -> None:
    """Remove a pipeline a site admin registered (site admins only).

    Runs already made keep their results; dataflows that name it stop with an error at their next run.
    An installed package's pipelines stay until the package is uninstalled.
    """
    get_client(ctx).remove_pipeline(name)
    say(f"removed pipeline {name!r}")


def register(root: typer.Typer) -> None:
    """Add the ``pipelines`` group to the root command."""
    root.add_typer(app, name="pipelines", rich_help_panel="Pipelines and runs")
