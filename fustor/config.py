"""Fusion configuration: find the YAML, merge it, check it, say exactly what is wrong.

Files under ``FUSTOR_HOME/fusion-config/`` are read in sorted name order and merged:
``receivers``, ``views`` and ``pipes`` by id (a later id replaces an earlier one, with a
warning), global keys key by key (later wins). Any YAML or schema error raises
:class:`~fustor.errors.ConfigError` naming the file and the dotted key, so a broken config
stops the server instead of silently losing a pipe. Keys we do not use (written for the
original 0.8.x, e.g. ``root_dir`` or ``enabled`` on a pipe) are accepted and listed in
``FusionConfig.ignored``; questionable but working choices go to ``FusionConfig.warnings``.
A section may also be a list of entries with an ``id`` (:func:`list_form`, the seed
documents' form, shared with the agent's loader).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fustor.errors import ConfigError

log = logging.getLogger("fustor.config")

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
ID_MAX_LEN = 64
VIEW_DRIVERS = ("fs", "forest-fs")
RECEIVER_DRIVERS = ("http",)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
KEYS_FILE = "keys.yaml"

# fs driver_params we understand: accessor -> (path inside driver_params, type, default, minimum)
_FS_PARAMS: dict[str, tuple[tuple[str, ...], type, Any, float | None]] = {
    "hot_file_threshold": (("hot_file_threshold",), float, 30.0, 0),
    "max_tree_items": (("max_tree_items",), int, 100_000, None),  # <= 0 means unlimited
    "tombstone_ttl_seconds": (("consistency", "tombstone_ttl_seconds"), float, 3600.0, 0),
    "max_nodes": (("limits", "max_nodes"), int, 0, 0),  # 0 means unlimited
    "settle_s": (("settle_s",), float, None, 0),  # None: the view's hot_file_threshold
}


def fustor_home() -> Path:
    """``$FUSTOR_HOME`` (``~`` expanded) if set, else ``~/.fustor``."""
    env = os.environ.get("FUSTOR_HOME")
    return Path(env).expanduser() if env else Path("~/.fustor").expanduser()


@dataclass
class ApiKey:
    """An agent's key on a receiver; it opens sessions for ``pipe_id``."""

    key: str
    pipe_id: str


@dataclass
class AdminKey:
    """A key for the management API and for changing view data; ``name`` names it in the
    management audit log (the key itself is never written anywhere)."""

    key: str = field(repr=False)
    name: str | None = None


@dataclass
class ReceiverConfig:
    driver: str = "http"
    bind_host: str = "0.0.0.0"
    port: int = 8102
    api_keys: list[ApiKey] = field(default_factory=list)
    disabled: bool = False


@dataclass
class ViewConfig:
    driver: str = "fs"
    driver_params: dict[str, Any] = field(default_factory=dict)
    api_keys: list[str] = field(default_factory=list)
    disabled: bool = False

    def _param(self, name: str) -> Any:
        path, kind, default, _ = _FS_PARAMS[name]
        node: Any = self.driver_params
        for part in path:
            if not isinstance(node, dict) or node.get(part) is None:
                return default
            node = node[part]
        return convert(kind, node, "views.<view>.driver_params." + ".".join(path))

    @property
    def hot_file_threshold(self) -> float:
        return self._param("hot_file_threshold")

    @property
    def max_tree_items(self) -> int:
        return self._param("max_tree_items")

    @property
    def tombstone_ttl_seconds(self) -> float:
        return self._param("tombstone_ttl_seconds")

    @property
    def max_nodes(self) -> int:
        return self._param("max_nodes")

    @property
    def settle_s(self) -> float:
        """Quiet seconds after which a path with no suspect under it is "settled"."""
        v = self._param("settle_s")
        return self.hot_file_threshold if v is None else v


@dataclass
class PipeConfig:
    receiver: str
    views: list[str] = field(default_factory=list)
    allow_concurrent_push: bool = True
    session_timeout_seconds: int = 30
    audit_interval_sec: float = 600.0
    sentinel_interval_sec: float = 120.0

    @property
    def primary_view(self) -> str | None:
        return self.views[0] if self.views else None


