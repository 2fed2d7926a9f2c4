"""The ``fustor`` command line: thin click wrappers around library calls."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from fustor.agent.cli import agent
from fustor.cli_backup import backup, restore
from fustor.cli_index import COMMANDS as INDEX_COMMANDS
from fustor.cli_util import friendly
from fustor.errors import FustorError
from fustor.fusion.cli import fusion
from fustor.protocol import dumps


def _echo_json(obj) -> None:
    click.echo(dumps(obj, indent=True).decode())


def embedded_agent(cfg, watch_dir: Path):
    """`fustor fusion serve --watch DIR`: an agent in the fusion process that pushes DIR to
    the first pipe over loopback HTTP. Wired here, so that fusion never imports the agent."""
    from fustor.agent.config import quick_config
    from fustor.agent.daemon import Agent

    if cfg.tls:  # its certificate is for the site's name, not for the loopback address
        raise FustorError("--watch pushes over loopback HTTP, but this fusion serves TLS; run "
                          "the agent on its own: fustor agent start --watch DIR --fusion "
                          "https://HOST:PORT --ca-file CA.pem")
    pipe_id = next(iter(cfg.pipes), None)
    if pipe_id is None:
        raise FustorError("--watch needs a pipe in the fusion config")
    receiver = cfg.receivers[cfg.pipes[pipe_id].receiver]
    key = next((k.key for k in receiver.api_keys if k.pipe_id == pipe_id), None)
    if key is None:
        raise FustorError(f"--watch needs an api key of pipe {pipe_id!r} on its receiver")
    url = f"http://127.0.0.1:{receiver.port}"

    async def run() -> None:
        agent = Agent(quick_config(watch_dir.resolve(), url, key))
        click.echo(f"  indexing {watch_dir} into view {cfg.pipes[pipe_id].views[0]!r}")
        try:
            await agent.start()
            await asyncio.Event().wait()
        finally:
            await agent.stop()

    return run


WIRING = {"embedded_agent": embedded_agent}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fustor")
@click.pass_context
def main(ctx: click.Context) -> None:
    """fustor: a live, queryable, persistent index of file metadata.

    Run `fustor fusion --help` for the server, `fustor agent --help` for the
    agent that feeds it, `fustor inspect FILE.lmdb` to read a store offline.
    """
    ctx.obj = WIRING


@main.command()
@click.argument("store", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--path", "node_path", default=None, help="Show this node and its first children.")
@click.option("--limit", default=100, show_default=True, help="Children to show with --path.")
@click.option("--verify", is_flag=True, help="Recompute every directory's aggregates by a scan and check "
              "the name index against the nodes; exit 1 on any mismatch.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
@friendly
def inspect(store: Path, node_path: str | None, limit: int, verify: bool, as_json: bool) -> None:
    """Read a store file offline: format, tree id, counts, size on disk, stats of /.

    Opens STORE read-only, so it is safe while a server writes to it. It works on a
    backup (`fustor backup`) and on a plain copy of a stopped server's file; a copy
    taken while the server wrote is reported as torn.
    """
    from fustor.store.inspect import report_isolated

    out = report_isolated(store, node_path=node_path, limit=limit, check=verify,
                          progress=verify and sys.stderr.isatty() and not as_json)
    if node_path is not None and out["node"] is None:
        raise FustorError(f"path {node_path!r} is not in {store}")
    if as_json:
        _echo_json(out)
    else:
        _print_summary(out)
    if verify and out["verify"]["problem_count"]:
        sys.exit(1)


def _show(text: str) -> str:
    """A path for the terminal: bytes that are not UTF-8 shown as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _print_summary(out: dict) -> None:
    s = out["stats"]
    click.echo(f"store          {out['path']}")
    click.echo(f"format         {out['format_version']}   tree id {out['tree_id']}")
    click.echo(f"nodes          {out['nodes']:,} ({out['files']:,} files, {out['dirs']:,} dirs)")
    click.echo(f"size on disk   {out['disk_bytes']:,} bytes")
    click.echo(f"stats of /     total_size {s['total_size']:,}  latest_mtime {s['latest_mtime']}")
    click.echo(
        f"state          {out['tombstones']} tombstones, {out['suspects']} suspects, "
        f"{out['blind_additions']} blind additions, {out['blind_deletions']} blind deletions"
    )
    ix = out.get("name_index")
    if ix:
        click.echo(f"name index     {ix['entries']:,} entries, {ix['blocks']:,} name blocks, "
                   f"{ix['stale_names']:,} stale names")
    if "node" in out:
        n = out["node"]["node"]
        kind = "dir " if n["is_dir"] else "file"
        click.echo(f"\n{kind} {_show(n['path'])}  size {n['size']}  mtime {n['modified_time']}")
        a = out["node"].get("aggregate")
        if a:
            click.echo(f"     {a['child_count']:,} children  last change {a['last_change_at']}  "
                       f"digest {a['digest']}  without mtimes {a['digest_nomtime']}")
        for c in out["node"].get("children", []):
            click.echo(f"  {'d' if c['is_dir'] else '-'} {c['size']:>14,}  {c['modified_time']:<18} {_show(c['name'])}")
        if out["node"].get("more_children"):
            click.echo("  ... (more; raise --limit)")
    if "verify" in out:
        v = out["verify"]
        if v["ok"]:
            click.echo("verify         ok: every aggregate matches a full recount, and the name "
                       "index the nodes")
        else:
            click.echo(f"verify         {v['problem_count']} problem(s):")
            for p in v["problems"][:20]:
                click.echo(f"  {_show(p['path'])}: {p['problem']}")


@main.command()
@click.argument("directory", type=click.Path(exists=True, path_type=Path))
@friendly
def migrate(directory: Path) -> None:
    """Upgrade every store under DIRECTORY (or one store file) to this fustor's format.

    Stop the fusion server first. Each store is rewritten into a new file that
    replaces the original only when complete; the original is kept beside it as
    NAME.lmdb.formatN.bak.
    """
    from fustor.datadir import refuse_if_in_use
    from fustor.migrations import find_stores, migrate_store

    refuse_if_in_use(directory, "a migration")  # it would lose the running fusion's writes
    stores = find_stores(directory)
    if not stores:
        click.echo(f"no *.lmdb stores under {directory}")
        return
    failed = 0
    for path in stores:
        try:
            applied = migrate_store(path, progress=lambda s, p=path: click.echo(f"  {p.name}: {s}", err=True))
        except FustorError as exc:  # report it and go on with the other stores
            click.echo(f"error: {exc.message}", err=True)
            failed += 1
            continue
        if applied:
            for line in applied:
                click.echo(f"{path}: applied {line}")
        else:
            click.echo(f"{path}: up to date")
    if failed:
        sys.exit(1)


main.add_command(fusion)
main.add_command(agent)
main.add_command(backup)
main.add_command(restore)
for _command in INDEX_COMMANDS:  # find, du, ls, stat, compare, locate
    main.add_command(_command)


def fusion_main() -> None:
    """Entry point of the ``fustor-fusion`` alias."""
    fusion(prog_name="fustor-fusion", obj=WIRING)


def agent_main() -> None:
    """Entry point of the ``fustor-agent`` alias."""
    agent(prog_name="fustor-agent")


if __name__ == "__main__":  # pragma: no cover
    main()
