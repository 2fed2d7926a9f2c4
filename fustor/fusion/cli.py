"""``fustor fusion ...`` commands."""

from __future__ import annotations

import asyncio
import gc
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
    """The arguments and options shared by `serve` and `start`."""
    for opt in reversed([
        click.argument("targets", nargs=-1, metavar="[TARGETS]..."),
        click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
                     default=None, help="Where the view stores live [default: $FUSTOR_HOME/data, "
                     "i.e. ~/.fustor/data]."),
        click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path),
                     default=None, help="A YAML file or a directory of them [default: "
                     "$FUSTOR_HOME/fusion-config/ if it holds any; else one default receiver, view "
                     "and pipe]."),
        click.option("-h", "--host", default=None,
                     help="Listen address of the main port [default: from config, 0.0.0.0]."),
        click.option("-p", "--port", type=int, default=None, envvar="FUSTOR_FUSION_PORT",
                     show_envvar=True,
                     help="Main port (query API) [default: from config, 8101]."),
        click.option("--receiver-port", type=click.IntRange(1, 65535), default=None,
                     help="Zero-config only: port of the default receiver, where agents "
                     "connect [default: 8102; the main port also takes agents]."),
        click.option("-V", "--verbose", is_flag=True, help="Debug logging."),
        click.option("--watch", "watch_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                     default=None, help="Also run an agent in this process that indexes DIR into "
                     "the first view (one command to index a directory and serve it)."),
        click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     default=None, help="PEM certificate (chain): serve HTTPS on every listener "
                     "[default: from config tls.cert_file; none = plain HTTP]."),
        click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     default=None, help="PEM private key of --tls-cert [default: from config "
                     "tls.key_file]."),
    ]):
        fn = opt(fn)
    return fn




@fusion.command()
@serve_options
@friendly
def serve(targets, data_dir, config_path, host, port, receiver_port, verbose, watch_dir,
          tls_cert, tls_key) -> None:
    """Run fusion in the foreground until Ctrl-C or SIGTERM (SIGHUP reloads the config).
    With no config it generates an ingest, a query and an admin key into DATA/keys.yaml
    and prints them once; `fustor fusion keys` shows them again. TARGETS are config files
    and pipe ids, as for `start`."""
    _serve(data_dir, config_path, host, port, verbose, watch_dir, tls_cert, tls_key,
           targets, receiver_port)


@fusion.command()
@serve_options
@click.option("-D", "--daemon", is_flag=True,
              help="Run in the background; output goes to $FUSTOR_HOME/logs/fusion.log.")
@friendly
def start(targets, data_dir, config_path, host, port, receiver_port, verbose, watch_dir,
          tls_cert, tls_key, daemon) -> None:
    """Start fusion (in the foreground unless -D); same options as `serve`. TARGETS are
    config files and pipe ids: `start my-custom-pipes.yaml` runs the pipes that file
    defines (a file of the config directory is read with the others), `start research`
    only that pipe; none: every enabled pipe."""
    from fustor.config import fustor_home
    from fustor.pidfile import running_pid, start_daemon

    if not daemon:
        return _serve(data_dir, config_path, host, port, verbose, watch_dir, tls_cert, tls_key,
                      targets, receiver_port)
    home = fustor_home()
    read, zero = _loader(data_dir or default_data_dir(), config_path, targets, receiver_port)
    if not zero:
        read()  # a broken config or target is reported here, not in the log
    if running_pid(home / "fusion.pid") is None and zero:
        # zero-config: make the keys here, so they reach this terminal and never the log
        from fustor.config import default_config

        _print_keys(default_config(data_dir or default_data_dir(), receiver_port or 8102),
                    port or 8101)
    args = ["fusion", "serve", *(str(Path(t).resolve()) if Path(t).exists() else t
                                 for t in targets)]
    for flag, value in (("--data", data_dir), ("--config", config_path), ("--host", host),
                        ("--port", port), ("--receiver-port", receiver_port),
                        ("--watch", watch_dir), ("--tls-cert", tls_cert),
                        ("--tls-key", tls_key)):
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
@click.option("--timeout", type=float, default=15.0, show_default=True,
              help="Seconds to wait for fusion to report what the reload did.")
@friendly
def reload(timeout: float) -> None:
    """Re-read the YAML config (SIGHUP): views, pipes and receivers change without a restart.
    Prints what changed, or why the new config was refused (exit 1; the old one stays)."""
    import signal
    import time

    import orjson

    from fustor.config import fustor_home
    from fustor.pidfile import running_pid

    home = fustor_home()
    result = home / RELOAD_RESULT
    before = result.stat().st_mtime_ns if result.exists() else 0
    pid = running_pid(home / "fusion.pid")
    if pid is None:
        click.echo("Fusion is not running.")
        return
    os.kill(pid, signal.SIGHUP)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if result.exists() and result.stat().st_mtime_ns != before:
            try:
                out = orjson.loads(result.read_bytes())
                break
            except orjson.JSONDecodeError:
                pass
        time.sleep(0.05)
    else:
        click.echo(f"Reload signal sent to PID {pid}; no answer within {timeout:.0f} s (a fusion "
                   "on its built-in default config has nothing to reload; see its log)")
        return
    if out.get("status") != "reloaded":
        raise FustorError(f"reload refused, the running config is kept: {out.get('detail')}")
    from fustor.fusion.control import diff_text

    click.echo(f"Reloaded (PID {pid}): {diff_text(out.get('diff') or {})}")


