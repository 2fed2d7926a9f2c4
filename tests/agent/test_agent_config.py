"""fustor.agent.config: loading, merging and checking the agent YAML."""

from __future__ import annotations

import logging
import re
import socket
import textwrap
from pathlib import Path

import pytest
import yaml

from fustor.agent.config import (
    AgentConfig,
    PipeConfig,
    SenderConfig,
    SourceConfig,
    config_diff,
    dump_example,
    enabled_pipes,
    load_agent_config,
    quick_config,
    resolve_agent_id,
)
from fustor.errors import ConfigError


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    return root


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("FUSTOR_HOME", str(path))
    return path


def one_pipe(tree: Path, **pipe: object) -> str:
    """A minimal valid config; ``pipe`` adds keys to pipes.p."""
    extra = "".join(f"    {k}: {v}\n" for k, v in pipe.items())
    return (f"sources:\n  s: {{driver: fs, uri: '{tree}'}}\n"
            "senders:\n  f: {driver: fusion, uri: 'http://fusion:8102', credential: {key: k1}}\n"
            f"pipes:\n  p:\n    source: s\n    sender: f\n{extra}")


def load_text(tmp_path: Path, text: str, name: str = "c.yaml") -> AgentConfig:
    return load_agent_config(write(tmp_path / "conf", name, text))


# --------------------------------------------------------------------------- compatibility


def config_0817(tree: Path) -> str:
    # written for fustor-agent 0.8.17, with keys that version accepted but we do not use
    return f"""\
        logging: DEBUG
        fs_scan_workers: 2
        legacy_option: true
        sources:
          research-fs:
            driver: fs
            uri: "{tree}"
            credential: {{user: nobody}}
            max_queue_size: 500
            max_retries: 10
            retry_delay_sec: 5
            driver_params:
              file_pattern: "*.dat"
              throttle_interval_sec: 2
              max_sync_delay_seconds: 1.0
        senders:
          main-fusion:
            driver: fusion
            uri: http://fusion-host:18888/
            credential: {{key: agent-key-1}}
            batch_size: 200
            timeout_sec: 20
            max_retries: 10
            retry_delay_sec: 5
            driver_params: {{timeout: 12.5, api_version: v2}}
        pipes:
          research:
            source: research-fs
            sender: main-fusion
            audit_interval_sec: 300
            sentinel_interval_sec: 60
            iterator_queue_size: 1000
            fields_mapping:
              - {{to: path, source: ["path:string"]}}
        """


def test_config_written_for_0817_loads_unchanged(tmp_path, tree):
    cfg = load_text(tmp_path, config_0817(tree), "default.yaml")
    assert (cfg.logging, cfg.fs_scan_workers, cfg.agent_id) == ("DEBUG", 2, None)
    src = cfg.sources["research-fs"]
    assert (src.driver, src.uri, src.max_queue_size, src.disabled) == ("fs", str(tree), 500,
                                                                       False)
    assert src.credential == {"user": "nobody"}
    assert (src.file_pattern, src.throttle_interval_sec) == ("*.dat", 2.0)
    assert src.max_scan_workers == 2  # fs_scan_workers is applied (the original ignored it)
    snd = cfg.senders["main-fusion"]
    assert (snd.driver, snd.uri, snd.api_key) == ("fusion", "http://fusion-host:18888",
                                                  "agent-key-1")
    assert (snd.batch_size, snd.timeout_sec, snd.timeout) == (200, 20.0, 12.5)
    pipe = cfg.pipes["research"]
    assert (pipe.source, pipe.sender) == ("research-fs", "main-fusion")
    assert (pipe.audit_interval_sec, pipe.sentinel_interval_sec) == (300.0, 60.0)
    assert list(enabled_pipes(cfg)) == ["research"]
    file = str(tmp_path / "conf" / "default.yaml")
    assert sorted(cfg.ignored) == sorted(f"{file}: {key}" for key in [
        "legacy_option", "sources.research-fs.credential", "sources.research-fs.max_retries",
        "sources.research-fs.retry_delay_sec",
        "sources.research-fs.driver_params.max_sync_delay_seconds",
        "senders.main-fusion.max_retries", "senders.main-fusion.retry_delay_sec",
        "senders.main-fusion.driver_params.api_version", "pipes.research.iterator_queue_size",
        "pipes.research.fields_mapping"])  # not applied: fs views need the fs row as it is
    assert cfg.warnings == []


