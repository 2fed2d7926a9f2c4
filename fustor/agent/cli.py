"""``fustor agent ...`` commands."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path

import click
import orjson

from fustor.cli_util import friendly, setup_logging
from fustor.errors import ConfigError, FustorError


@click.group()
def agent() -> None:
    """The agent: watches a file system and keeps fusion's view of it exact."""


def _home() -> Path:
    from fustor.config import fustor_home

    return fustor_home()


def _load(configs: tuple[str, ...]):
    """The config of ``start TARGETS`` (fustor/targets.py) and a loader for reloads."""
    from fustor.agent.config import CONFIG_DIR, CONFIG_FILE, load_agent_config
    from fustor.targets import load_targets, parse_targets

    home = _home()
    targets = parse_targets(configs, home / CONFIG_DIR)

    def load():
        return load_targets(targets, load_agent_config, home / CONFIG_DIR,
                            home_file=home / CONFIG_FILE)

    return load(), load


def _nothing_runs(cfg, configs) -> str | None:
    from fustor.agent.config import CONFIG_DIR, CONFIG_FILE, enabled_pipes
    from fustor.targets import nothing_runs

    home = _home()
    where = " ".join(configs) or f"{home / CONFIG_FILE} or {home / CONFIG_DIR}/"
    return nothing_runs(cfg, enabled_pipes(cfg), "agent", where, home)


def _legacy_notes() -> list[str]:
    from fustor.targets import legacy_notes

    return legacy_notes(_home(), "agent")


def _legacy_warnings() -> None:
    for note in _legacy_notes():
        click.echo(f"warning: {note}", err=True)
        logging.getLogger("fustor.agent").warning("%s", note)


def status_line(st: dict) -> str:
    parts = []
    for pid, p in st.get("pipes", {}).items():
        snap = p.get("snapshot") or {}
        if p.get("phase") == "snapshot" and snap:
            what = f"snapshot {snap['rows']:,} rows, {snap['rows_per_s']:,} rows/s, {snap['elapsed_s']} s"
        else:
            what = f"{p.get('phase')}, {p.get('rows_pushed', 0):,} rows pushed"
            if p.get("rows_per_s"):
                what += f", {p['rows_per_s']:,} rows/s"
        err = f", last error: {p['last_error']}" if p.get("last_error") else ""
        if p.get("fusion_reachable") is False:
            err += f", fusion {p.get('fusion_url')} not reachable"
        watch = p.get("watch") or {}
        if watch.get("watch_limit_reached"):
            err += ", WATCH LIMIT REACHED (audits cover the rest)"
        parts.append(f"[{pid}] {p.get('state')} {p.get('role') or '-'}: {what}{err}")
    return " | ".join(parts) or "no pipes running"


def _read_key_file(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--key-file {path}: cannot read it: {exc}") from None
    if not key or len(key.split()) != 1:
        raise ConfigError(f"--key-file {path}: expected the key alone on one line")
    if path.stat().st_mode & 0o077:
        click.echo(f"warning: {path} can be read by other users; chmod 600 it", err=True)
    return key


@agent.command()
@click.argument("configs", nargs=-1, metavar="[TARGETS]...")
@click.option("--watch", "watch_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Zero-config: watch this directory (needs --fusion and --key).")
@click.option("--fusion", "fusion_url", default=None,
              help="Zero-config: fusion receiver URL, e.g. http://host:8102 or https://host:8102.")
@click.option("--key", default=None, envvar="FUSTOR_AGENT_KEY", show_envvar=True,
              help="Zero-config: the ingest API key fusion printed. Prefer the environment "
              "variable or --key-file: a command line is visible to every user in `ps`.")
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Zero-config: read the ingest API key from this file (mode 600).")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Zero-config, https fusion: PEM file of the CA that signed "
              "fusion's certificate [default: the system's trusted CAs].")
@click.option("--console-host", default=None,
              help="Listen address of the agent console [default: from config, 127.0.0.1].")
@click.option("--console-port", type=click.IntRange(1, 65535), default=None,
              help="Port of the agent console (status page and /status JSON) [default: from "
              "config, 8100].")