@dataclass
class FusionConfig:
    logging: str = "INFO"
    log_format: str | None = None
    log_dir: str | None = None
    host: str = "0.0.0.0"
    port: int = 8101
    session_cleanup_interval: float = 5.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    data_dir: str | None = None
    receivers: dict[str, ReceiverConfig] = field(default_factory=dict)
    views: dict[str, ViewConfig] = field(default_factory=dict)
    pipes: dict[str, PipeConfig] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # files read, in merge order
    origin: dict[str, str] = field(default_factory=dict)  # "pipes.<id>" -> defining file
    ignored: list[str] = field(default_factory=list)  # "file: dotted.key" accepted but unused
    warnings: list[str] = field(default_factory=list)
    admin_keys: list[AdminKey] = field(default_factory=list)
    tls_cert_file: str | None = None  # PEM certificate (chain) of every listener
    tls_key_file: str | None = None
    metrics_public: bool = False  # GET /metrics without a key, from loopback addresses only
    generated_keys: dict[str, str] = field(default_factory=dict, repr=False)  # zero-config
    keys_created: bool = False  # zero-config: the keys were generated by this load

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)


_BOOLS = {"true": True, "yes": True, "on": True, "1": True,
          "false": False, "no": False, "off": False, "0": False}


def convert(kind: type, value: Any, where: str) -> Any:
    """``value`` as ``kind``, accepting what YAML users write (``"8101"``, ``30.0``, ``yes``)."""
    if kind is str:
        if isinstance(value, str) and value:
            return value
        wrong = "must not be empty" if value == "" else f"expected a string, got {value!r}"
        raise ConfigError(f"{where}: {wrong}; put the text in quotes")
    if kind is bool:
        text = str(value).lower() if isinstance(value, (bool, int, str)) else ""
        if text in _BOOLS:
            return _BOOLS[text]
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            number = float(value)
            if kind is float and math.isfinite(number):
                return number
            if kind is int and number.is_integer():
                return int(number)
    what = "a whole number (e.g. 30)" if kind is int else "a number of seconds (e.g. 60 or 2.5)"
    raise ConfigError(f"{where}: expected {what}, got {value!r}")


class Section:
    """One mapping of one file: typed getters whose errors name the file and the key.
    Public, with :func:`convert`, ``REQUIRED`` and :func:`unknown_ref`: the agent's config
    loader parses its YAML with the same pieces."""

    def __init__(self, data: Any, path: str, file: str, ignored: list[str]) -> None:
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: {path or 'top level'}: expected a mapping of keys, "
                              f"got {data!r}")
        self.data, self.path, self.file, self.ignored = data, path, file, ignored
        self.used: set[Any] = set()

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def where(self, key: str) -> str:
        return f"{self.file}: {self.name(key)}"

    def get(self, key: str, kind: type, default: Any, minimum: float | None = None,
            maximum: float | None = None, choices: tuple[str, ...] = ()) -> Any:
        self.used.add(key)
        if self.data.get(key) is None:
            if default is REQUIRED:
                raise ConfigError(f"{self.where(key)}: required but missing; add it")
            return default
        value = convert(kind, self.data[key], self.where(key))
        if minimum is not None and value < minimum:
            raise ConfigError(f"{self.where(key)}: must be at least {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{self.where(key)}: must be at most {maximum}, got {value!r}")
        if choices and value not in choices:
            raise ConfigError(f"{self.where(key)}: unknown {key} {value!r} "
                              f"(use one of: {', '.join(choices)})")
        return value

    def items(self, key: str) -> list[Any]:
        self.used.add(key)
        raw = self.data.get(key)
        if raw is not None and not isinstance(raw, list):
            raise ConfigError(f"{self.where(key)}: expected a list (e.g. [a, b]), got {raw!r}")
        return raw or []

    def synonym(self, key: str, *others: str) -> None:
        """Read ``key`` also under the names ``others`` (names the seed documents use,
        e.g. ``fusion_pipe_id`` for ``pipe_id``); ``key`` itself wins when both are set."""
        for other in others:
            if other in self.data:
                self.used.add(other)
                if self.data.get(key) is None:
                    self.data = {**self.data, key: self.data[other]}

    def child(self, key: str, data: Any = None) -> Section:
        self.used.add(key)
        data = self.data.get(key) if data is None else data
        return Section(data, self.name(key), self.file, self.ignored)

    def done(self) -> None:
        self.ignored.extend(f"{self.file}: {self.name(str(k))}" for k in self.data
                            if k not in self.used)


REQUIRED = object()