def test_secrets_are_not_in_repr(tmp_path, tree):
    cfg = load_text(tmp_path, config_0817(tree))
    assert "agent-key-1" not in repr(cfg)


# --------------------------------------------------------------------------- files


def test_default_target_is_agent_config_under_home(home, tree):
    assert load_agent_config() == AgentConfig()  # missing directory: empty config, no error
    assert not (home / "agent-config").exists()
    write(home / "agent-config", "default.yaml", one_pipe(tree))
    cfg = load_agent_config()
    assert cfg.files == [str(home / "agent-config" / "default.yaml")]
    assert list(cfg.pipes) == ["p"]


def test_empty_directory_and_empty_file_are_valid(tmp_path):
    (tmp_path / "empty").mkdir()
    assert load_agent_config(tmp_path / "empty").pipes == {}
    cfg = load_text(tmp_path, "")
    assert cfg.pipes == {} and cfg.warnings == [] and len(cfg.files) == 1


def test_missing_explicit_target_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: no such config file"):
        load_agent_config(tmp_path / "nope.yaml")


def test_yaml_and_yml_merged_in_file_name_order_with_cross_file_refs(tmp_path, tree):
    folder = tmp_path / "conf"
    write(folder, "30-pipes.yml", "pipes: {p: {source: s, sender: f}}\n")
    write(folder, "10-sources.yaml", f"sources: {{s: {{driver: fs, uri: '{tree}'}}}}\n")
    write(folder, "20-senders.YML.yaml",
          "senders: {f: {driver: http, uri: 'https://fusion', credential: {api_key: k}}}\n")
    write(folder, "notes.txt", "not: [yaml")  # neither .yaml nor .yml
    write(folder, ".swap.yaml", "not: [yaml")  # dot-files are skipped
    write(folder, "default.yaml.bak", "not: [yaml")
    cfg = load_agent_config(folder)
    assert [Path(f).name for f in cfg.files] == ["10-sources.yaml", "20-senders.YML.yaml",
                                                 "30-pipes.yml"]
    assert cfg.senders["f"].api_key == "k"
    assert list(enabled_pipes(cfg)) == ["p"]
    assert cfg.pipes_in_file(folder / "30-pipes.yml") == ["p"]
    assert cfg.pipes_in_file(folder / "10-sources.yaml") == []
    assert cfg.warnings == [] and cfg.ignored == []


def test_later_id_wins_with_warning_and_globals_from_last_setter(tmp_path, tree, caplog):
    folder = tmp_path / "conf"
    write(folder, "a.yaml", one_pipe(tree) + "logging: DEBUG\nagent_id: first\n")
    write(folder, "b.yaml", "agent_id: second\npipes:\n  p: {source: s, sender: f, "
          "audit_interval_sec: 5}\n")
    with caplog.at_level(logging.WARNING, logger="fustor.agent.config"):
        cfg = load_agent_config(folder)
    assert cfg.pipes["p"].audit_interval_sec == 5.0
    assert (cfg.agent_id, cfg.logging) == ("second", "DEBUG")
    [warning] = cfg.warnings
    assert "b.yaml: pipes.p replaces the definition from" in warning and "a.yaml" in warning
    assert warning in caplog.text
    assert cfg.pipes_in_file(folder / "b.yaml") == ["p"]
    assert cfg.pipes_in_file(folder / "a.yaml") == []


def test_single_file_target_reads_only_that_file(tmp_path, tree):
    write(tmp_path / "conf", "b.yaml", "pipes: {q: {source: nope, sender: nope}}\n")
    cfg = load_agent_config(write(tmp_path / "conf", "a.yaml", one_pipe(tree)))
    assert list(cfg.pipes) == ["p"]


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match=r"bad\.yaml: YAML syntax error at line 2"):
        load_text(tmp_path, "pipes:\n\tp: {source: s}\n", "bad.yaml")


