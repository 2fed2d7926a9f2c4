"""Agent configuration: which trees to watch and which fusion to send them to.

:func:`load_agent_config` reads ``FUSTOR_HOME/agent-config.yaml`` (the one file the seed
documents describe) and then every ``*.yaml`` *and* ``*.yml`` file of
``FUSTOR_HOME/agent-config/`` (the original read only ``*.yaml``, silently skipping ``.yml``;
dot-files are skipped; a missing directory is an empty config), or a given directory, or one
file. Sections come as mappings by id or as the seed's lists (``sources: [{id, type,
config: {uri, driver_params}}]``, ``senders: [{id, type, config: {endpoint, credential}}]``,
``pipes: [{id, source_id, sender_id, enabled}]``); the seed's names are synonyms
(:data:`SYNONYMS`). Files are merged in file-name order into one namespace: ``sources``, ``senders`` and
``pipes`` by id (a later id replaces an earlier one, with a warning; references may cross
files); ``logging``, ``fs_scan_workers``, ``agent_id``, ``status_interval_sec`` and
``console`` come from the last file setting them. Anything broken raises ConfigError
``<file>: <dotted.key>: <problem>; <fix>``; keys we do not use are accepted (a 0.8.17 config
loads unchanged) and listed in ``AgentConfig.ignored``. Settings the original parsed and
ignored are honoured (§16.11): ``fs_scan_workers`` (default ``max_scan_workers`` of fs
sources), sender ``batch_size`` and ``timeout_sec``, ``logging.format`` and ``logging.dir``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from fustor.config import (
    ID_MAX_LEN,
    ID_RE,
    REQUIRED,
    Section,
    convert,
    fustor_home,
    merge_sections,
    parse_logging,
    unknown_ref,
    warn,
)
from fustor.errors import ConfigError

log = logging.getLogger("fustor.agent.config")

CONFIG_DIR = "agent-config"
CONFIG_FILE = "agent-config.yaml"  # the single file of the seed documents, read first
# names the seed documents use -> our key, per section (``enabled: false`` = ``disabled: true``)
SYNONYMS: dict[str, dict[str, str]] = {
    "sources": {"type": "driver"}, "senders": {"type": "driver", "endpoint": "uri"},
    "pipes": {"source_id": "source", "sender_id": "sender"}}
AGENT_ID_FILE = "agent.id"
SOURCE_DRIVERS = ("fs",)
SENDER_DRIVERS = ("fusion", "http")  # the same HTTP sender; 0.8.17 configs say "fusion"
STARTUP_MODES = ("message-only",)
QUEUE_FACTOR = 100
COMMAND_LINE = "<command line>"
KEY_ENV = "FUSTOR_AGENT_KEY"  # the ingest key of `agent start --key`, kept out of argv

# fs driver_params we understand: name -> (type, default, minimum).
# max_scan_workers defaults to the config's fs_scan_workers.
_FS_PARAMS: dict[str, tuple[type, Any, float | None]] = {
    "file_pattern": (str, "*", None),
    "throttle_interval_sec": (float, 5.0, 0),
    "max_scan_workers": (int, None, 1),
    "min_monitoring_window_days": (float, 30.0, 0),
    "startup_mode": (str, None, None),
}


@dataclass
class SourceConfig:
    """``sources.<id>``: one directory tree to watch."""

    driver: str
    uri: str  # absolute path; a ``file://`` prefix is stripped when loading
    credential: Any = field(default=None, repr=False)  # accepted for old configs; unused
    max_queue_size: int = 1000
    disabled: bool = False
    driver_params: dict[str, Any] = field(default_factory=dict)
    default_scan_workers: int = 4  # the config's fs_scan_workers

    @property
    def queue_bound(self) -> int:
        """Realtime events buffered before the queue counts as overflowed:
        ``max_queue_size`` × 100. The original buffered only ``max_queue_size`` (1000)
        events, so one ``cp -r`` during a short fusion outage killed realtime (§16.2);
        scaling keeps the old key meaningful while making overflow rare."""
        return self.max_queue_size * QUEUE_FACTOR

    def _param(self, name: str) -> Any:
        kind, default, _ = _FS_PARAMS[name]
        value = self.driver_params.get(name)
        where = f"sources.<source>.driver_params.{name}"
        return default if value is None else convert(kind, value, where)

    @property
    def file_pattern(self) -> str:
        return self._param("file_pattern")

    @property
    def throttle_interval_sec(self) -> float:
        return self._param("throttle_interval_sec")

    @property
    def min_monitoring_window_days(self) -> float:
        return self._param("min_monitoring_window_days")

    @property
    def max_scan_workers(self) -> int:
        return self._param("max_scan_workers") or self.default_scan_workers

    @property
    def startup_mode(self) -> str | None:
        """``"message-only"`` (no snapshot) or None; other values warn when loading."""
        mode = self._param("startup_mode")
        return mode if mode in STARTUP_MODES else None


@dataclass
class SenderConfig:
    """``senders.<id>``: a fusion receiver (drivers ``fusion`` and ``http`` are the same)."""

    driver: str
    uri: str  # http(s) base URL of fusion's receiver, without a trailing "/"
    credential: Any = field(default=None, repr=False)  # {key: ...} or {api_key: ...}
    batch_size: int = 1000
    timeout_sec: float = 30.0
    disabled: bool = False
    driver_params: dict[str, Any] = field(default_factory=dict)
    ca_file: str | None = None  # PEM CAs for an https uri; None: the system trust store

    @property
    def api_key(self) -> str | None:
        """The ``X-API-Key`` to send: ``credential.key``, else ``credential.api_key``."""
        cred = self.credential if isinstance(self.credential, dict) else {"key": self.credential}
        return next((str(cred[n]) for n in ("key", "api_key") if cred.get(n)), None)

    @property
    def timeout(self) -> float:
        """HTTP timeout: ``driver_params.timeout`` (what 0.8.17 read) if set, else
        ``timeout_sec``."""
        value = self.driver_params.get("timeout")
        where = "senders.<sender>.driver_params.timeout"
        return self.timeout_sec if value is None else convert(float, value, where)


@dataclass
class PipeConfig:
    """``pipes.<id>``: one source feeding one sender."""

    source: str
    sender: str
    audit_interval_sec: float = 600.0  # fusion's session reply overrides both intervals
    sentinel_interval_sec: float = 120.0
    session_timeout_seconds: int | None = None  # hint sent on session create
    error_retry_interval: float = 5.0
    backoff_multiplier: float = 2.0
    max_backoff_seconds: float = 60.0
    max_consecutive_errors: int = 5  # errors in a row before the pipe says CRITICAL/error
    full_audit_every: int = 6  # every Nth audit re-reads silent directories too (0: never)
    disabled: bool = False


@dataclass(frozen=True)
class ConsoleConfig:
    """``console``: the local status page and JSON (fustor/agent/console.py)."""

    enabled: bool = True
    host: str = "127.0.0.1"  # only this machine, unless configured otherwise
    port: int = 8100


@dataclass
class AgentConfig:
    logging: str = "INFO"
    log_format: str | None = None
    log_dir: str | None = None
    fs_scan_workers: int = 4
    agent_id: str | None = None
    status_interval_sec: float = 10.0  # ours: how often the agent status is refreshed
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    senders: dict[str, SenderConfig] = field(default_factory=dict)
    pipes: dict[str, PipeConfig] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # files read, in merge order
    origin: dict[str, str] = field(default_factory=dict)  # "pipes.<id>" -> defining file
    ignored: list[str] = field(default_factory=list)  # "file: dotted.key" accepted but unused
    warnings: list[str] = field(default_factory=list)

    def pipes_in_file(self, file: str | Path) -> list[str]:
        """Ids of the pipes (finally) defined by ``file`` — for ``start <file>``."""
        want = Path(file).expanduser().resolve()
        return [pid for pid in self.pipes
                if Path(self.origin.get(f"pipes.{pid}", COMMAND_LINE)).resolve() == want]


def _seed_names(s: Section, section: str) -> None:
    for other, key in SYNONYMS[section].items():
        s.synonym(key, other)


def _disabled(s: Section) -> bool:
    """``disabled: true`` or the seed's ``enabled: false``."""
    return s.get("disabled", bool, False) or not s.get("enabled", bool, True)