def _receiver(s: Section) -> ReceiverConfig:
    keys = []
    for i, item in enumerate(s.items("api_keys")):
        if not isinstance(item, dict):
            raise ConfigError(f"{s.where(f'api_keys[{i}]')}: expected a mapping "
                              f"{{key: ..., pipe_id: ...}}, got {item!r}")
        entry = s.child(f"api_keys[{i}]", item)
        entry.synonym("pipe_id", "fusion_pipe_id")  # the seed's forest example says so
        keys.append(ApiKey(entry.get("key", str, REQUIRED), entry.get("pipe_id", str, REQUIRED)))
        entry.done()
    return ReceiverConfig(driver=s.get("driver", str, "http", choices=RECEIVER_DRIVERS),
                          bind_host=s.get("bind_host", str, "0.0.0.0"),
                          port=s.get("port", int, 8102, 1, 65535), api_keys=keys,
                          disabled=s.get("disabled", bool, False))


def _view(s: Section) -> ViewConfig:
    keys = [convert(str, k, s.where(f"api_keys[{i}]"))
            for i, k in enumerate(s.items("api_keys"))]
    params = s.child("driver_params")
    nested = {part: params.child(part) for path, *_ in _FS_PARAMS.values() for part in path[:-1]}
    for path, kind, _default, minimum in _FS_PARAMS.values():
        nested.get(path[0], params).get(path[-1], kind, None, minimum)
    for sec in (params, *nested.values()):
        sec.done()
    return ViewConfig(driver=s.get("driver", str, "fs", choices=VIEW_DRIVERS),
                      driver_params=dict(params.data), api_keys=keys,
                      disabled=s.get("disabled", bool, False))


def _pipe(s: Section) -> PipeConfig:
    views = [convert(str, v, s.where(f"views[{i}]")) for i, v in enumerate(s.items("views"))]
    return PipeConfig(receiver=s.get("receiver", str, REQUIRED), views=views,
                      allow_concurrent_push=s.get("allow_concurrent_push", bool, True),
                      session_timeout_seconds=s.get("session_timeout_seconds", int, 30, 1),
                      audit_interval_sec=s.get("audit_interval_sec", float, 600.0, 0),
                      sentinel_interval_sec=s.get("sentinel_interval_sec", float, 120.0, 0))


# global key -> (type, minimum, maximum)
_GLOBALS: dict[str, tuple[type, float | None, float | None]] = {
    "host": (str, None, None), "port": (int, 1, 65535), "data_dir": (str, None, None),
    "session_cleanup_interval": (float, 0.001, None), "max_body_bytes": (int, 1, None)}


def _globals(s: Section, out: dict[str, Any]) -> None:
    """Parse the global keys present in one file into ``out`` (later files overwrite;
    ``admin_keys`` of all files add up)."""
    for key, (kind, minimum, maximum) in _GLOBALS.items():
        if s.data.get(key) is not None:
            out[key] = s.get(key, kind, None, minimum, maximum)
    parse_logging(s, out)
    out.setdefault("admin_keys", []).extend(_admin_keys(s))
    if s.data.get("metrics") is not None:
        m = s.child("metrics")
        out["metrics_public"] = m.get("public", bool, False)
        m.done()
    else:
        s.used.add("metrics")
    if s.data.get("tls") is not None:
        tls = s.child("tls")
        out["tls_cert_file"] = tls.get("cert_file", str, REQUIRED)
        out["tls_key_file"] = tls.get("key_file", str, REQUIRED)
        for key in ("tls_cert_file", "tls_key_file"):
            if not Path(out[key]).expanduser().is_file():
                raise ConfigError(f"{tls.where(key[4:])}: no such file {out[key]!r}; give the "
                                  "PEM file of fusion's certificate and of its private key")
            out[key] = str(Path(out[key]).expanduser())
        tls.done()
    else:
        s.used.add("tls")


def _admin_keys(s: Section) -> list[AdminKey]:
    """``admin_keys: [KEY, {key: KEY, name: NAME}, ...]``."""
    out = []
    for i, item in enumerate(s.items("admin_keys")):
        if isinstance(item, dict):
            entry = s.child(f"admin_keys[{i}]", item)
            out.append(AdminKey(entry.get("key", str, REQUIRED), entry.get("name", str, None)))
            entry.done()
        else:
            out.append(AdminKey(convert(str, item, s.where(f"admin_keys[{i}]"))))
    return out


