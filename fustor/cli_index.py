"""``fustor find``, ``du``, ``ls``, ``stat``, ``compare`` and ``locate``: the index, read like
the file system. Thin click wrappers around :mod:`fustor.client`; output as GNU find/du/ls print
it (so scripts switch with one word), ``--json`` for programs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fustor.cli_util import friendly
from fustor.client import (
    DEFAULT_SERVER,
    SERVER_ENV,
    IndexClient,
    du_size,
    find_filter,
    mtime_text,
    read_key,
    shown,
    split_target,
    stamp,
)


def client_options(fn):
    """--server, --key-file, --ca-file and --json of every index command."""
    for opt in reversed([
        click.option("--server", default=DEFAULT_SERVER, envvar=SERVER_ENV, show_envvar=True,
                     show_default=True, help="Fusion's main URL."),
        click.option("--key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     default=None, help="File (mode 600) with a query key of the view [default: "
                     "the FUSTOR_KEY environment variable]. There is no --key: a command line "
                     "is visible to every local user."),
        click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="PEM file of the CA of an https fusion [default: the system's CAs]."),
        click.option("--json", "as_json", is_flag=True,
                     help="One JSON object per line (paths that are not UTF-8 as \\udcXX)."),
    ]):
        fn = opt(fn)
    return fn


def _client(server: str, key_file: Path | None, ca_file: str | None) -> IndexClient:
    return IndexClient(server, read_key(key_file), ca_file=ca_file)


class _Out:
    """stdout as bytes (names are bytes), flushed per line on a terminal."""

    def __init__(self) -> None:
        self.stream = sys.stdout.buffer
        self.tty = sys.stdout.isatty()

    def line(self, data: bytes, end: bytes = b"\n") -> None:
        self.stream.write(data + end)
        if self.tty:
            self.stream.flush()

    def json(self, obj: dict) -> None:
        # ensure_ascii keeps lone surrogates (non-UTF-8 bytes) as \udcXX, as fusion does
        self.line(json.dumps(obj, ensure_ascii=True).encode())


@click.command()
@click.argument("target", metavar="VIEW:PATH")
@click.option("-name", "name", default=None, help="Base name matches this shell glob.")
@click.option("-type", "kind", type=click.Choice(["f", "d"]), default=None,
              help="f: files, d: directories.")
@click.option("-size", "sizes", multiple=True,
              help="[+-]N[ckMG]: size (rounded up to the unit; default 512-byte blocks) more "
              "than, less than or exactly N; repeatable.")
@click.option("-newer", "newer", default=None,
              help="Modified after DATE (2024-05-01, 2024-05-01T12:00, seconds since 1970) or "
              "after a local FILE's mtime.")
@click.option("-mmin", "mmins", multiple=True,
              help="[+-]N: modified more than, less than or exactly N minutes ago.")
@click.option("-maxdepth", "max_depth", type=click.IntRange(0), default=None,
              help="Descend at most N levels below VIEW:PATH.")
@click.option("-print0", "print0", is_flag=True, help="End each path with NUL, not newline.")
@client_options
@friendly
def find(target, name, kind, sizes, newer, mmins, max_depth, print0, server, key_file,
         ca_file, as_json) -> None:
    """Paths under VIEW:PATH in the index that pass every test, as find prints them;
    streams from the first page, whatever the size of the tree."""
    view, path = split_target(target)
    keep = find_filter(name, kind, sizes, newer, mmins)
    out = _Out()
    with _client(server, key_file, ca_file) as c:
        for e in c.walk(view, path, max_depth=max_depth):
            if keep(e):
                if as_json:
                    out.json(e.as_json())
                else:
                    out.line(shown(e.path, out.tty and not print0), b"\0" if print0 else b"\n")


@click.command()
@click.argument("target", metavar="VIEW:PATH")
@click.option("-s", "--summarize", is_flag=True, help="Only the total of VIEW:PATH (one "
              "request: fusion keeps every directory's total).")
@click.option("-h", "--human-readable", "human_readable", is_flag=True,
              help="Sizes as 1K, 234M, 2G.")
@click.option("-b", "--bytes", "in_bytes", is_flag=True, help="Sizes in bytes.")
@click.option("-d", "--max-depth", "max_depth", type=click.IntRange(0), default=None,
              help="Print directories at most N levels below VIEW:PATH.")
@client_options
@friendly
def du(target, summarize, human_readable, in_bytes, max_depth, server, key_file, ca_file,
       as_json) -> None:
    """Sizes of VIEW:PATH and the directories under it, as `du --apparent-size` prints them
    (1K units unless -h or -b): the sum of file sizes in each subtree, a directory after
    everything under it."""
    view, path = split_target(target)
    out = _Out()
    with _client(server, key_file, ca_file) as c:
        for d, st in c.du(view, path, max_depth=max_depth, all_dirs=not summarize):
            if as_json:
                out.json({"path": d.path, "total_size": st["total_size"],
                          "file_count": st["file_count"], "dir_count": st["dir_count"],
                          "latest_mtime": st["latest_mtime"]})
            else:
                size = du_size(st["total_size"], human_readable, in_bytes).encode()
                out.line(size + b"\t" + shown(d.path, out.tty))


@click.command(name="ls")
@click.argument("target", metavar="VIEW:PATH")
@click.option("-l", "long", is_flag=True, help="Type, size, modification time and name.")
@client_options
@friendly
def ls(target, long, server, key_file, ca_file, as_json) -> None:
    """The entries of the directory VIEW:PATH (or the file itself), by name, one per line."""
    view, path = split_target(target)
    out = _Out()
    with _client(server, key_file, ca_file) as c:
        top = c.node(view, path)
        entries = c.list_dir(view, path) if top.is_dir else iter([top])
        for e in entries:
            name = e.name if top.is_dir else e.path
            if as_json:
                out.json(e.as_json())
            elif long:
                head = f"{'d' if e.is_dir else '-'} {e.size:>14} {mtime_text(e.mtime)} "
                out.line(head.encode() + shown(name, out.tty, "ls"))
            else:
                out.line(shown(name, out.tty, "ls"))


@click.command(name="stat")
@click.argument("target", metavar="VIEW:PATH")
@client_options
@friendly
def stat_(target, server, key_file, ca_file, as_json) -> None:
    """What the index holds about VIEW:PATH: type, size, times and, for a directory, the
    totals of its subtree."""
    view, path = split_target(target)
    out = _Out()
    with _client(server, key_file, ca_file) as c:
        e = c.node(view, path)
        st = c.stats(view, path)
    if as_json:
        out.json({**e.as_json(), "file_count": st["file_count"], "dir_count": st["dir_count"],
                  "total_size": st["total_size"], "latest_mtime": st["latest_mtime"]})
        return
    out.line(b"  File: " + shown(e.path, out.tty))
    lines = [f"  Type: {'directory' if e.is_dir else 'regular file'}", f"  Size: {e.size}",
             f"Modify: {stamp(e.mtime)}", f"Change: {stamp(e.ctime)}"]
    if e.is_dir:
        lines += [f" Files: {st['file_count']}  Directories: {st['dir_count']} (itself "
                  f"included)  Bytes: {st['total_size']}",
                  f"Latest: {stamp(st['latest_mtime'])} (newest mtime in the subtree)"]
    for ln in lines:
        out.line(ln.encode())


@click.command()
@click.argument("target", metavar="VIEW:PATH")
@click.option("--members", default=None, help="Comma-separated pipe ids [default: all].")
@click.option("--no-mtime", is_flag=True, help="Ignore files whose only difference is mtime.")
@client_options
@friendly
def compare(target, members, no_mtime, server, key_file, ca_file, as_json) -> None:
    """Forest views: what differs between the members under VIEW:PATH, one line each
    (DIFFERENCE PATH, and which member lacks it); paged, so it streams."""
    view, path = split_target(target)
    out = _Out()
    names = [m for m in (members or "").split(",") if m] or None
    with _client(server, key_file, ca_file) as c:
        for d in c.compare(view, path, names, mtime=not no_mtime):
            if as_json:
                out.json(d)
                continue
            tail = f"\tmissing in {','.join(d['missing_in'])}" if d["missing_in"] else ""
            if d["difference"] in ("size", "subtree"):
                key = "total_size" if d["difference"] == "subtree" else "size"
                tail += "\t" + " ".join(f"{m}={n[key]}" for m, n in sorted(d["members"].items())
                                        if n is not None)
            out.line(d["difference"].encode() + b"\t" + shown(d["path"], out.tty) + tail.encode())


@click.command()
@click.argument("target", metavar="VIEW[:PATH]")
@click.argument("pattern")
@click.option("--exact", "match", flag_value="exact", default=None,
              help="PATTERN is the whole name (case-insensitive), taken literally.")
@click.option("--substring", "match", flag_value="substring",
              help="PATTERN is part of the name, taken literally (even * ? [).")
@click.option("-type", "kind", type=click.Choice(["f", "d", "any"]), default="f",
              show_default=True, help="f: files, d: directories, any: both.")
@click.option("-c", "--count", is_flag=True,
              help="Only how many matches each member holds (on an fs view: the view).")
@client_options
@friendly
def locate(target, pattern, match, kind, count, server, key_file, ca_file, as_json) -> None:
    """Paths under VIEW:PATH (a bare VIEW: the whole view) whose name matches PATTERN (a
    glob such as '*.bam', or part of a name; case-insensitive), from fusion's name index,
    in name order. On a forest view each path is followed by the members holding it, the
    members that lack it and `differ` when their sizes or mtimes differ."""
    view, path = split_target(target if ":" in target else target + ":/")
    out = _Out()
    with _client(server, key_file, ca_file) as c:
        found = c.locate(view, pattern, path, match=match, type=kind)
        members = next(found)["members"]
        if count:
            totals = members or {view: {"matches": sum(1 for _ in found), "exact": True}}
            for m, n in sorted(totals.items()):
                if as_json:
                    out.json({"member": m, **n})
                else:
                    out.line(f"{m}\t{n['matches']}{'' if n['exact'] else '+'}".encode())
            return
        for e in found:
            if as_json:
                out.json(e)
                continue
            line = shown(e["path"], out.tty)
            if "members" in e:
                line += ("\t" + ",".join(sorted(e["members"]))).encode()
                if e["missing_in"]:
                    line += ("\tmissing in " + ",".join(e["missing_in"])).encode()
                if not e["agree"]:
                    line += b"\tdiffer"
            out.line(line)


COMMANDS = [find, du, ls, stat_, compare, locate]