@fusion.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="The data directory of the zero-config fusion [default: "
              "$FUSTOR_HOME/data].")
@friendly
def keys(data_dir: Path | None) -> None:
    """Show the keys a zero-config fusion generated (ingest for agents, query for readers,
    admin for operators). With config files, the keys are the ones written there."""
    from fustor.config import KEYS_FILE, load_keys

    path = (data_dir or default_data_dir()) / KEYS_FILE
    found = load_keys(path)
    if not found:
        raise FustorError(f"no generated keys in {path}; a fusion with config files uses the "
                          "api_keys and admin_keys written in them")
    for name in ("ingest", "query", "admin"):
        if name in found:
            click.echo(f"{name + ' key:':<12} {found[name]}")


@fusion.command()
@click.argument("pipe", required=False)
@click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path),
              default=None, help="The config to read PIPE from [default: "
              "$FUSTOR_HOME/fusion-config/].")
@friendly
def status(pipe: str | None, config_path: Path | None) -> None:
    """RUNNING (PID) or STOPPED; with PIPE, also its receiver, views and ENABLED/DISABLED
    from the config."""
    from fustor.config import enabled_pipes, fustor_home, load_fusion_config
    from fustor.errors import ConfigError
    from fustor.pidfile import running_pid

    pid = running_pid(fustor_home() / "fusion.pid")
    click.echo(f"RUNNING (PID: {pid})" if pid else "STOPPED")
    if pipe is None:
        return
    cfg = load_fusion_config(_config_target(config_path))
    pc = cfg.pipes.get(pipe)
    if pc is None:
        raise ConfigError(f"{pipe}: not a configured pipe (known: {', '.join(cfg.pipes) or 'none'})")
    state = "ENABLED" if pipe in enabled_pipes(cfg) else "DISABLED"
    click.echo(f"  {pipe}: receiver {pc.receiver}, views {', '.join(pc.views) or '-'}, "
               f"{state} (Config)")


@fusion.command()
@click.argument("targets", nargs=-1, metavar="[TARGETS]...")
@click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path),
              default=None, help="A YAML file or a directory of them [default: "
              "$FUSTOR_HOME/fusion-config/].")
@friendly
def validate(targets, config_path: Path | None) -> None:
    """Check the fusion config (TARGETS as for start); exit 1 with the file and key of the
    first error, or when the config runs no pipe."""
    from fustor.config import enabled_pipes, fustor_home
    from fustor.errors import ConfigError
    from fustor.targets import legacy_notes, nothing_runs

    home = fustor_home()
    notes = legacy_notes(home, "fusion")
    for note in notes:
        click.echo(f"warning: {note}")
    if _config_target(config_path) is None and not targets:
        if notes:
            raise ConfigError(f"no config files in {home / 'fusion-config'}/, so only the "
                              "built-in default (one receiver, view and pipe named default) "
                              "would run; move the old config's settings there")
        click.echo(f"ok: no config files in {home / 'fusion-config'}/; `fusion serve` runs the "
                   "built-in default (one receiver, view and pipe named default)")
        return
    cfg = _loader(None, config_path, targets, None)[0]()
    for w in cfg.warnings:
        click.echo(f"warning: {w}")
    for item in cfg.ignored:
        click.echo(f"ignored (accepted, not used by this fusion): {item}")
    enabled = enabled_pipes(cfg)
    if not enabled and _serves(cfg):
        click.echo("warning: no enabled pipe, so agents cannot push; the views are served "
                   "read-only")
    why = nothing_runs(cfg, _serves(cfg), "fusion", " ".join(targets) or str(config_path or
                       home / "fusion-config"), home)
    if why:
        raise ConfigError(why)
    views = [v for v, vc in cfg.views.items() if not vc.disabled]
    click.echo(f"ok: {len(enabled)} enabled pipe(s), {len(views)} view(s) from "
               f"{', '.join(cfg.files)}")


@fusion.command()
def example() -> None:
    """Print a commented example fusion config."""
    from fustor.config import dump_example

    click.echo(dump_example())


RELOAD_RESULT = "fusion-reload.json"


def _config_target(config_path: Path | None) -> Path | None:
    """The config to load: the given one, else $FUSTOR_HOME/fusion-config/ if it holds any."""
    from fustor.config import fustor_home

    cfg_dir = fustor_home() / "fusion-config"
    if config_path is None and cfg_dir.is_dir() and any(cfg_dir.glob("*.y*ml")):
        return cfg_dir
    return config_path


