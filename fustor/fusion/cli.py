"""``fustor fusion ...`` commands."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import click

from fustor.cli_util import friendly


def default_data_dir() -> Path:
    from fustor.config import fustor_home

    return fustor_home() / "data"


@click.group()
def fusion() -> None:
    """The fusion server: ingest from agents, arbitration, the query API."""


@fusion.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the view stores live [default: $FUSTOR_HOME/data, i.e. ~/.fustor/data].")
@click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path), default=None,
              help="A YAML file or a directory of them [default: $FUSTOR_HOME/fusion-config/ if it "
                   "holds any; else one default receiver, view and pipe].")
@click.option("-h", "--host", default=None, help="Listen address of the main port [default: from config, 0.0.0.0].")
@click.option("-p", "--port", type=int, default=None, help="Main port (query API) [default: from config, 8101].")
@click.option("-V", "--verbose", is_flag=True, help="Debug logging.")
@friendly
def serve(data_dir: Path | None, config_path: Path | None, host: str | None, port: int | None,
          verbose: bool) -> None:
    """Run fusion in the foreground until Ctrl-C or SIGTERM."""
    from fustor.config import default_config, fustor_home, load_fusion_config
    from fustor.fusion.core import Fusion
    from fustor.fusion.server import serve as run

    data_dir = data_dir or default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    cfg_dir = fustor_home() / "fusion-config"
    if config_path is None and cfg_dir.is_dir() and any(cfg_dir.glob("*.y*ml")):
        config_path = cfg_dir
    cfg = load_fusion_config(config_path) if config_path else default_config(data_dir)
    logging.basicConfig(level=logging.DEBUG if verbose else _level(cfg.logging),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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

    asyncio.run(run(f, host, port, on_ready=ready,
                    pid_file=fustor_home() / "fusion.pid" if os.environ.get("FUSTOR_PID_FILE", "1") == "1" else None))


def _level(value) -> int:
    name = value.get("level", "INFO") if isinstance(value, dict) else str(value or "INFO")
    return getattr(logging, name.upper(), logging.INFO)
