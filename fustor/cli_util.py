"""What every click command shares: fustor errors become one line on stderr, exit status 1."""

from __future__ import annotations

import functools
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