def _fs_root(s: Section) -> str:
    raw = s.get("uri", str, REQUIRED)
    path = unquote(raw[7:]) if raw.lower().startswith("file://") else raw  # file:///x -> /x
    if not os.path.isabs(path):
        raise ConfigError(f"{s.where('uri')}: {raw!r} is not an absolute path; write the "
                          "full path of the tree, e.g. /data/projects")
    return os.path.normpath(path)


def _source(s: Section) -> SourceConfig:
    _seed_names(s, "sources")
    driver = s.get("driver", str, REQUIRED, choices=SOURCE_DRIVERS)
    uri = _fs_root(s)
    params = s.child("driver_params")
    for name, (kind, _default, minimum) in _FS_PARAMS.items():
        params.get(name, kind, None, minimum)
    params.done()
    # "credential" is left unmarked, so it is listed as ignored
    return SourceConfig(driver=driver, uri=uri, credential=s.data.get("credential"),
                        max_queue_size=s.get("max_queue_size", int, 1000, 1),
                        disabled=_disabled(s),
                        driver_params=dict(params.data))


def _sender(s: Section) -> SenderConfig:
    _seed_names(s, "senders")
    driver = s.get("driver", str, REQUIRED, choices=SENDER_DRIVERS)
    uri = s.get("uri", str, REQUIRED).strip()
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{s.where('uri')}: {uri!r} is not an http(s) URL; write fusion's "
                          "receiver address, e.g. http://fusion-host:8102")
    cred = _credential(s)
    params = s.child("driver_params")
    params.get("timeout", float, None, 0.001)
    params.done()
    return SenderConfig(driver=driver, uri=uri.rstrip("/"), credential=cred,
                        batch_size=s.get("batch_size", int, 1000, 1),
                        timeout_sec=s.get("timeout_sec", float, 30.0, 0.001),
                        disabled=_disabled(s), driver_params=dict(params.data),
                        ca_file=_ca_file(s))


