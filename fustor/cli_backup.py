"""``fustor backup`` and ``fustor restore``: thin wrappers around fustor/backup.py."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fustor.cli_util import friendly


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _progress(tty: bool):
    """Progress lines on stderr: live on a terminal, one line per store otherwise."""
    def show(ev: dict) -> None:
        kind = ev["event"]
        if kind == "copying" and tty:
            pct = f" {100 * ev['bytes'] / ev['of']:.0f}% of {_mb(ev['of'])}" if ev["of"] else ""
            click.echo(f"\r  {ev['store']}: {_mb(ev['bytes'])}{pct}   ", nl=False, err=True)
        elif kind == "copied":
            click.echo(f"{chr(13) if tty else ''}  {ev['store']}: {_mb(ev['bytes'])} copied"
                       + " " * 20, err=True)
        elif kind in ("verifying", "restoring"):
            click.echo(f"  {kind} {ev['store']}", err=True)

    return show


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--view", default=None, help="Back up only this view (all members of a forest).")
@click.option("--no-compact", is_flag=True,
              help="Copy every page as it is instead of compacting (faster, larger).")
@friendly
def backup(data_dir: Path, dest: Path, view: str | None, no_compact: bool) -> None:
    """Back up the view stores of DATA_DIR into the new directory DEST, consistently,
    while fusion runs (or not): LMDB's own copy of each store, checked, with a manifest
    (views, files, sizes, digests, stats of /, time); complete when DEST exists."""
    from fustor.backup import backup as run

    m = run(data_dir, dest, view=view, compact=not no_compact,
            progress=_progress(sys.stderr.isatty()))
    rate = f", {m['mb_per_s']} MB/s" if m["mb_per_s"] else ""
    click.echo(f"backup of {len(m['stores'])} store(s) of {len(m['views'])} view(s), "
               f"{_mb(m['bytes'])}, in {dest} ({m['seconds']:.1f} s{rate})")


@click.command()
@click.argument("backup_dir", metavar="BACKUP",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--view", default=None, help="Restore only this view.")
@click.option("--replace", is_flag=True,
              help="Overwrite stores that exist in DATA_DIR (otherwise refused).")
@friendly
def restore(backup_dir: Path, data_dir: Path, view: str | None, replace: bool) -> None:
    """Restore the stores of BACKUP into DATA_DIR. Refuses while a fusion uses DATA_DIR;
    checks every store (digest, format, a recount of its aggregates, the manifest's
    figures) before it puts any in place."""
    from fustor.backup import restore as run

    out = run(backup_dir, data_dir, view=view, replace=replace,
              progress=_progress(sys.stderr.isatty()))
    for path in out["restored"]:
        click.echo(f"restored {path}{' (replaced)' if path in out['replaced'] else ''}")
    if out["keys_restored"]:
        click.echo("restored keys.yaml")
    click.echo(f"{len(out['restored'])} store(s), {_mb(out['bytes'])} in {data_dir}; "
               "start fusion on it")