def parse_logging(s: Section, out: dict[str, Any]) -> None:
    """``logging: LEVEL`` or ``logging: {level, format, dir}`` of one file (fusion and agent)."""
    raw = s.data.get("logging")
    s.used.add("logging")
    if raw is None:
        return
    sub, key = (s.child("logging"), "level") if isinstance(raw, dict) else (s, "logging")
    level = sub.get(key, str, "INFO").upper()
    level = "WARNING" if level == "WARN" else level
    if level not in LOG_LEVELS:
        raise ConfigError(f"{sub.where(key)}: unknown log level {level!r} "
                          f"(use one of: {', '.join(LOG_LEVELS)})")
    out.update(logging=level, log_format=None, log_dir=None)
    if sub is not s:
        out.update(log_format=sub.get("format", str, None), log_dir=sub.get("dir", str, None))
        sub.done()


_SECTIONS: dict[str, Callable[[Section], Any]] = {
    "receivers": _receiver, "views": _view, "pipes": _pipe}


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: YAML syntax error{at}: {problem}; fix the file "
                          "(the server does not start with a broken config)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None


def _config_files(target: Path | list[Path] | None) -> list[Path]:
    if isinstance(target, list):  # several files or directories, merged in the order given
        return [p for t in target for p in _config_files(Path(t))]
    home_dir = fustor_home() / "fusion-config"
    target = home_dir if target is None else Path(target).expanduser()
    if target.is_dir():
        return sorted(p for p in target.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if target.is_file():
        return [target]
    if target == home_dir:
        return []  # nothing configured yet: the caller may use default_config()
    raise ConfigError(f"{target}: no such config file or directory; create it or point "
                      "FUSTOR_HOME / the command line at your fusion-config directory")


def load_fusion_config(target: Path | list[Path] | None = None) -> FusionConfig:
    """Read, merge and check the fusion config; raise ConfigError on anything broken.

    ``target`` None means ``fustor_home()/fusion-config/`` (a missing directory gives an
    empty config, so the caller can fall back to :func:`default_config`); a directory
    means all its ``*.yaml``/``*.yml`` files in name order; a file means just that file;
    a list, each of those in the order given.
    """
    cfg = FusionConfig()
    origin = cfg.origin  # "pipes.x" -> file that defined it
    found: dict[str, Any] = {}
    for path in _config_files(target):
        file = str(path)
        cfg.files.append(file)
        top = Section(_read_yaml(path), "", file, cfg.ignored)
        merge_sections(cfg, top, _SECTIONS, origin)
        _globals(top, found)
        top.done()
    for key, value in found.items():
        setattr(cfg, key, value)
    _check(cfg, origin)
    return cfg


def merge_sections(cfg, top: Section, sections: dict, origin: dict[str, str]) -> None:
    """Parse each ``<section>.<id>`` of one file into ``cfg.<section>``; a later file's id
    replaces an earlier one (with a warning). Shared by the fusion and agent loaders."""
    for section, parse in sections.items():
        if section not in top.data:
            continue
        raw = top.data[section]
        entries = top.child(section, list_form(raw, top.where(section)) if isinstance(raw, list)
                            else None)
        for ident in list(entries.data):
            if not isinstance(ident, str) or not ident:
                raise ConfigError(f"{top.file}: {section}.{ident!r}: ids must be non-empty "
                                  "strings; put the id in quotes")
            item = parse(sec := entries.child(ident))
            sec.done()
            if ident in (table := getattr(cfg, section)):
                warn(cfg, f"{top.file}: {section}.{ident} replaces the definition from "
                     f"{origin[f'{section}.{ident}']}")
            table[ident] = item
            origin[f"{section}.{ident}"] = top.file


def list_form(items: list, where: str) -> dict[str, dict]:
    """The list form of a section, as the seed documents write it, as the mapping form:
    ``[{id: X, type: fs, config: {uri: ...}, ...}]`` → ``{X: {type: fs, uri: ..., ...}}``.
    The entry's ``config`` keys join its other keys; names such as ``type`` are read as
    synonyms by each section's parser."""
    out: dict[str, dict] = {}
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            raise ConfigError(f"{at}: expected a mapping with an id (e.g. {{id: main, ...}}), "
                              f"got {item!r}")
        ident = item["id"]
        body = {k: v for k, v in item.items() if k not in ("id", "config")}
        extra = item.get("config") or {}
        if not isinstance(extra, dict):
            raise ConfigError(f"{at}.config: expected a mapping of keys, got {extra!r}")
        for k, v in extra.items():
            if k in body:
                raise ConfigError(f"{at}: {k} is given both beside config: and inside it; "
                                  "keep one")
            body[k] = v
        if ident in out:
            raise ConfigError(f"{at}: the id {ident!r} is used twice in this list; rename one")
        out[ident] = body
    return out


def warn(cfg, message: str) -> None:
    """Record a config warning on ``cfg`` (fusion or agent) and log it."""
    cfg.warnings.append(message)
    log.warning("config: %s", message)


def unknown_ref(at: str, value: str, what: str, known: dict[str, Any], fix: str) -> ConfigError:
    return ConfigError(f"{at}: {value!r} is not a configured {what} "
                       f"(known: {', '.join(known) or 'none'}); {fix}")


def _check(cfg: FusionConfig, origin: dict[str, str]) -> None:
    """Checks that need the whole merged config: ids, references, shared keys."""
    for section in _SECTIONS:
        for ident in getattr(cfg, section):
            at = f"{origin[f'{section}.{ident}']}: {section}.{ident}"
            if section == "views" and "/" in ident:
                raise ConfigError(f"{at}: a view id cannot contain '/' (it is part of the "
                                  "query URL); rename the view")
            if not ID_RE.match(ident) or len(ident) > ID_MAX_LEN:
                warn(cfg, f"{at}: id is not URL-safe; prefer lower-case letters, digits, "
                      f"'-' and '_' (at most {ID_MAX_LEN} characters)")
    for pid, pipe in cfg.pipes.items():
        at = f"{origin[f'pipes.{pid}']}: pipes.{pid}"
        if pipe.receiver not in cfg.receivers:
            raise unknown_ref(f"{at}.receiver", pipe.receiver, "receiver", cfg.receivers,
                               "fix the name or add it under receivers:")
        for i, vid in enumerate(pipe.views):
            if vid not in cfg.views:
                raise unknown_ref(f"{at}.views[{i}]", vid, "view", cfg.views,
                                   "fix the name or add it under views:")
        if not pipe.views:
            warn(cfg, f"{at}.views: no views listed, so this pipe will not start")
    # messages name where a key is, never the key itself
    admin = {k.key for k in cfg.admin_keys}
    ingest: dict[str, str] = {}  # key -> pipe it opens sessions for
    for rid, rec in cfg.receivers.items():
        for i, k in enumerate(rec.api_keys):
            at = f"{origin[f'receivers.{rid}']}: receivers.{rid}.api_keys[{i}]"
            if k.key in admin:
                warn(cfg, f"{at}: this agent key is also an admin key; give agents their own key")
            if ingest.setdefault(k.key, k.pipe_id) != k.pipe_id:
                warn(cfg, f"{at}: this key already opens sessions for pipe "
                     f"{ingest[k.key]!r}; a key serves one pipe, so {k.pipe_id!r} needs its own")
    for vid, view in cfg.views.items():
        for i, key in enumerate(view.api_keys):
            if key in admin or key in ingest:
                warn(cfg, f"{origin[f'views.{vid}']}: views.{vid}.api_keys[{i}]: this query key "
                     "is also an admin or agent key; give readers their own key")
    names = [k.name for k in cfg.admin_keys if k.name]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        warn(cfg, f"admin_keys: the name {dup!r} is used twice; the audit log cannot tell "
             "those keys apart")
    for rid, rec in cfg.receivers.items():
        for i, k in enumerate(rec.api_keys):
            at = f"{origin[f'receivers.{rid}']}: receivers.{rid}.api_keys[{i}].pipe_id"
            if k.pipe_id not in cfg.pipes:
                raise unknown_ref(at, k.pipe_id, "pipe", cfg.pipes,
                                   "fix the name or remove the key")
            if cfg.pipes[k.pipe_id].receiver != rid:
                warn(cfg, f"{at}: pipe {k.pipe_id!r} uses receiver "
                      f"{cfg.pipes[k.pipe_id].receiver!r}, so this key cannot open sessions "
                      f"on {rid!r}")


def enabled_pipes(cfg: FusionConfig) -> dict[str, PipeConfig]:
    """Pipes that can run (receiver and at least one view present and enabled), as copies
    listing only their usable views, so ``views[0]`` is the primary view actually served."""
    out: dict[str, PipeConfig] = {}
    for pid, pipe in cfg.pipes.items():
        receiver = cfg.receivers.get(pipe.receiver)
        if receiver is None or receiver.disabled:
            continue
        views = [v for v in pipe.views if v in cfg.views and not cfg.views[v].disabled]
        if views:
            out[pid] = dataclasses.replace(pipe, views=views)
    return out


ZERO_CONFIG_KEYS = ("ingest", "query", "admin")


def load_keys(path: Path) -> dict[str, str]:
    """The zero-config keys kept in ``DATA/keys.yaml`` (those present)."""
    data = _read_yaml(path) if path.exists() else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping {{ingest: ..., query: ..., admin: ...}}; "
                          "delete the file to generate new keys")
    return {name: convert(str, data[name], f"{path}: {name}")
            for name in ZERO_CONFIG_KEYS if data.get(name) is not None}