@click.option("--no-console", is_flag=True, help="Do not serve the agent console.")
@click.option("-D", "--daemon", is_flag=True, help="Run in the background; log to $FUSTOR_HOME/logs/agent.log (appended).")
@click.option("-V", "--verbose", is_flag=True, help="Debug logging.")
@friendly
def start(configs, watch_dir, fusion_url, key, key_file, ca_file, console_host, console_port,
          no_console, daemon, verbose) -> None:
    """Start the agent with the pipes of TARGETS, or with --watch DIR --fusion URL --key-file F
    and no YAML. TARGETS are config files or directories and pipe ids (`start my-pipes.yaml`
    runs the pipes that file defines; `start research` runs pipe research); none: every
    enabled pipe of $FUSTOR_HOME/agent-config.yaml and $FUSTOR_HOME/agent-config/."""
    from fustor.agent.config import KEY_ENV, console_options, quick_config
    from fustor.agent.daemon import Agent
    from fustor.pidfile import running_pid, start_daemon

    home = _home()
    pid_file = home / "agent.pid"
    if watch_dir is None and (key_file or ca_file):
        raise ConfigError("--key-file and --ca-file go with --watch; in a config file, set the "
                          "sender's credential and ca_file")
    if key_file is not None:
        source = click.get_current_context().get_parameter_source("key")
        if key and source == click.core.ParameterSource.COMMANDLINE:
            raise ConfigError("give --key or --key-file, not both")
        key = _read_key_file(key_file)
    if watch_dir is not None:
        if not fusion_url or not key:
            raise ConfigError(f"--watch needs --fusion URL and a key: --key-file FILE, {KEY_ENV} "
                              "in the environment, or --key KEY")
        cfg = quick_config(watch_dir.resolve(), fusion_url, key,
                           ca_file=str(ca_file.resolve()) if ca_file else None)
        loader = None
    else:
        cfg, loader = _load(configs)

    def console(c):
        return console_options(c, host=console_host, port=console_port, off=no_console)

    cfg = console(cfg)
    if loader is not None:
        load = loader
        loader = lambda: console(load())  # noqa: E731 - a reload keeps the command-line options
    from fustor.agent.config import enabled_pipes

    if watch_dir is None:
        _legacy_warnings()
        why = _nothing_runs(cfg, configs)
        if why:
            raise ConfigError(why)
    running = running_pid(pid_file)
    if daemon:
        if running:
            click.echo(f"Agent already running with PID: {running}")
            return
        args = ["agent", "start", *configs]
        env = {}
        if watch_dir is not None:
            # the key goes through the environment: the child's command line is public
            args += ["--watch", str(watch_dir.resolve()), "--fusion", fusion_url]
            env[KEY_ENV] = key
            if ca_file is not None:
                args += ["--ca-file", str(ca_file.resolve())]
        for flag, value in (("--console-host", console_host), ("--console-port", console_port)):
            if value is not None:
                args += [flag, str(value)]
        if no_console:
            args.append("--no-console")
        if verbose:
            args.append("--verbose")
        click.echo(start_daemon("Agent", pid_file, args, home / "logs" / "agent.log", env=env))
        return
    if running and running != os.getpid():  # our own PID: this process re-executed itself
        raise FustorError(f"an agent is already running with PID {running}; `fustor agent stop` it first")
    setup_logging(cfg.logging, verbose, fmt=cfg.log_format, log_dir=cfg.log_dir, name="agent")
    for item in cfg.ignored:
        logging.getLogger("fustor.agent").info("ignored config key (not used by this agent): %s",
                                               item)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(str(os.getpid()))
    tty = sys.stdout.isatty()
    last = [0.0]

    def tick(st: dict) -> None:
        now = time.monotonic()
        interval = 1.0 if any(p.get("phase") == "snapshot" for p in st["pipes"].values()) else cfg.status_interval_sec
        if now - last[0] >= interval:
            last[0] = now
            click.echo(("\r" if tty else "") + status_line(st) + ("" if tty else ""), nl=not tty)
    try:
        a = Agent(cfg, status_file=home / "agent-status.json", load_config=loader)
        click.echo(f"agent {a.agent_id}: {len(enabled_pipes(cfg))} pipe(s); Ctrl-C to stop")
        asyncio.run(a.run(on_tick=tick, interval=1.0))
    finally:
        if pid_file.exists() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink()
    if tty:
        click.echo("")