def _credential(s: Section) -> dict | None:
    cred = s.data.get("credential")
    if isinstance(cred, str):  # a bare key
        s.used.add("credential")
        return {"key": cred}
    if cred is None:
        return None
    if not isinstance(cred, dict):  # not the usual "got <value>": it may be the secret
        raise ConfigError(f"{s.where('credential')}: expected a mapping {{key: ...}} or the "
                          "key as a string; put the key in quotes")
    sub = s.child("credential")
    for name in ("key", "api_key"):
        sub.used.add(name)
        if sub.data.get(name) is not None and not isinstance(sub.data[name], str):
            # not the usual "got <value>": the value is a secret
            raise ConfigError(f"{sub.where(name)}: expected a string (the key); put it in quotes")
    sub.done()
    return dict(cred)


def _ca_file(s: Section) -> str | None:
    raw = s.get("ca_file", str, None)
    if raw is None:
        return None
    path = Path(raw).expanduser()
    if not path.is_absolute() and s.file != COMMAND_LINE:
        path = Path(s.file).parent / path  # relative to the file that says it
    path = path.absolute()
    if not path.is_file():
        raise ConfigError(f"{s.where('ca_file')}: {raw!r} is not a file; give the PEM file of "
                          "the CA that signed fusion's certificate")
    return str(path)


def _pipe(s: Section) -> PipeConfig:
    # fields_mapping (a row projection of the original) is not applied: fusion's fs views
    # need the fs row as it is, so the key is left unread and listed as ignored
    _seed_names(s, "pipes")
    return PipeConfig(
        source=s.get("source", str, REQUIRED), sender=s.get("sender", str, REQUIRED),
        audit_interval_sec=s.get("audit_interval_sec", float, 600.0, 0),
        sentinel_interval_sec=s.get("sentinel_interval_sec", float, 120.0, 0),
        session_timeout_seconds=s.get("session_timeout_seconds", int, None, 0) or None,
        error_retry_interval=s.get("error_retry_interval", float, 5.0, 0),
        backoff_multiplier=s.get("backoff_multiplier", float, 2.0, 1),
        max_backoff_seconds=s.get("max_backoff_seconds", float, 60.0, 0),
        max_consecutive_errors=s.get("max_consecutive_errors", int, 5, 1),
        full_audit_every=s.get("full_audit_every", int, 6, 0),
        disabled=_disabled(s))


_SECTIONS = {"sources": _source, "senders": _sender, "pipes": _pipe}
_GLOBALS: dict[str, tuple[type, float | None]] = {
    "fs_scan_workers": (int, 1), "agent_id": (str, None), "status_interval_sec": (float, 0.001)}


