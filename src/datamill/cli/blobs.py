"""``datamill blobs migrate|gc``: move a home's blobs to another store; remove what nothing refers to."""

from typing import Annotated

import typer

from datamill.cli.context import get_state
from datamill.cli.output import say, stderr
from datamill.errors import InvalidInput

app = typer.Typer(
    help="The home's blob store: move its blobs to S3, remove unreferenced ones.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


def _local_home(ctx: typer.Context):  # type: ignore[no-untyped-def]
    state = get_state(ctx)
    if state.url:
        raise InvalidInput("`datamill blobs` works on a local home (run it where the home is); drop --url")
    from datamill.config import load_settings
    from datamill.home import Home

    return Home(load_settings(state.profile, home=state.home))


@app.command("migrate")
def migrate(
    ctx: typer.Context,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="URL",
            help="Where the blobs go: s3://BUCKET[/PREFIX]. Endpoint and credentials come from the s3_* "
            "settings (or AWS_* variables), as for blob_url.",
        ),
    ],
) -> None:
    """Copy every blob of the home to another blob store, checking each digest on the way.

    Resumable: blobs already there are skipped, so run it again after an interruption. Stop the
    server first (or run it again after the last upload), then set `blob_url` to the new store.
    """
    from datamill.store.blob_migration import migrate_blobs
    from datamill.store.blobs import open_blob_store

    home = _local_home(ctx)
    try:
        if to.rstrip("/") == home.settings.resolved_blob_url.rstrip("/"):
            raise InvalidInput(f"the home's blobs are already in {to}")
        target = open_blob_store(to, home.settings)
        err = stderr()

        def progress(report, digest: str) -> None:  # type: ignore[no-untyped-def]
            done = report.copied + report.skipped + len(report.problems)
            if done % 100 == 0 or done == report.total:
                err.print(f"{done}/{report.total} blobs ({report.bytes_copied / 1e6:.1f} MB copied)")

        report = migrate_blobs(home.db, home.blobs, target, progress)
    finally:
        home.close()
    say(f"{report.copied} copied, {report.skipped} already there, {len(report.problems)} failed, of {report.total}")
    for digest, why in sorted(report.problems.items()):
        say(f"  {digest}: {why}")
    if not report.ok:
        say("Fix or remove those items (or restore their blobs), then run the migration again.")
        raise typer.Exit(1)
    say(f"Done. Point the home at the new store: set blob_url = {to!r} in datamill.toml (or DATAMILL_BLOB_URL).")


@app.command("gc")
def gc(ctx: typer.Context) -> None:
    """Remove blobs no version or task refers to, and temporary files of writes that never finished."""
    from datamill.store.garbage import collect_garbage

    home = _local_home(ctx)
    try:
        removed = collect_garbage(home.db, home.blobs)
        stale = home.blobs.clean_tmp()
    finally:
        home.close()
    say(f"{removed} unreferenced blobs removed, {stale} left-over temporary uploads removed")


def register(root: typer.Typer) -> None:
    """Add ``blobs`` to the root command."""
    root.add_typer(app, name="blobs", rich_help_panel="Server and settings")