@agent.command()
@friendly
def stop() -> None:
    """Stop the running agent (SIGTERM, then SIGKILL after 30 s)."""
    from fustor.pidfile import stop_message

    click.echo(stop_message("Agent", _home() / "agent.pid"))


@agent.command()
@friendly
def reload() -> None:
    """Apply config changes (SIGHUP): added, removed and changed pipes, log level."""
    from fustor.pidfile import reload_message

    click.echo(reload_message("Agent", _home() / "agent.pid"))


@agent.command()
@click.argument("pipe", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@friendly
def status(pipe: str | None, as_json: bool) -> None:
    """Whether the agent runs and, per pipe (or only PIPE): state, role, phase, rows pushed,
    last error, lag. PIPE not running: its source, sender and ENABLED/DISABLED from config."""
    from fustor.pidfile import running_pid

    home = _home()
    pid = running_pid(home / "agent.pid")
    st = {}
    f = home / "agent-status.json"
    if pid and f.exists():
        try:
            st = orjson.loads(f.read_bytes())
        except orjson.JSONDecodeError:
            st = {}
    if pipe is not None:
        st["pipes"] = {k: v for k, v in (st.get("pipes") or {}).items() if k == pipe}
        if not st["pipes"]:
            return _pipe_from_config(pipe, bool(pid), as_json)
    if as_json:
        click.echo(orjson.dumps({"running": bool(pid), "pid": pid, **st}, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"RUNNING (PID: {pid})" if pid else "STOPPED")
    if pid and st:
        age = time.time() - st.get("updated_at", 0)
        click.echo(f"  agent {st.get('agent_id')}, up {st.get('uptime_seconds')} s (status {age:.0f} s old)")
        if st.get("console"):
            click.echo(f"  console: {st['console']}")
        for pid_, p in st.get("pipes", {}).items():
            click.echo("  " + status_line({"pipes": {pid_: p}}))


def _pipe_from_config(pipe: str, running: bool, as_json: bool) -> None:
    from fustor.agent.config import enabled_pipes

    cfg, _ = _load(())
    pc = cfg.pipes.get(pipe)
    if pc is None:
        raise ConfigError(f"{pipe}: not a configured pipe (known: {', '.join(cfg.pipes) or 'none'})")
    enabled = pipe in enabled_pipes(cfg)
    if as_json:
        click.echo(orjson.dumps({"running": running, "pipe": pipe, "source": pc.source,
                                 "sender": pc.sender, "enabled": enabled}).decode())
        return
    click.echo(f"{pipe}: {'not running' if running else 'STOPPED'}; source {pc.source}, "
               f"sender {pc.sender}, {'ENABLED' if enabled else 'DISABLED'} (config)")


@agent.command()
@click.argument("configs", nargs=-1, metavar="[TARGETS]...")
@friendly
def validate(configs) -> None:
    """Check the agent config (TARGETS as for start); exit 1 with the file and key of the
    first error, or when the config runs no pipe."""
    from fustor.agent.config import enabled_pipes

    cfg, _ = _load(configs)
    for note in _legacy_notes():
        click.echo(f"warning: {note}")
    for w in getattr(cfg, "warnings", []):
        click.echo(f"warning: {w}")
    for item in cfg.ignored:
        click.echo(f"ignored (accepted, not used by this agent): {item}")
    why = _nothing_runs(cfg, configs)
    if why:
        raise ConfigError(why)
    click.echo(f"ok: {len(enabled_pipes(cfg))} enabled pipe(s) from {', '.join(cfg.files)}")


@agent.command(name="list")
@click.argument("configs", nargs=-1, metavar="[TARGETS]...")
@friendly
def list_pipes(configs) -> None:
    """Pipes of the config: id, enabled, source, sender."""
    from fustor.agent.config import enabled_pipes

    cfg, _ = _load(configs)
    on = enabled_pipes(cfg)
    click.echo(f"{'PIPE ID':<24} {'STATUS':<9} SOURCE -> SENDER")
    for pid, pc in cfg.pipes.items():
        click.echo(f"{pid:<24} {'ENABLED' if pid in on else 'DISABLED':<9} {pc.source} -> {pc.sender}")


@agent.command()
def example() -> None:
    """Print a commented example agent config."""
    from fustor.agent.config import dump_example

    click.echo(dump_example())