def default_config(data_dir: Path, receiver_port: int = 8102) -> FusionConfig:
    """The zero-config setup: receiver, fs view and pipe all named ``default``.

    The agent (ingest), query and admin keys are generated on first use and kept in
    ``data_dir/keys.yaml`` (mode 0600), so they survive restarts; ``keys_created`` says
    whether this call generated any (only then are they worth printing).
    """
    data_dir = Path(data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEYS_FILE
    keys = load_keys(path)
    created = set(keys) != set(ZERO_CONFIG_KEYS)
    if created:
        for name in ZERO_CONFIG_KEYS:
            keys.setdefault(name, secrets.token_urlsafe(24))
        fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=data_dir)  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write("# API keys of the zero-config fusion; delete to generate new ones\n")
                yaml.safe_dump(keys, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)  # a crash never leaves a half-written keys file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    elif path.stat().st_mode & 0o077:
        path.chmod(0o600)  # keys are secrets; never leave them readable by others
    return FusionConfig(
        data_dir=str(data_dir),
        receivers={"default": ReceiverConfig(port=receiver_port,
                                             api_keys=[ApiKey(keys["ingest"], "default")])},
        views={"default": ViewConfig(api_keys=[keys["query"]])},
        pipes={"default": PipeConfig(receiver="default", views=["default"])},
        admin_keys=[AdminKey(keys["admin"], "zero-config")],
        generated_keys=dict(keys), keys_created=created)