def _globals(s: Section, out: dict[str, Any]) -> None:
    """The global keys one file sets, into ``out`` (a later file overwrites)."""
    for key, (kind, minimum) in _GLOBALS.items():
        if s.data.get(key) is not None:
            out[key] = s.get(key, kind, None, minimum)
    if s.data.get("agent_id") is not None:
        out["agent_id"] = aid = out["agent_id"].strip()
        if not aid or ":" in aid:  # fusion takes the agent id as the task id's part before ":"
            raise ConfigError(f"{s.where('agent_id')}: {aid!r} cannot be an agent id; use "
                              "letters, digits, '.', '-' or '_' (no ':')")
    parse_logging(s, out)
    if s.data.get("console") is not None:
        c = s.child("console")
        out["console"] = ConsoleConfig(enabled=c.get("enabled", bool, True),
                                       host=c.get("host", str, "127.0.0.1").strip(),
                                       port=c.get("port", int, 8100, 1, 65535))
        c.done()


def console_options(cfg: AgentConfig, *, host: str | None = None, port: int | None = None,
                    off: bool = False) -> AgentConfig:
    """``cfg`` with the console options of `agent start` applied over its ``console:``."""
    c = cfg.console
    cfg.console = ConsoleConfig(enabled=c.enabled and not off, host=host or c.host,
                                port=c.port if port is None else port)
    return cfg


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: YAML syntax error{at}: "
                          f"{getattr(exc, 'problem', None) or exc}; fix the file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None


def _config_files(target: Path | list[Path] | None) -> list[Path]:
    if isinstance(target, list):  # several files or directories, merged in the order given
        return [p for t in target for p in _config_files(Path(t))]
    home_dir = fustor_home() / CONFIG_DIR
    if target is None:
        single = [p for p in (fustor_home() / CONFIG_FILE,) if p.is_file()]
        return single + _config_files(home_dir) if home_dir.is_dir() else single
    target = Path(target).expanduser()
    if target.is_dir():
        return sorted((p for p in target.iterdir() if p.suffix in (".yaml", ".yml")
                       and not p.name.startswith(".") and p.is_file()), key=lambda p: p.name)
    if target.is_file():
        return [target]
    if target == home_dir:
        return []  # nothing configured yet
    raise ConfigError(f"{target}: no such config file or directory; check the path or "
                      f"FUSTOR_HOME (default directory: {home_dir})")


def _merge(cfg: AgentConfig, file: str, data: Any, found: dict[str, Any]) -> None:
    top = Section(data, "", file, cfg.ignored)
    merge_sections(cfg, top, _SECTIONS, cfg.origin)
    _globals(top, found)
    top.done()


def _build(documents: list[tuple[str, Any]]) -> AgentConfig:
    cfg = AgentConfig()
    found: dict[str, Any] = {}
    for file, data in documents:
        cfg.files.append(file)
        _merge(cfg, file, data, found)
    for key, value in found.items():
        setattr(cfg, key, value)
    for src in cfg.sources.values():
        src.default_scan_workers = cfg.fs_scan_workers
    _check(cfg)
    return cfg


def load_agent_config(target: Path | list[Path] | None = None) -> AgentConfig:
    """Read, merge and check the agent config; raise ConfigError on anything broken.

    ``target`` None means ``fustor_home()/agent-config.yaml`` then
    ``fustor_home()/agent-config/`` (both missing: empty config); a directory means its
    ``*.yaml`` and ``*.yml`` files in file-name order; a file, that file; a list, each of
    those in the order given.
    """
    return _build([(str(p), _read_yaml(p)) for p in _config_files(target)])


