"""What every click command shares: fustor errors become one line on stderr, exit status 1."""

from __future__ import annotations

import functools
import logging
import sys

import click

from fustor.errors import FustorError


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


def setup_logging(value, verbose: bool = False) -> None:
    """Log level from config (a name or ``{level: ...}``); chatty libraries stay at WARNING."""
    name = value.get("level", "INFO") if isinstance(value, dict) else str(value or "INFO")
    level = logging.DEBUG if verbose else getattr(logging, name.upper(), logging.INFO)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "watchdog", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level > logging.DEBUG else level)