EXAMPLE_CONFIG = """\
# fustor fusion config. Every *.yaml in $FUSTOR_HOME/fusion-config/ is merged in file-name
# order, so receivers, views and pipes may live in separate files.

host: 0.0.0.0                     # query API and management listen here
port: 8101
logging: INFO                     # or {level: INFO, format: "...", dir: /var/log/fustor}
session_cleanup_interval: 5.0     # seconds between sweeps for expired agent sessions
max_body_bytes: 67108864          # larger request bodies are refused with 413
# data_dir: /var/lib/fustor       # where the view stores live
# tls: {cert_file: /etc/fustor/fusion.pem, key_file: /etc/fustor/fusion.key}
#                                 # HTTPS on every listener (agents then use https:// URLs)
metrics: {public: false}          # true: GET /metrics without a key, from 127.0.0.1/::1 only

admin_keys:                       # management API and every route that changes view data
  - {name: ops, key: change-me-admin-key}

receivers:                        # where agents connect: http://<host>:<port>
  http-main:
    driver: http
    bind_host: 0.0.0.0
    port: 8102
    api_keys:                     # an agent key opens sessions for one pipe
      - {key: change-me-agent-key, pipe_id: research}

views:                            # the trees users query
  research:
    driver: fs                    # or forest-fs: one tree per pipe behind one view
    api_keys: [change-me-query-key]  # read-only; list one key under several views to
                                     # let it read all of them
    driver_params:
      hot_file_threshold: 30.0    # files changed less than this many seconds ago are "hot"
      settle_s: 30.0              # stats' "settled": nothing changed under a path this long
      max_tree_items: 100000      # tree/search refused above this many items (0: no limit)
      consistency: {tombstone_ttl_seconds: 3600.0}
      limits: {max_nodes: 0}      # 0: unlimited

pipes:                            # a receiver feeding views; the first view is the primary
  research:                       # (naming a pipe like its primary view keeps keys simple)
    receiver: http-main
    views: [research]
    allow_concurrent_push: true
    session_timeout_seconds: 30   # an agent silent this long loses its session
    audit_interval_sec: 600.0     # told to agents: how often to re-scan for drift
    sentinel_interval_sec: 120.0  # told to agents: how often to re-check suspect files
"""


def dump_example() -> str:
    """A commented example config that :func:`load_fusion_config` accepts."""
    return EXAMPLE_CONFIG