def _check(cfg: AgentConfig) -> None:
    """Checks that need the whole merged config: references, pairs, advice."""
    def at(section: str, ident: str) -> str:
        return f"{cfg.origin.get(f'{section}.{ident}', COMMAND_LINE)}: {section}.{ident}"

    for pid, pipe in cfg.pipes.items():
        for kind, table in (("source", cfg.sources), ("sender", cfg.senders)):
            if (ref := getattr(pipe, kind)) not in table:
                raise unknown_ref(f"{at('pipes', pid)}.{kind}", ref, kind, table,
                                  f"fix the name or add it under {kind}s:")
    pairs: dict[tuple[str, str], str] = {}
    for pid, pipe in enabled_pipes(cfg).items():
        other = pairs.setdefault((pipe.source, pipe.sender), pid)
        if other != pid:
            raise ConfigError(f"{at('pipes', pid)}: same source {pipe.source!r} and sender "
                              f"{pipe.sender!r} as pipes.{other} (defined in "
                              f"{cfg.origin.get(f'pipes.{other}', COMMAND_LINE)}); they would "
                              "send the same files twice, so remove or disable one")
    for section in _SECTIONS:
        for ident in getattr(cfg, section):
            if not ID_RE.match(ident) or len(ident) > ID_MAX_LEN:
                warn(cfg, f"{at(section, ident)}: id is not URL-safe; prefer lower-case "
                      f"letters, digits, '-' and '_' (at most {ID_MAX_LEN} characters)")
    for sid, src in cfg.sources.items():
        mode = src.driver_params.get("startup_mode")
        if mode is not None and mode not in STARTUP_MODES:
            warn(cfg, f"{at('sources', sid)}.driver_params.startup_mode: {mode!r} is not "
                  "known, so the snapshot runs as usual (only 'message-only' skips it)")
        if not src.disabled and not os.path.isdir(src.uri):
            warn(cfg, f"{at('sources', sid)}.uri: {src.uri} is not a directory (yet); "
                  "the pipe will fail until it exists")
    for sid, snd in cfg.senders.items():
        if not snd.disabled and not snd.api_key:
            warn(cfg, f"{at('senders', sid)}.credential: no key, so fusion will refuse "
                  "sessions (401); add credential: {key: <agent key>}")


def enabled_pipes(cfg: AgentConfig) -> dict[str, PipeConfig]:
    """Pipes that run: the pipe, its source and its sender all enabled. Start and reload
    both use this, so they never disagree about which pipes exist (§16.12)."""
    out: dict[str, PipeConfig] = {}
    for pid, pipe in cfg.pipes.items():
        src, snd = cfg.sources.get(pipe.source), cfg.senders.get(pipe.sender)
        if not pipe.disabled and src and not src.disabled and snd and not snd.disabled:
            out[pid] = pipe
    return out


