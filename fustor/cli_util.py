"""What every click command shares: fustor errors become one line on stderr, exit status 1."""

from __future__ import annotations

import functools
import logging
import os
import sys

import click

from fustor.errors import FustorError

DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def friendly(fn):
    """Turn fustor errors into ``error: message`` on stderr and exit 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FustorError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(1)
        except OSError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper


def setup_logging(value, verbose: bool = False, *, fmt: str | None = None,
                  log_dir: str | None = None, name: str = "fustor") -> None:
    """Log level from config (a name or ``{level: ...}``); chatty libraries stay at WARNING.

    ``fmt`` (a ``logging`` format string) replaces the line format; ``log_dir`` adds a file
    ``<log_dir>/<name>.log`` (created 0600) beside the console output.
    """
    name_ = value.get("level", "INFO") if isinstance(value, dict) else str(value or "INFO")
    level = logging.DEBUG if verbose else getattr(logging, name_.upper(), logging.INFO)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(stream=sys.stderr, format=DEFAULT_FORMAT)
    root.setLevel(level)
    formatter = logging.Formatter(fmt or DEFAULT_FORMAT)
    for h in root.handlers:
        h.setFormatter(formatter)
    if log_dir:
        path = os.path.join(os.path.expanduser(log_dir), f"{name}.log")
        if not any(getattr(h, "baseFilename", None) == os.path.abspath(path) for h in root.handlers):
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
            handler = logging.FileHandler(path, encoding="utf-8")
            handler.setFormatter(formatter)
            root.addHandler(handler)
    for noisy in ("httpx", "httpcore", "watchdog", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level > logging.DEBUG else level)
