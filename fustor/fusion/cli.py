"""``fustor fusion ...`` commands."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import click

from fustor.cli_util import friendly, setup_logging
from fustor.errors import FustorError


def default_data_dir() -> Path:
    from fustor.config import fustor_home

    return fustor_home() / "data"


@click.group()
def fusion() -> None:
    """The fusion server: ingest from agents, arbitration, the query API."""


def serve_options(fn):
    """The options shared by `serve` and `start`."""
    for opt in reversed([
        click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
                     default=None, help="Where the view stores live [default: $FUSTOR_HOME/data, "
                     "i.e. ~/.fustor/data]."),
        click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path),
                     default=None, help="A YAML file or a directory of them [default: "
                     "$FUSTOR_HOME/fusion-config/ if it holds any; else one default receiver, view "
                     "and pipe]."),
        click.option("-h", "--host", default=None,
                     help="Listen address of the main port [default: from config, 0.0.0.0]."),
        click.option("-p", "--port", type=int, default=None,
                     help="Main port (query API) [default: from config, 8101]."),
        click.option("-V", "--verbose", is_flag=True, help="Debug logging."),
        click.option("--watch", "watch_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                     default=None, help="Also run an agent in this process that indexes DIR into "
                     "the first view (one command to index a directory and serve it)."),
    ]):
        fn = opt(fn)
    return fn


@fusion.command()
@serve_options
@friendly
def serve(data_dir, config_path, host, port, verbose, watch_dir) -> None:
    """Run fusion in the foreground until Ctrl-C or SIGTERM (SIGHUP reloads the config)."""
    _serve(data_dir, config_path, host, port, verbose, watch_dir)


@fusion.command()
@serve_options
@click.option("-D", "--daemon", is_flag=True,
              help="Run in the background; output goes to $FUSTOR_HOME/logs/fusion.log.")
@friendly
def start(data_dir, config_path, host, port, verbose, watch_dir, daemon) -> None:
    """Start fusion (in the foreground unless -D); same options as `serve`."""
    from fustor.config import fustor_home
    from fustor.pidfile import start_daemon

    if not daemon:
        return _serve(data_dir, config_path, host, port, verbose, watch_dir)
    home = fustor_home()
    args = ["fusion", "serve"]
    for flag, value in (("--data", data_dir), ("--config", config_path), ("--host", host),
                        ("--port", port), ("--watch", watch_dir)):
        if value is not None:
            args += [flag, str(value)]
    if verbose:
        args.append("--verbose")
    click.echo(start_daemon("Fusion", home / "fusion.pid", args, home / "logs" / "fusion.log"))


@fusion.command()
@friendly
def stop() -> None:
    """Stop the running fusion (SIGTERM, then SIGKILL after 30 s)."""
    from fustor.config import fustor_home
    from fustor.pidfile import stop_message

    click.echo(stop_message("Fusion", fustor_home() / "fusion.pid"))


@fusion.command()
@friendly
def reload() -> None:
    """Re-read the YAML config (SIGHUP): views, pipes and receivers change without a restart."""
    from fustor.config import fustor_home
    from fustor.pidfile import reload_message

    click.echo(reload_message("Fusion", fustor_home() / "fusion.pid"))


@fusion.command()
@friendly
def status() -> None:
    """RUNNING (PID) or STOPPED."""
    from fustor.config import fustor_home
    from fustor.pidfile import running_pid

    pid = running_pid(fustor_home() / "fusion.pid")
    click.echo(f"RUNNING (PID: {pid})" if pid else "STOPPED")


def _serve(data_dir: Path | None, config_path: Path | None, host: str | None,
           port: int | None, verbose: bool, watch_dir: Path | None = None) -> None:
    from fustor.config import default_config, fustor_home, load_fusion_config
    from fustor.fusion.core import Fusion
    from fustor.fusion.server import serve as run

    data_dir = data_dir or default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    cfg_dir = fustor_home() / "fusion-config"
    if config_path is None and cfg_dir.is_dir() and any(cfg_dir.glob("*.y*ml")):
        config_path = cfg_dir
    cfg = load_fusion_config(config_path) if config_path else default_config(data_dir)
    setup_logging(cfg.logging, verbose)
    for item in getattr(cfg, "ignored", []):
        logging.getLogger("fustor.config").info("ignored config key (not used by this fusion): %s", item)
    host = host or cfg.host
    port = port or cfg.port
    f = Fusion(cfg, data_dir)
    f.open()

    def ready() -> None:
        click.echo(f"fusion listening on http://{host}:{port} (data in {data_dir})")
        keys = getattr(cfg, "generated_keys", None)
        if keys:
            rport = next(iter(cfg.receivers.values())).port
            click.echo(f"  ingest key: {keys['ingest']}")
            click.echo(f"  query key:  {keys['query']}")
            click.echo(f"  point an agent at it: fustor agent start --watch DIR "
                       f"--fusion http://HOST:{rport} --key {keys['ingest']}")
            click.echo(f"  query: curl -H 'X-API-Key: {keys['query']}' "
                       f"http://127.0.0.1:{port}/api/v1/views/default/stats")

    loader = (lambda: load_fusion_config(config_path)) if config_path else None
    companion = _embedded_agent(cfg, port, watch_dir) if watch_dir else None
    asyncio.run(run(f, host, port, on_ready=ready, load_config=loader, companion=companion,
                    pid_file=fustor_home() / "fusion.pid" if os.environ.get("FUSTOR_PID_FILE", "1") == "1" else None))


def _embedded_agent(cfg, port: int, watch_dir: Path):
    """An agent in this process that pushes DIR to the first pipe over loopback HTTP."""
    from fustor.agent.config import quick_config
    from fustor.agent.daemon import Agent

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
            import asyncio as _a

            await _a.Event().wait()
        finally:
            await agent.stop()

    return run