def _read_agent_id(path: Path) -> str | None:
    """The stored id; None if there is no file, "" if it is empty."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the agent id: {exc}; fix the file's "
                          "permissions or set agent_id: in the config") from None
    if ":" in value or any(c.isspace() for c in value):
        raise ConfigError(f"{path}: {value!r} cannot be an agent id (no ':' or spaces); "
                          "delete the file to get a new id")
    return value


def _host_label() -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", socket.gethostname().lower()).strip("-.")
    return name[:40] or "agent"


def resolve_agent_id(cfg: AgentConfig) -> str:
    """The agent's id: the ``agent_id`` key if set, else the one kept in
    ``fustor_home()/agent.id``, created on first use as ``<hostname>-<6 hex digits>``.

    Not derived from the IP address (as the original HEAD did): behind NAT and in
    containers many agents share one address, so their ids — and fusion's lineage and
    session bookkeeping — collided, and the id changed whenever the address did (§16.18).
    A bare hostname collides too (cloned VMs, default container names), hence the random
    suffix; persisting it keeps the id stable across restarts. An id written to the same
    file by the 0.8.17 agent (a UUID) is kept, so upgraded agents keep their identity.
    """
    if cfg.agent_id:
        return cfg.agent_id
    path = fustor_home() / AGENT_ID_FILE
    existing = _read_agent_id(path)
    if existing:
        return existing
    new = f"{_host_label()}-{secrets.token_hex(3)}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if existing == "":
            path.unlink(missing_ok=True)  # an empty leftover: replace it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # create once
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new + "\n")
    except FileExistsError:  # another agent process won the race: use its id
        return _read_agent_id(path) or new
    except OSError as exc:
        raise ConfigError(f"{path}: cannot store the agent id: {exc}; make FUSTOR_HOME "
                          "writable or set agent_id: in the config") from None
    return new


_PIPE_KEYS = tuple(f.name for f in dataclasses.fields(PipeConfig))[2:]
_QUICK_ROUTES: dict[str, tuple[str, ...]] = {
    "top": tuple(_GLOBALS) + ("logging",), "source": ("max_queue_size",),
    "params": tuple(_FS_PARAMS), "sender": ("batch_size", "timeout_sec", "ca_file"),
    "pipe": _PIPE_KEYS}


def quick_config(watch_dir: Path, fusion_url: str, key: str | None,
                 **overrides: Any) -> AgentConfig:
    """The config of ``fustor agent start --watch DIR --fusion URL --key KEY``: source
    ``watch`` → sender ``fusion`` → pipe ``default``. ``overrides`` name any pipe setting,
    sender ``batch_size``/``timeout_sec``, source ``max_queue_size``, an fs driver param or
    a global (``agent_id``, ``logging``, ...); None values are skipped, the rest is checked
    like YAML values."""
    params: dict[str, Any] = {}
    source = {"driver": "fs", "uri": str(Path(watch_dir).expanduser().absolute()),
              "driver_params": params}
    sender = {"driver": "fusion", "uri": fusion_url, "credential": {"key": key} if key else None}
    pipe = {"source": "watch", "sender": "fusion"}
    doc = {"sources": {"watch": source}, "senders": {"fusion": sender}, "pipes": {"default": pipe}}
    targets = {"top": doc, "source": source, "params": params, "sender": sender, "pipe": pipe}
    for name, value in overrides.items():
        route = next((r for r, names in _QUICK_ROUTES.items() if name in names), None)
        if route is None:
            known = sorted(n for names in _QUICK_ROUTES.values() for n in names)
            raise ConfigError(f"{COMMAND_LINE}: {name}: unknown setting; use one of: "
                              f"{', '.join(known)}")
        if value is not None:
            targets[route][name] = value
    return _build([(COMMAND_LINE, doc)])


def config_diff(old: AgentConfig, new: AgentConfig) -> dict[str, Any]:
    """What a reload must do, over enabled pipes: ``added``, ``removed`` and ``changed``
    pipe ids (sorted) and ``logging_changed``. A pipe is changed when its own settings, its
    source's or its sender's settings differ (whatever their ids), or when ``agent_id``
    changed (its task id changes)."""
    before, after = enabled_pipes(old), enabled_pipes(new)

    def settings(cfg: AgentConfig, pipe: PipeConfig) -> tuple[Any, ...]:
        return pipe, cfg.sources[pipe.source], cfg.senders[pipe.sender]

    changed = [pid for pid in after if pid in before and (
        old.agent_id != new.agent_id or settings(old, before[pid]) != settings(new, after[pid]))]
    return {"added": sorted(set(after) - set(before)),
            "removed": sorted(set(before) - set(after)),
            "changed": sorted(changed),
            "logging_changed": (old.logging, old.log_format, old.log_dir)
            != (new.logging, new.log_format, new.log_dir)}


EXAMPLE_CONFIG = """\
# fustor agent config. Every *.yaml and *.yml file in $FUSTOR_HOME/agent-config/ is merged
# in file-name order, so sources, senders and pipes may live in separate files.
logging: INFO               # or {level: INFO, format: "...", dir: /var/log/fustor}
fs_scan_workers: 4          # default scan threads of every fs source
# agent_id: lab-nas-01      # default: <hostname>-<random>, kept in $FUSTOR_HOME/agent.id
console:                    # read-only status page (/) and JSON (/status) of this agent
  enabled: true             # `agent start --no-console` turns it off too
  host: 127.0.0.1           # only this machine; `--console-host H` overrides
  port: 8100                # `--console-port N` overrides; a busy port is only a warning

sources:                    # trees to watch
  projects:
    driver: fs
    uri: /srv/projects      # absolute path (file:///srv/projects works too)
    max_queue_size: 1000    # realtime events buffered: 100 times this number
    driver_params:
      file_pattern: "*"     # scans index only the files whose name matches
      throttle_interval_sec: 5.0   # a file being written is reported at most this often
      # max_scan_workers: 8        # instead of fs_scan_workers, for this tree
      # startup_mode: message-only # no initial snapshot

senders:                    # fusion's receiver
  main-fusion:
    driver: fusion          # "http" means the same
    uri: http://fusion-host:8102   # https://... works too
    credential: {key: change-me-agent-key}
    batch_size: 1000        # events per request
    timeout_sec: 30.0
    # ca_file: /etc/fustor/fusion-ca.pem  # https: trust only this CA's certificates
    #                                      # (default: the system's trusted CAs)

pipes:                      # one source feeding one sender; one pipe per pair
  projects:
    source: projects
    sender: main-fusion
    audit_interval_sec: 600.0      # fusion's session reply may replace both intervals
    sentinel_interval_sec: 120.0
    error_retry_interval: 5.0      # wait after an error, times backoff_multiplier each
    max_backoff_seconds: 60.0      # time up to this
"""


def dump_example() -> str:
    """A commented example config that :func:`load_agent_config` accepts."""
    return EXAMPLE_CONFIG