@pytest.mark.parametrize("text, match", [
    ("- a\n- b\n", r"c\.yaml: top level: expected a mapping"),
    ("sources: [a]\n", r"c\.yaml: sources\[0\]: expected a mapping with an id"),  # list form
    ("pipes:\n  1: {source: s, sender: f}\n", r"c\.yaml: pipes\.1: ids must be non-empty"),
    ("pipes:\n  off: {source: s, sender: f}\n", r"pipes\.False: .* put the id in quotes"),
])
def test_structure_errors(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_text(tmp_path, text)


# --------------------------------------------------------------------------- defaults, types


def test_defaults(tmp_path, tree):
    cfg = load_text(tmp_path, one_pipe(tree))
    assert (cfg.logging, cfg.log_format, cfg.log_dir) == ("INFO", None, None)
    assert (cfg.fs_scan_workers, cfg.agent_id, cfg.status_interval_sec) == (4, None, 10.0)
    assert cfg.sources["s"] == SourceConfig("fs", str(tree))
    src = cfg.sources["s"]
    assert (src.file_pattern, src.throttle_interval_sec, src.max_scan_workers) == ("*", 5.0, 4)
    assert (src.startup_mode, src.min_monitoring_window_days) == (None, 30.0)
    assert src.queue_bound == 100_000  # max_queue_size 1000 × 100
    assert cfg.senders["f"] == SenderConfig("fusion", "http://fusion:8102", {"key": "k1"})
    assert (cfg.senders["f"].batch_size, cfg.senders["f"].timeout) == (1000, 30.0)
    assert cfg.pipes["p"] == PipeConfig("s", "f")
    pipe = cfg.pipes["p"]
    assert (pipe.audit_interval_sec, pipe.sentinel_interval_sec) == (600.0, 120.0)
    assert (pipe.error_retry_interval, pipe.backoff_multiplier, pipe.max_backoff_seconds,
            pipe.max_consecutive_errors) == (5.0, 2.0, 60.0, 5)
    assert (pipe.session_timeout_seconds, pipe.disabled, pipe.full_audit_every) == (None, False, 6)
    assert cfg.warnings == [] and cfg.ignored == []


def test_strings_numbers_and_booleans_as_yaml_users_write_them(tmp_path, tree):
    cfg = load_text(tmp_path, one_pipe(tree, audit_interval_sec='"900"', max_consecutive_errors=
                                       "3.0", disabled="'no'", session_timeout_seconds=0)
                    + "status_interval_sec: 2.5\n")
    pipe = cfg.pipes["p"]
    assert (pipe.audit_interval_sec, pipe.max_consecutive_errors, pipe.disabled) == (900.0, 3,
                                                                                     False)
    assert pipe.session_timeout_seconds is None  # 0 means "send no hint"
    assert cfg.status_interval_sec == 2.5


@pytest.mark.parametrize("key, value, problem", [
    ("audit_interval_sec", "abc", "expected a number of seconds"),
    ("sentinel_interval_sec", -1, "must be at least 0"),
    ("max_consecutive_errors", 2.5, "expected a whole number"),
    ("max_consecutive_errors", 0, "must be at least 1"),
    ("backoff_multiplier", 0.5, "must be at least 1"),
    ("session_timeout_seconds", "soon", "expected a whole number"),
    ("disabled", "maybe", "expected true or false"),
    ("full_audit_every", -1, "must be at least 0"),
])
def test_wrong_pipe_values_name_file_and_key(tmp_path, tree, key, value, problem):
    with pytest.raises(ConfigError, match=rf"c\.yaml: pipes\.p\.{key}\S*: {problem}"):
        load_text(tmp_path, one_pipe(tree, **{key: value}))


@pytest.mark.parametrize("text, match", [
    ("fs_scan_workers: many\n", r"c\.yaml: fs_scan_workers: expected a whole number"),
    ("fs_scan_workers: 0\n", r"c\.yaml: fs_scan_workers: must be at least 1"),
    ("status_interval_sec: 0\n", r"c\.yaml: status_interval_sec: must be at least"),
    ("agent_id: 'host:1'\n", r"c\.yaml: agent_id: 'host:1' cannot be an agent id"),
    ("agent_id: '  '\n", r"c\.yaml: agent_id: '' cannot be an agent id"),
    ("logging: LOUD\n", r"c\.yaml: logging: unknown log level 'LOUD'"),
    ("logging: {level: LOUD}\n", r"c\.yaml: logging\.level: unknown log level"),
])
def test_wrong_global_values(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_text(tmp_path, text)


def test_logging_as_level_or_mapping(tmp_path):
    cfg = load_text(tmp_path, "logging: warn\nagent_id: '  lab-01 '\n")
    assert (cfg.logging, cfg.log_format, cfg.log_dir, cfg.agent_id) == ("WARNING", None, None,
                                                                       "lab-01")
    cfg = load_text(tmp_path, "logging: {level: debug, format: '%(message)s', dir: /var/log}\n")
    assert (cfg.logging, cfg.log_format, cfg.log_dir) == ("DEBUG", "%(message)s", "/var/log")


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize("uri", ["file://{tree}", "file://{tree}/", "{tree}/./", "{tree}//"])
def test_source_uri_is_an_absolute_path_file_prefix_stripped(tmp_path, tree, uri):
    text = one_pipe(tree).replace(f"'{tree}'", f"'{uri.format(tree=tree)}'")
    assert load_text(tmp_path, text).sources["s"].uri == str(tree)


def test_source_uri_percent_escapes_in_file_uri(tmp_path):
    spaced = tmp_path / "my tree"
    spaced.mkdir()
    cfg = load_text(tmp_path, "sources: {s: {driver: fs, uri: 'file://"
                    f"{str(spaced).replace(' ', '%20')}'}}}}\n")
    assert cfg.sources["s"].uri == str(spaced)


@pytest.mark.parametrize("source, match", [
    ("{uri: /data}", r"c\.yaml: sources\.s\.driver: required but missing"),
    ("{driver: fs}", r"c\.yaml: sources\.s\.uri: required but missing"),
    ("", r"c\.yaml: sources\.s\.driver: required but missing"),
    ("{driver: s3, uri: /data}", r"c\.yaml: sources\.s\.driver: unknown driver 's3'"),
    ("{driver: fs, uri: data/x}", r"c\.yaml: sources\.s\.uri: 'data/x' is not an absolute"),
    ("{driver: fs, uri: 'file://data/x'}", r"sources\.s\.uri: 'file://data/x' is not an abs"),
    ("{driver: fs, uri: /d, max_queue_size: 0}", r"sources\.s\.max_queue_size: must be at l"),
    ("{driver: fs, uri: /d, driver_params: [x]}", r"sources\.s\.driver_params: expected a m"),
    ("{driver: fs, uri: /d, driver_params: {throttle_interval_sec: fast}}",
     r"c\.yaml: sources\.s\.driver_params\.throttle_interval_sec: expected a number"),
    ("{driver: fs, uri: /d, driver_params: {max_scan_workers: 0}}",
     r"sources\.s\.driver_params\.max_scan_workers: must be at least 1"),
])
def test_bad_sources(tmp_path, source, match):
    with pytest.raises(ConfigError, match=match):
        load_text(tmp_path, f"sources:\n  s: {source}\n")


def test_fs_scan_workers_is_the_default_of_max_scan_workers(tmp_path, tree):
    folder = tmp_path / "conf"
    write(folder, "a.yaml", f"""\
        sources:
          s: {{driver: fs, uri: '{tree}'}}
          t: {{driver: fs, uri: '{tree}', driver_params: {{max_scan_workers: 16}}}}
        """)
    write(folder, "b.yaml", "fs_scan_workers: 7\n")  # set in a later file: still applies
    cfg = load_agent_config(folder)
    assert cfg.sources["s"].max_scan_workers == 7
    assert cfg.sources["t"].max_scan_workers == 16


def test_driver_params_accessors_and_startup_mode(tmp_path, tree):
    cfg = load_text(tmp_path, f"""\
        sources:
          a: {{driver: fs, uri: '{tree}', max_queue_size: 20, driver_params:
              {{startup_mode: message-only, file_pattern: '*.h5', throttle_interval_sec: '0.5',
                min_monitoring_window_days: 7}}}}
          b: {{driver: fs, uri: '{tree}', driver_params: {{startup_mode: snapshot}}}}
        """)
    a, b = cfg.sources["a"], cfg.sources["b"]
    assert (a.startup_mode, a.file_pattern, a.throttle_interval_sec) == ("message-only", "*.h5",
                                                                         0.5)
    assert (a.min_monitoring_window_days, a.queue_bound) == (7.0, 2000)
    assert b.startup_mode is None  # unknown mode: the snapshot runs, with a warning
    [warning] = cfg.warnings
    assert "sources.b.driver_params.startup_mode: 'snapshot' is not known" in warning


def test_missing_source_directory_is_a_warning_not_an_error(tmp_path):
    cfg = load_text(tmp_path, f"sources: {{s: {{driver: fs, uri: '{tmp_path}/later'}}}}\n")
    [warning] = cfg.warnings
    assert "sources.s.uri" in warning and "not a directory" in warning
    cfg = load_text(tmp_path, f"sources: {{s: {{driver: fs, uri: '{tmp_path}/later', "
                    "disabled: true}}\n")
    assert cfg.warnings == []


# --------------------------------------------------------------------------- senders


@pytest.mark.parametrize("sender, match", [
    ("{uri: 'http://f'}", r"c\.yaml: senders\.f\.driver: required but missing"),
    ("{driver: fusion}", r"c\.yaml: senders\.f\.uri: required but missing"),
    ("{driver: kafka, uri: 'http://f'}", r"senders\.f\.driver: unknown driver 'kafka'"),
    ("{driver: fusion, uri: 'ftp://f'}", r"c\.yaml: senders\.f\.uri: 'ftp://f' is not an htt"),
    ("{driver: fusion, uri: 'fusion-host:8102'}", r"senders\.f\.uri: .* is not an http"),
    ("{driver: fusion, uri: 'http://'}", r"senders\.f\.uri: 'http://' is not an http"),
    ("{driver: fusion, uri: 'http://f', batch_size: 0}", r"senders\.f\.batch_size: must be"),
    ("{driver: fusion, uri: 'http://f', timeout_sec: x}", r"senders\.f\.timeout_sec: expect"),
    ("{driver: fusion, uri: 'http://f', driver_params: {timeout: 0}}",
     r"senders\.f\.driver_params\.timeout: must be at least"),
    ("{driver: fusion, uri: 'http://f', credential: [k]}",
     r"c\.yaml: senders\.f\.credential: expected a mapping"),
    ("{driver: fusion, uri: 'http://f', credential: {key: [k]}}",
     r"senders\.f\.credential\.key: expected a string"),
])
def test_bad_senders(tmp_path, sender, match):
    with pytest.raises(ConfigError, match=match):
        load_text(tmp_path, f"senders:\n  f: {sender}\n")


def test_sender_drivers_credentials_and_timeouts(tmp_path):
    cfg = load_text(tmp_path, """\
        senders:
          a: {driver: http, uri: 'HTTPS://fusion.example:443/base/', credential: {api_key: k2}}
          b: {driver: fusion, uri: 'http://f', credential: bare-key, timeout_sec: 5,
              batch_size: '50'}
          c: {driver: fusion, uri: 'http://f', credential: {key: k3, api_key: k4, user: u}}
          d: {driver: fusion, uri: 'http://f', disabled: true}
        """)
    a, b, c, d = (cfg.senders[x] for x in "abcd")
    assert (a.driver, a.uri, a.api_key) == ("http", "HTTPS://fusion.example:443/base", "k2")
    assert (b.api_key, b.timeout, b.batch_size) == ("bare-key", 5.0, 50)
    assert c.api_key == "k3"  # key wins over api_key
    assert d.api_key is None
    assert cfg.ignored == [f"{tmp_path / 'conf' / 'c.yaml'}: senders.c.credential.user"]
    assert cfg.warnings == []  # a disabled sender without a key is fine


def test_enabled_sender_without_key_warns(tmp_path):
    cfg = load_text(tmp_path, "senders: {f: {driver: fusion, uri: 'http://f'}}\n")
    [warning] = cfg.warnings
    assert "senders.f.credential: no key" in warning


# --------------------------------------------------------------------------- pipes


@pytest.mark.parametrize("pipe, match", [
    ("{sender: f}", r"c\.yaml: pipes\.p\.source: required but missing"),
    ("{source: s}", r"c\.yaml: pipes\.p\.sender: required but missing"),
    ("{source: t, sender: f}",
     r"c\.yaml: pipes\.p\.source: 't' is not a configured source \(known: s\)"),
    ("{source: s, sender: g}",
     r"c\.yaml: pipes\.p\.sender: 'g' is not a configured sender \(known: f\)"),
])
def test_bad_pipes(tmp_path, tree, pipe, match):
    text = one_pipe(tree).split("pipes:")[0] + f"pipes:\n  p: {pipe}\n"
    with pytest.raises(ConfigError, match=match):
        load_text(tmp_path, text)


def test_unknown_reference_in_other_file_names_the_pipes_file(tmp_path, tree):
    folder = tmp_path / "conf"
    write(folder, "a.yaml", one_pipe(tree))
    write(folder, "b.yaml", "pipes: {q: {source: s, sender: nope}}\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: pipes\.q\.sender: 'nope' is not"):
        load_agent_config(folder)


def test_two_enabled_pipes_with_one_pair_are_an_error(tmp_path, tree):
    folder = tmp_path / "conf"
    write(folder, "a.yaml", one_pipe(tree))
    write(folder, "b.yaml", "pipes: {q: {source: s, sender: f}}\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: pipes\.q: same source 's' and sender 'f' "
                                          r"as pipes\.p \(defined in .*a\.yaml\)"):
        load_agent_config(folder)
    write(folder, "b.yaml", "pipes: {q: {source: s, sender: f, disabled: true}}\n")
    cfg = load_agent_config(folder)
    assert list(enabled_pipes(cfg)) == ["p"]


def test_enabled_pipes_needs_pipe_source_and_sender_enabled(tmp_path, tree):
    cfg = load_text(tmp_path, f"""\
        sources:
          s: {{driver: fs, uri: '{tree}'}}
          paused: {{driver: fs, uri: '{tree}', disabled: true}}
        senders:
          f: {{driver: fusion, uri: 'http://f', credential: {{key: k}}}}
          g: {{driver: fusion, uri: 'http://g', credential: {{key: k}}}}
          dead: {{driver: fusion, uri: 'http://d', disabled: true}}
        pipes:
          ok: {{source: s, sender: f}}
          pipe-off: {{source: s, sender: g, disabled: true}}
          source-off: {{source: paused, sender: f}}
          sender-off: {{source: s, sender: dead}}
        """)
    assert list(cfg.pipes) == ["ok", "pipe-off", "source-off", "sender-off"]
    assert list(enabled_pipes(cfg)) == ["ok"]


def test_ids_that_are_not_url_safe_warn(tmp_path, tree):
    cfg = load_text(tmp_path, one_pipe(tree).replace("  p:", "  My Pipe:"))
    [warning] = cfg.warnings
    assert "pipes.My Pipe: id is not URL-safe" in warning


# --------------------------------------------------------------------------- agent id


def test_agent_id_key_wins(home):
    assert resolve_agent_id(AgentConfig(agent_id="lab-01")) == "lab-01"
    assert not (home / "agent.id").exists()


def test_agent_id_created_once_and_kept(home):
    first = resolve_agent_id(AgentConfig())
    host = re.sub(r"[^a-z0-9._-]+", "-", socket.gethostname().lower()).strip("-.")[:40]
    assert re.fullmatch(rf"{re.escape(host)}-[0-9a-f]{{6}}", first)
    assert (home / "agent.id").read_text().strip() == first
    assert resolve_agent_id(AgentConfig()) == first
    (home / "agent.id").unlink()
    assert resolve_agent_id(AgentConfig()) != first  # new suffix: never derived from the IP


def test_agent_id_written_by_0817_is_kept(home):
    home.mkdir()
    (home / "agent.id").write_text("7f0c5a3e-2b1d-4c55-9a0e-2d3f4b5c6d7e\n")
    assert resolve_agent_id(AgentConfig()) == "7f0c5a3e-2b1d-4c55-9a0e-2d3f4b5c6d7e"


def test_agent_id_file_with_colon_is_an_error(home):
    home.mkdir()
    (home / "agent.id").write_text("a:b\n")
    with pytest.raises(ConfigError, match=r"agent\.id: 'a:b' cannot be an agent id"):
        resolve_agent_id(AgentConfig())


def test_empty_agent_id_file_is_replaced(home):
    home.mkdir()
    (home / "agent.id").write_text("\n")
    new = resolve_agent_id(AgentConfig())
    assert new and (home / "agent.id").read_text().strip() == new


def test_agent_id_that_cannot_be_stored_is_an_error(home, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("fustor.agent.config.os.open", refuse)
    with pytest.raises(ConfigError, match=r"agent\.id: cannot store the agent id: .*"
                                          r"Permission denied; .*set agent_id"):
        resolve_agent_id(AgentConfig())


def test_agent_id_that_cannot_be_read_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("FUSTOR_HOME", str(tmp_path / "file"))  # a file, not a directory
    with pytest.raises(ConfigError, match=r"agent\.id: cannot read the agent id"):
        resolve_agent_id(AgentConfig())


# --------------------------------------------------------------------------- quick config


def test_quick_config_is_one_pipe(tree):
    cfg = quick_config(tree, "http://fusion:8102/", "secret")
    assert list(cfg.sources) == ["watch"] and list(cfg.senders) == ["fusion"]
    assert list(enabled_pipes(cfg)) == ["default"]
    assert cfg.sources["watch"].uri == str(tree)
    snd = cfg.senders["fusion"]
    assert (snd.driver, snd.uri, snd.api_key) == ("fusion", "http://fusion:8102", "secret")
    assert cfg.pipes["default"] == PipeConfig("watch", "fusion")
    assert cfg.warnings == [] and cfg.files == ["<command line>"]


def test_quick_config_routes_overrides(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    cfg = quick_config(Path("tree"), "http://f", "k", audit_interval_sec="30", file_pattern="*.c",
                       batch_size=10, timeout_sec=3, max_queue_size=2, agent_id="me",
                       logging="debug", fs_scan_workers=3, status_interval_sec=1,
                       sentinel_interval_sec=None, disabled=False)
    assert cfg.sources["watch"].uri == str(tree)  # relative paths made absolute
    assert (cfg.pipes["default"].audit_interval_sec, cfg.pipes["default"].sentinel_interval_sec
            ) == (30.0, 120.0)
    src, snd = cfg.sources["watch"], cfg.senders["fusion"]
    assert (src.file_pattern, src.max_queue_size, src.max_scan_workers) == ("*.c", 2, 3)
    assert (snd.batch_size, snd.timeout) == (10, 3.0)
    assert (cfg.agent_id, cfg.logging, cfg.status_interval_sec) == ("me", "DEBUG", 1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"colour": "red"}, r"<command line>: colour: unknown setting"),
    ({"audit_interval_sec": "soon"}, r"<command line>: pipes\.default\.audit_interval_sec"),
    ({"fusion_url": "fusion:8102"}, r"senders\.fusion\.uri: 'fusion:8102' is not an http"),
])
def test_quick_config_errors(tree, kwargs, match):
    url = kwargs.pop("fusion_url", "http://f")
    with pytest.raises(ConfigError, match=match):
        quick_config(tree, url, "k", **kwargs)


def test_quick_config_without_key_warns(tree):
    cfg = quick_config(tree, "http://f", None)
    assert cfg.senders["fusion"].api_key is None
    assert any("no key" in w for w in cfg.warnings)


# --------------------------------------------------------------------------- diff for reload


DIFF_OLD = """\
    sources:
      s: {{driver: fs, uri: '{tree}'}}
      t: {{driver: fs, uri: '{tree}'}}
    senders:
      f: {{driver: fusion, uri: 'http://f', credential: {{key: k}}}}
      g: {{driver: fusion, uri: 'http://g', credential: {{key: k}}}}
    pipes:
      keep: {{source: s, sender: f}}
      via-t: {{source: t, sender: f}}
      via-g: {{source: s, sender: g}}
      gone: {{source: t, sender: g}}
    """
DIFF_NEW = """\
    logging: DEBUG
    sources:
      s: {{driver: fs, uri: '{tree}'}}
      t: {{driver: fs, uri: '{tree}', driver_params: {{file_pattern: '*.x'}}}}
    senders:
      f: {{driver: fusion, uri: 'http://f', credential: {{key: k}}}}
      g: {{driver: fusion, uri: 'http://g', credential: {{key: k2}}}}
    pipes:
      keep: {{source: s, sender: f}}
      via-t: {{source: t, sender: f}}
      via-g: {{source: s, sender: g}}
      gone: {{source: t, sender: g, disabled: true}}
      other: {{source: t, sender: g}}
    """


def test_config_diff(tmp_path, tree):
    old = load_text(tmp_path, DIFF_OLD.format(tree=tree), "old.yaml")
    assert config_diff(old, old) == {"added": [], "removed": [], "changed": [],
                                     "logging_changed": False}
    new = load_text(tmp_path, DIFF_NEW.format(tree=tree), "new.yaml")
    # via-t: its source changed; via-g: its sender's key changed; keep: untouched
    assert config_diff(old, new) == {"added": ["other"], "removed": ["gone"],
                                     "changed": ["via-g", "via-t"], "logging_changed": True}
    assert config_diff(new, old) == {"added": ["gone"], "removed": ["other"],
                                     "changed": ["via-g", "via-t"], "logging_changed": True}


def test_config_diff_pipe_settings_and_agent_id(tmp_path, tree):
    old = load_text(tmp_path, one_pipe(tree), "a.yaml")
    new = load_text(tmp_path, one_pipe(tree, audit_interval_sec=60), "b.yaml")
    assert config_diff(old, new)["changed"] == ["p"]
    same = load_text(tmp_path, one_pipe(tree) + "unknown: 1\n", "c.yaml")
    assert config_diff(old, same)["changed"] == []  # different files, same settings
    workers = load_text(tmp_path, one_pipe(tree) + "fs_scan_workers: 9\n", "e.yaml")
    assert config_diff(old, workers)["changed"] == ["p"]  # its source's scan workers changed
    renamed = load_text(tmp_path, one_pipe(tree) + "agent_id: other\n", "d.yaml")
    assert config_diff(old, renamed)["changed"] == ["p"]
    fmt = load_text(tmp_path, one_pipe(tree) + "logging: {level: INFO, format: '%(message)s'}\n")
    assert config_diff(old, fmt) == {"added": [], "removed": [], "changed": [],
                                     "logging_changed": True}


# --------------------------------------------------------------------------- example


def test_example_loads_and_is_commented(tmp_path):
    text = dump_example()
    assert text.count("#") > 10
    cfg = load_text(tmp_path, text)
    assert list(enabled_pipes(cfg)) == ["projects"]
    assert cfg.senders["main-fusion"].api_key == "change-me-agent-key"
    assert cfg.ignored == []
    # the only warning: /srv/projects does not exist on the test machine
    assert all("sources.projects.uri" in w for w in cfg.warnings)
    assert yaml.safe_load(text)["pipes"]["projects"]["source"] == "projects"


# --------------------------------------------------------------------------- console, TLS


def test_console_defaults_to_loopback_8100_and_is_configurable(tmp_path, tree):
    from fustor.agent.config import ConsoleConfig, console_options

    assert load_text(tmp_path, one_pipe(tree)).console == ConsoleConfig(True, "127.0.0.1", 8100)
    cfg = load_text(tmp_path, one_pipe(tree) + "console: {port: 9100, host: 0.0.0.0}\n")
    assert cfg.console == ConsoleConfig(True, "0.0.0.0", 9100) and cfg.ignored == []
    off = load_text(tmp_path, one_pipe(tree) + "console: {enabled: false}\n")
    assert off.console.enabled is False
    # the command line wins over the file; --no-console wins over enabled: true
    assert console_options(cfg, port=9200).console == ConsoleConfig(True, "0.0.0.0", 9200)
    assert console_options(cfg, host="::1").console.host == "::1"
    assert console_options(cfg, off=True).console.enabled is False


@pytest.mark.parametrize("text, match", [
    ("console: {port: 0}", r"c\.yaml: console\.port: must be at least 1"),
    ("console: {port: 70000}", r"c\.yaml: console\.port: must be at most 65535"),
    ("console: {port: web}", r"c\.yaml: console\.port: expected a whole number"),
    ("console: 8100", r"c\.yaml: console: expected a mapping"),
])
def test_bad_console_settings(tmp_path, tree, text, match):
    with pytest.raises(ConfigError, match=match):
        load_text(tmp_path, one_pipe(tree) + text + "\n")


def test_example_documents_the_console_and_ca_file():
    text = dump_example()
    assert "console:" in text and "port: 8100" in text and "--console-port" in text
    assert "--no-console" in text and "ca_file:" in text and "https://" in text


def test_sender_ca_file_in_yaml_and_on_the_command_line(tmp_path, tree):
    ca = tmp_path / "conf" / "ca.pem"
    ca.parent.mkdir()
    ca.write_text("not checked until used\n")
    cfg = load_text(tmp_path, "senders: {f: {driver: fusion, uri: 'https://f', ca_file: ca.pem}}\n")
    assert cfg.senders["f"].ca_file == str(ca)  # relative to the config file
    quick = quick_config(tree, "https://f", "k", ca_file=str(ca))
    assert quick.senders["fusion"].ca_file == str(ca)
    with pytest.raises(ConfigError, match=r"senders\.fusion\.ca_file: .* is not a file"):
        quick_config(tree, "https://f", "k", ca_file=str(tmp_path / "missing.pem"))


def test_a_mistyped_credential_is_not_echoed(tmp_path):
    for text in ("credential: 123456789", "credential: {key: 123456789}",
                 "credential: {api_key: [123456789]}"):
        with pytest.raises(ConfigError) as info:
            load_text(tmp_path, f"senders: {{f: {{driver: fusion, uri: 'http://f', {text}}}}}\n")
        assert "123456789" not in str(info.value) and "senders.f.credential" in str(info.value)
