"""What `fustor fusion start` and `fustor agent start` run: positional targets, old config
names, and why a config runs nothing. Shared by both sides (configs of either shape).

``start [TARGETS...]`` as the seed documents write it (``fustor-fusion start
my-custom-pipes.yaml``): an item that names a file or directory (or a ``*.yaml``/``*.yml``
name found in the config directory) is a config file; anything else is a pipe id.

- Files inside the config directory: the whole directory is read (references may cross
  files) and only the pipes those files define run.
- Files elsewhere (or directories): exactly those are read, merged in the order given.
- Pipe ids: only those pipes run (with the files above, the union).
- Nothing given: every enabled pipe of the config directory.

Older fustor versions kept their config under other names; those files are not read,
and :func:`legacy_notes` says so and what replaces them, so an upgrade never silently
runs without a config the operator still edits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fustor.errors import ConfigError

# old name under FUSTOR_HOME -> (side, what replaces it)
LEGACY_NAMES: dict[str, tuple[str, str]] = {
    "datastores-config.yaml": ("fusion", "views: in fusion-config/*.yaml (a datastore is now a "
                               "view; its api_keys are the view's query keys)"),
    "receivers-config.yaml": ("fusion", "receivers: in fusion-config/*.yaml"),
    "views-config": ("fusion", "views: in fusion-config/*.yaml"),
    "pushers-config.yaml": ("agent", "senders: in agent-config.yaml or agent-config/*.yaml "
                            "(a pusher is now a sender)"),
    "agent-pipes-config": ("agent", "pipes: in agent-config.yaml or agent-config/*.yaml"),
}


def legacy_notes(home: Path, side: str) -> list[str]:
    """One line per old-style config file or directory of ``side`` found in ``home``."""
    out = []
    for name, (owner, instead) in LEGACY_NAMES.items():
        if owner != side:
            continue
        stem = name.removesuffix(".yaml")
        for cand in (home / name, home / f"{stem}.yaml", home / f"{stem}.yml"):
            if cand.exists():
                out.append(f"{cand} is not read by this fustor (an older config layout); "
                           f"write {instead}")
                break
    return out


@dataclass
class Targets:
    """The positional arguments of ``start``, sorted out."""

    files: list[Path] = field(default_factory=list)  # explicit config files or directories
    pipe_ids: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.files and not self.pipe_ids


def parse_targets(items: tuple[str, ...] | list[str], config_dir: Path) -> Targets:
    """Split ``items`` into config files/directories and pipe ids (see the module doc)."""
    t = Targets()
    for item in items:
        p = Path(item).expanduser()
        if p.exists():
            t.files.append(p.resolve())
        elif item.endswith((".yaml", ".yml")):
            cand = config_dir / item
            if not cand.is_file():
                raise ConfigError(f"{item}: no such config file (looked here and in "
                                  f"{config_dir})")
            t.files.append(cand.resolve())
        else:
            t.pipe_ids.append(item)
    return t


def _inside(path: Path, config_dir: Path, home_file: Path | None) -> bool:
    if path.is_dir():
        return False
    if home_file is not None and path == home_file.expanduser().resolve():
        return True
    return path.parent == config_dir.expanduser().resolve()


def load_targets(targets: Targets, load: Callable[[Any], Any], config_dir: Path,
                 default: Any = None, home_file: Path | None = None) -> Any:
    """The config ``start TARGETS`` runs: ``load(what)`` (``what`` None = the default
    set, or ``default`` when given) with the pipes narrowed to the targets."""
    files_inside = [f for f in targets.files if _inside(f, config_dir, home_file)]
    if targets.files and len(files_inside) < len(targets.files):
        cfg = load(list(targets.files))
        files_inside = []  # every given file was read: all their pipes run
    else:
        cfg = load(default)
    return select_pipes(cfg, files_inside, targets.pipe_ids)


def select_pipes(cfg: Any, files: list[Path], pipe_ids: list[str]) -> Any:
    """``cfg`` with only the pipes defined in ``files`` and the ``pipe_ids`` (none of
    either: unchanged). An unknown pipe id is an error naming the known ones."""
    if not files and not pipe_ids:
        return cfg
    unknown = [p for p in pipe_ids if p not in cfg.pipes]
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not a configured pipe (known: "
                          f"{', '.join(cfg.pipes) or 'none'}); name a pipe id or a config file")
    wanted = set(pipe_ids)
    for f in files:
        wanted.update(pid for pid in cfg.pipes
                      if Path(cfg.origin.get(f"pipes.{pid}", "")).resolve() == f)
    cfg.pipes = {pid: pc for pid, pc in cfg.pipes.items() if pid in wanted}
    return cfg


def nothing_runs(cfg: Any, enabled: dict, side: str, where: str, home: Path) -> str | None:
    """Why ``cfg`` runs no pipe, with what to do; None when some pipe runs."""
    if enabled:
        return None
    if not cfg.files:
        why = f"no config files in {where}"
    elif not cfg.pipes:
        why = f"no pipes: in {', '.join(cfg.files)}"
    else:
        why = f"every pipe is disabled or lacks what it needs ({', '.join(cfg.pipes)})"
    notes = legacy_notes(home, side)
    hint = ("; " + "; ".join(notes)) if notes else ""
    example = ("`fustor agent example` prints one, or use --watch DIR --fusion URL --key-file F"
               if side == "agent" else "`fustor fusion example` prints one")
    return f"nothing to run: {why}{hint}; write a config ({example})"