def _print_keys(cfg, port: int) -> None:
    """The zero-config keys, printed only by the run that generated them."""
    keys = cfg.generated_keys
    if not cfg.keys_created or not keys:
        if keys:
            click.echo("  keys: `fustor fusion keys` shows them")
        return
    rport = next(iter(cfg.receivers.values())).port
    click.echo("  new keys (kept in DATA/keys.yaml; `fustor fusion keys` shows them again):")
    click.echo(f"  ingest key: {keys['ingest']}")
    click.echo(f"  query key:  {keys['query']}")
    click.echo(f"  admin key:  {keys['admin']}")
    click.echo(f"  point an agent at it: fustor agent start --watch DIR "
               f"--fusion http://HOST:{rport} --key {keys['ingest']}")
    click.echo(f"  query: curl -H 'X-API-Key: {keys['query']}' "
               f"http://127.0.0.1:{port}/api/v1/views/default/stats")


def _serves(cfg) -> dict:
    """What a fusion config runs: its enabled pipes, else its enabled views (served
    read-only, e.g. restored data)."""
    from fustor.config import enabled_pipes

    return enabled_pipes(cfg) or {v: vc for v, vc in cfg.views.items() if not vc.disabled}


def _loader(data_dir: Path | None, config_path: Path | None, targets: tuple[str, ...],
            receiver_port: int | None):
    """``(load, zero_config)``: what `serve TARGETS` reads, as a function (reloads call it
    again); with no config files at all, the built-in default config."""
    from fustor.config import default_config, fustor_home, load_fusion_config
    from fustor.errors import ConfigError
    from fustor.targets import load_targets, parse_targets

    cfg_dir = fustor_home() / "fusion-config"
    parsed = parse_targets(targets, cfg_dir)
    default = _config_target(config_path)
    zero = default is None and not parsed.files
    if receiver_port is not None and not zero:
        raise ConfigError("--receiver-port sets the port of the zero-config receiver; with "
                          "config files, set receivers.<id>.port")
    if zero:
        return (lambda: load_targets(parsed, lambda _t: default_config(
            data_dir, receiver_port or 8102), cfg_dir)), True
    return (lambda: load_targets(parsed, load_fusion_config, cfg_dir, default=default)), False


def _serve(data_dir: Path | None, config_path: Path | None, host: str | None,
           port: int | None, verbose: bool, watch_dir: Path | None = None,
           tls_cert: Path | None = None, tls_key: Path | None = None,
           targets: tuple[str, ...] = (), receiver_port: int | None = None) -> None:
    from fustor.config import fustor_home
    from fustor.errors import ConfigError
    from fustor.fusion.admission import raise_open_files_limit
    from fustor.fusion.core import Fusion
    from fustor.fusion.server import serve as run
    from fustor.targets import legacy_notes, nothing_runs

    data_dir = data_dir or default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("--tls-cert and --tls-key go together: give both")
    read, zero = _loader(data_dir, config_path, targets, receiver_port)

    def load():
        c = read()
        if tls_cert:
            c.tls_cert_file, c.tls_key_file = str(tls_cert), str(tls_key)
        return c

    cfg = load()
    setup_logging(cfg.logging, verbose, fmt=cfg.log_format, log_dir=cfg.log_dir, name="fusion")
    for note in legacy_notes(fustor_home(), "fusion"):
        click.echo(f"warning: {note}", err=True)
    why = None if zero else nothing_runs(cfg, _serves(cfg), "fusion", " ".join(targets)
                                         or str(config_path or fustor_home() / "fusion-config"),
                                         fustor_home())
    if why:
        raise ConfigError(why)
    for item in getattr(cfg, "ignored", []):
        logging.getLogger("fustor.config").info("ignored config key (not used by this fusion): %s", item)
    host = host or cfg.host
    port = port or cfg.port
    soft_before = raise_open_files_limit()  # before the views open: ~3 descriptors each
    f = Fusion(cfg, data_dir)
    f.open()

    def ready() -> None:
        # What start-up built (modules, app, routes, open views) lives as long as the
        # process: freeze it, so that the collector's full passes, which requests that
        # allocate much (a compare, a big tree) trigger every few calls, walk only what
        # was made since instead of pausing every thread ~40 ms on the whole heap.
        gc.collect()
        gc.freeze()
        f.admission.log_start(data_dir, soft_before)
        scheme = "https" if cfg.tls else "http"
        click.echo(f"fusion listening on {scheme}://{host}:{port} (data in {data_dir})")
        _print_keys(cfg, port)

    loader = None if zero else load
    companion = None
    if watch_dir:
        embed = (click.get_current_context().find_root().obj or {}).get("embedded_agent")
        if embed is None:
            raise FustorError("--watch needs the agent, which the `fustor` command wires in")
        companion = embed(cfg, watch_dir)
    use_pid = os.environ.get("FUSTOR_PID_FILE", "1") == "1"
    asyncio.run(run(f, host, port, on_ready=ready, load_config=loader, companion=companion,
                    pid_file=fustor_home() / "fusion.pid" if use_pid else None,
                    reload_result=fustor_home() / RELOAD_RESULT if use_pid else None))
