"""fustor.config: finding, merging and checking the fusion YAML."""

from __future__ import annotations

import logging
import stat
import textwrap
from pathlib import Path

import pytest

from fustor.config import (
    AdminKey,
    ApiKey,
    FusionConfig,
    PipeConfig,
    ReceiverConfig,
    ViewConfig,
    default_config,
    dump_example,
    enabled_pipes,
    fustor_home,
    load_fusion_config,
)
from fustor.errors import AuthError, ConfigError
from fustor.fusion.auth import KeyTable, Principal

# The example of fusion-protocol.md §8.3, verbatim.
SPEC_EXAMPLE = """\
port: 8101
receivers:
  http-main: {driver: http, port: 18888, api_keys: [{key: agent-key-1, pipe_id: research}]}
views:
  research: {driver: fs, api_keys: [query-key], driver_params: {hot_file_threshold: 60.0}}
pipes:
  research: {receiver: http-main, views: [research], session_timeout_seconds: 30}
"""

RECEIVERS = """\
receivers:
  http-main:
    port: 18888
    api_keys: [{key: agent-key-1, pipe_id: research}]
"""
VIEWS = """\
views:
  research: {api_keys: [query-key]}
"""
PIPES = """\
pipes:
  research: {receiver: http-main, views: [research]}
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- home and files


def test_fustor_home_from_env_with_tilde(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FUSTOR_HOME", "~/elsewhere")
    assert fustor_home() == tmp_path / "elsewhere"
    monkeypatch.delenv("FUSTOR_HOME")
    assert fustor_home() == tmp_path / ".fustor"


def test_default_target_is_fusion_config_under_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSTOR_HOME", str(tmp_path))
    assert load_fusion_config().files == []  # no directory yet: empty config, no error
    write(tmp_path / "fusion-config", "a.yaml", SPEC_EXAMPLE)
    cfg = load_fusion_config()
    assert cfg.files == [str(tmp_path / "fusion-config" / "a.yaml")]
    assert list(cfg.pipes) == ["research"]


def test_missing_explicit_target_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_fusion_config(tmp_path / "nope.yaml")


def test_merge_across_files_with_cross_file_references(tmp_path):
    folder = tmp_path / "conf"
    write(folder, "30-pipes.yml", PIPES)
    write(folder, "10-receivers.yaml", RECEIVERS)
    write(folder, "20-views.yaml", VIEWS)
    write(folder, "notes.txt", "not: [yaml")  # neither .yaml nor .yml: not read
    cfg = load_fusion_config(folder)
    assert [Path(f).name for f in cfg.files] == ["10-receivers.yaml", "20-views.yaml",
                                                 "30-pipes.yml"]
    assert cfg.receivers["http-main"].api_keys == [ApiKey("agent-key-1", "research")]
    assert cfg.pipes["research"].receiver == "http-main"
    assert cfg.views["research"].api_keys == ["query-key"]
    assert cfg.warnings == [] and cfg.ignored == []


def test_later_duplicate_id_replaces_earlier_with_warning(tmp_path, caplog):
    folder = tmp_path / "conf"
    write(folder, "a.yaml", RECEIVERS + VIEWS + PIPES + "port: 9000\nhost: 127.0.0.1\n")
    write(folder, "b.yaml", """\
        port: 9001
        views:
          research: {driver: forest-fs, api_keys: [other-key]}
        """)
    with caplog.at_level(logging.WARNING, logger="fustor.config"):
        cfg = load_fusion_config(folder)
    assert cfg.views["research"].driver == "forest-fs"
    assert cfg.views["research"].api_keys == ["other-key"]
    assert cfg.port == 9001 and cfg.host == "127.0.0.1"  # globals: key by key, later wins
    [warning] = cfg.warnings
    assert "b.yaml" in warning and "views.research" in warning and "a.yaml" in warning
    assert warning in caplog.text


def test_single_file_target_reads_only_that_file(tmp_path):
    write(tmp_path, "a.yaml", SPEC_EXAMPLE)
    write(tmp_path, "b.yaml", "port: 1\n")
    assert load_fusion_config(tmp_path / "a.yaml").port == 8101


# --------------------------------------------------------------------------- defaults


def test_defaults(tmp_path):
    write(tmp_path, "c.yaml", """\
        receivers: {r: {}}
        views: {v: }
        pipes: {p: {receiver: r, views: [v]}}
        """)
    cfg = load_fusion_config(tmp_path / "c.yaml")
    assert (cfg.logging, cfg.host, cfg.port) == ("INFO", "0.0.0.0", 8101)
    assert cfg.session_cleanup_interval == 5.0
    assert cfg.max_body_bytes == 64 * 1024 * 1024 and cfg.data_dir is None
    assert cfg.receivers["r"] == ReceiverConfig("http", "0.0.0.0", 8102, [], False)
    view = cfg.views["v"]
    assert (view.driver, view.driver_params, view.api_keys, view.disabled) == ("fs", {}, [], False)
    assert (view.hot_file_threshold, view.max_tree_items) == (30.0, 100000)
    assert (view.tombstone_ttl_seconds, view.max_nodes) == (3600.0, 0)
    assert cfg.pipes["p"] == PipeConfig("r", ["v"], True, 30, 600.0, 120.0)
    assert cfg.pipes["p"].primary_view == "v"
    assert isinstance(cfg.pipes["p"].audit_interval_sec, float)


def test_empty_files_and_directories_give_an_empty_config(tmp_path):
    assert load_fusion_config(tmp_path) == FusionConfig()
    empty = write(tmp_path, "empty.yaml", "")
    write(tmp_path, "comments.yml", "# nothing yet\n")
    cfg = load_fusion_config(tmp_path)
    assert cfg.files == [str(tmp_path / "comments.yml"), str(empty)]
    assert (cfg.receivers, cfg.views, cfg.pipes, cfg.ignored) == ({}, {}, {}, [])


def test_view_accessors_on_a_view_built_in_code():
    view = ViewConfig(driver_params={"consistency": {"tombstone_ttl_seconds": "5"},
                                     "limits": None, "max_tree_items": 7.0})
    assert view.tombstone_ttl_seconds == 5.0 and view.max_nodes == 0
    assert view.max_tree_items == 7 and isinstance(view.max_tree_items, int)


def test_typed_values_and_logging_map(tmp_path):
    write(tmp_path, "c.yaml", """\
        logging: {level: debug, format: "%(message)s", dir: /tmp/logs}
        session_cleanup_interval: 2
        max_body_bytes: 1024
        data_dir: /srv/fustor
        receivers: {r: {bind_host: 127.0.0.1, port: "18888", disabled: "yes"}}
        views:
          v:
            driver_params:
              hot_file_threshold: 60
              max_tree_items: 0
              consistency: {tombstone_ttl_seconds: 10}
              limits: {max_nodes: 500}
        pipes:
          p: {receiver: r, views: [v], allow_concurrent_push: false,
              session_timeout_seconds: 180.0, audit_interval_sec: 43200,
              sentinel_interval_sec: 0}
        """)
    cfg = load_fusion_config(tmp_path / "c.yaml")
    assert (cfg.logging, cfg.log_format, cfg.log_dir) == ("DEBUG", "%(message)s", "/tmp/logs")
    assert cfg.session_cleanup_interval == 2.0 and cfg.max_body_bytes == 1024
    assert cfg.data_dir == "/srv/fustor"
    assert cfg.receivers["r"].port == 18888 and cfg.receivers["r"].disabled is True
    view = cfg.views["v"]
    assert view.hot_file_threshold == 60.0 and isinstance(view.hot_file_threshold, float)
    assert (view.max_tree_items, view.tombstone_ttl_seconds, view.max_nodes) == (0, 10.0, 500)
    pipe = cfg.pipes["p"]
    assert pipe.allow_concurrent_push is False and pipe.session_timeout_seconds == 180
    assert pipe.audit_interval_sec == 43200.0 and pipe.sentinel_interval_sec == 0.0


# --------------------------------------------------------------------------- errors

ERROR_CASES = {
    "yaml syntax": ("receivers: {http-main: [\n", "line 2"),
    "top level not a mapping": ("- port: 1\n", "top level"),
    "port not a number": ("port: abc\n", "port"),
    "port out of range": ("receivers: {r: {port: 70000}}\n", "receivers.r.port"),
    "bad log level": ("logging: loud\n", "logging"),
    "bad log level in map": ("logging: {level: loud}\n", "logging.level"),
    "negative cleanup": ("session_cleanup_interval: -1\n", "session_cleanup_interval"),
    "zero body limit": ("max_body_bytes: 0\n", "max_body_bytes"),
    "api_keys not a list": ("receivers: {r: {api_keys: abc}}\n", "receivers.r.api_keys"),
    "key entry is a string": ("receivers: {r: {api_keys: [abc]}}\n", "receivers.r.api_keys[0]"),
    "key without pipe_id": ("receivers: {r: {api_keys: [{key: k}]}}\n",
                            "receivers.r.api_keys[0].pipe_id"),
    "numeric key unquoted": ("views: {v: {api_keys: [12345]}}\n", "views.v.api_keys[0]"),
    "unknown receiver driver": ("receivers: {r: {driver: grpc}}\n", "receivers.r.driver"),
    "unknown view driver": ("views: {v: {driver: sql}}\n", "views.v.driver"),
    "disabled not a bool": ("views: {v: {disabled: maybe}}\n", "views.v.disabled"),
    "driver_params not a map": ("views: {v: {driver_params: [1]}}\n", "views.v.driver_params"),
    "bad threshold": ("views: {v: {driver_params: {hot_file_threshold: soon}}}\n",
                      "views.v.driver_params.hot_file_threshold"),
    "bad ttl": ("views: {v: {driver_params: {consistency: {tombstone_ttl_seconds: x}}}}\n",
                "views.v.driver_params.consistency.tombstone_ttl_seconds"),
    "bad max_nodes": ("views: {v: {driver_params: {limits: {max_nodes: -5}}}}\n",
                      "views.v.driver_params.limits.max_nodes"),
    "view id with slash": ("views: {a/b: {}}\n", "views.a/b"),
    "section not a map": ("pipes: [a, b]\n", "pipes"),
    "pipe without receiver": ("pipes: {p: {views: []}}\n", "pipes.p.receiver"),
    "fractional timeout": (RECEIVERS + VIEWS + "pipes: {research: {receiver: http-main, "
                           "views: [research], session_timeout_seconds: 1.5}}\n",
                           "pipes.research.session_timeout_seconds"),
    "views not a list": ("pipes: {p: {receiver: r, views: research}}\n", "pipes.p.views"),
    "unknown view in pipe": (RECEIVERS + VIEWS + "pipes: {research: {receiver: http-main, "
                             "views: [research, nope]}}\n", "pipes.research.views[1]"),
    "key for unknown pipe": (RECEIVERS + "pipes: {}\n", "receivers.http-main.api_keys[0].pipe_id"),
}


@pytest.mark.parametrize("text,key", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_errors_name_file_and_key(tmp_path, text, key):
    path = write(tmp_path / "conf", "50-broken.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_fusion_config(tmp_path / "conf")
    message = info.value.message
    assert str(path) in message
    assert key in message
    assert info.value.code == "config_invalid"


def test_unknown_receiver_message_names_file_key_and_known_ids(tmp_path):
    folder = tmp_path / "conf"
    write(folder, "10-receivers.yaml", RECEIVERS)
    write(folder, "20-views.yaml", VIEWS)
    pipes = write(folder, "30-pipes.yaml", "pipes: {research: {receiver: http-x, "
                                           "views: [research]}}\n")
    with pytest.raises(ConfigError) as info:
        load_fusion_config(folder)
    assert info.value.message.startswith(
        f"{pipes}: pipes.research.receiver: 'http-x' is not a configured receiver "
        "(known: http-main)")


def test_a_broken_file_stops_loading_even_if_others_are_fine(tmp_path):
    folder = tmp_path / "conf"
    write(folder, "10-ok.yaml", SPEC_EXAMPLE)
    write(folder, "20-bad.yaml", "views: {x: {driver: fs\n")
    with pytest.raises(ConfigError, match="20-bad.yaml"):
        load_fusion_config(folder)


# --------------------------------------------------------------------------- compatibility


def test_unknown_keys_are_accepted_and_listed(tmp_path):
    path = write(tmp_path, "c.yaml", """\
        management_api_key: secret
        logging: {level: INFO, rotate: daily}
        receivers: {r: {api_keys: [{key: k, pipe_id: p, note: x}], tls: false}}
        views: {v: {root_path: /data, driver_params: {root_dir: /x, limits: {max_mb: 3}}}}
        pipes: {p: {receiver: r, views: [v], enabled: true, disabled: false}}
        """)
    cfg = load_fusion_config(path)
    assert sorted(cfg.ignored) == sorted(f"{path}: {key}" for key in [
        "management_api_key", "logging.rotate", "receivers.r.api_keys[0].note",
        "receivers.r.tls", "views.v.root_path", "views.v.driver_params.root_dir",
        "views.v.driver_params.limits.max_mb", "pipes.p.enabled", "pipes.p.disabled"])
    assert cfg.views["v"].driver_params["root_dir"] == "/x"  # kept as written


def test_config_written_for_the_original_loads(tmp_path):
    text = SPEC_EXAMPLE.replace(
        "driver_params: {hot_file_threshold: 60.0}",
        "driver_params: {hot_file_threshold: 60.0, max_tree_items: 1000, root_dir: /x}",
    ).replace("views:\n", "views:\n  archive: {driver: fs, disabled: true}\n")
    path = write(tmp_path, "default.yaml", text)
    cfg = load_fusion_config(path)
    assert cfg.receivers["http-main"].port == 18888
    view = cfg.views["research"]
    assert view.hot_file_threshold == 60.0 and view.max_tree_items == 1000
    assert cfg.views["archive"].disabled is True
    assert cfg.ignored == [f"{path}: views.research.driver_params.root_dir"]
    assert cfg.warnings == []
    assert list(enabled_pipes(cfg)) == ["research"]


def test_ids_that_are_not_url_safe_only_warn(tmp_path):
    path = write(tmp_path, "c.yaml", f"""\
        receivers: {{Main: {{}}}}
        views: {{v: {{}}, {"x" * 65}: {{}}}}
        pipes: {{"my pipe": {{receiver: Main, views: [v]}}}}
        """)
    cfg = load_fusion_config(path)
    assert len(cfg.warnings) == 3
    assert any("receivers.Main" in w for w in cfg.warnings)
    assert any("pipes.my pipe" in w for w in cfg.warnings)
    assert all(str(path) in w for w in cfg.warnings)


def test_shared_key_and_key_on_wrong_receiver_warn(tmp_path):
    cfg = load_fusion_config(write(tmp_path, "c.yaml", """\
        receivers:
          r1: {port: 1001, api_keys: [{key: s3cr3t, pipe_id: p}]}
          r2: {port: 1002, api_keys: [{key: k2, pipe_id: p}]}
        views: {v: {api_keys: [s3cr3t]}}
        pipes: {p: {receiver: r1, views: [v]}}
        """))
    assert len(cfg.warnings) == 2
    assert any("views.v.api_keys[0]" in w and "also an admin or agent key" in w
               for w in cfg.warnings)
    assert any("receivers.r2.api_keys[0].pipe_id" in w for w in cfg.warnings)
    assert not any("s3cr3t" in w for w in cfg.warnings)  # secrets stay out of logs


# --------------------------------------------------------------------------- enabled pipes


def pipes_config() -> FusionConfig:
    return FusionConfig(
        receivers={"on": ReceiverConfig(), "off": ReceiverConfig(port=8103, disabled=True)},
        views={"a": ViewConfig(), "b": ViewConfig(disabled=True), "c": ViewConfig()},
        pipes={
            "ok": PipeConfig("on", ["b", "a", "c"]),
            "recv-off": PipeConfig("off", ["a"]),
            "recv-missing": PipeConfig("gone", ["a"]),
            "views-off": PipeConfig("on", ["b"]),
            "views-missing": PipeConfig("on", ["gone"]),
            "no-views": PipeConfig("on", []),
        })


def test_enabled_pipes_rules():
    cfg = pipes_config()
    enabled = enabled_pipes(cfg)
    assert list(enabled) == ["ok"]
    assert enabled["ok"].views == ["a", "c"] and enabled["ok"].primary_view == "a"
    assert cfg.pipes["ok"].views == ["b", "a", "c"]  # the config itself is not changed


# --------------------------------------------------------------------------- keys


def grants(cfg, key):
    """(kind, pipe, views, admin) of a key, or None when it is refused (401)."""
    try:
        p = KeyTable(cfg).lookup(key)
    except AuthError:
        return None
    return p.kind, p.pipe, sorted(p.views), p.admin


def test_key_grants_merge_and_disabled_owners_do_not_count():
    cfg = FusionConfig(
        receivers={
            "r": ReceiverConfig(api_keys=[ApiKey("agent", "p"), ApiKey("shared", "p"),
                                          ApiKey("idle", "q"), ApiKey("agent", "q")]),
            "off": ReceiverConfig(disabled=True, api_keys=[ApiKey("dead", "p")]),
        },
        views={"v1": ViewConfig(api_keys=["query", "shared"]),
               "v2": ViewConfig(api_keys=["query", "two"]),
               "v3": ViewConfig(disabled=True, api_keys=["three"])},
        pipes={"p": PipeConfig("r", ["v3", "v2", "v1"]), "q": PipeConfig("r", ["v3"])},
        admin_keys=[AdminKey("boss", "ops"), AdminKey("boss2")],
    )
    assert grants(cfg, "query") == ("query", None, ["v1", "v2"], False)  # one key, two views
    assert grants(cfg, "two") == ("query", None, ["v2"], False)
    assert grants(cfg, "shared") == ("ingest", "p", ["v1"], False)  # both grants
    assert grants(cfg, "agent") == ("ingest", "p", [], False)  # a key serves its first pipe
    assert grants(cfg, "idle") == ("ingest", "q", [], False)
    assert grants(cfg, "boss") == ("admin", None, [], True)
    assert KeyTable(cfg).lookup("boss").key_id == "admin:ops"
    assert KeyTable(cfg).lookup("boss2").key_id == "admin:#1"
    for unknown in ("three", "dead", "nope", "", None, "schlüssel"):
        assert grants(cfg, unknown) is None
    cfg.views["v2"].api_keys.append("schlüssel")  # non-ASCII keys compare fine too
    assert grants(cfg, "schlüssel") == ("query", None, ["v2"], False)


def test_key_ids_never_contain_the_key(tmp_path):
    cfg = load_fusion_config(write(tmp_path, "c.yaml", SPEC_EXAMPLE + "admin_keys: [sekrit-admin]\n"))
    table = KeyTable(cfg)
    for key in ("agent-key-1", "query-key", "sekrit-admin"):
        p = table.lookup(key)
        assert isinstance(p, Principal) and key not in p.key_id
    assert table.lookup("agent-key-1").pipe == "research"
    assert table.lookup("query-key").views == {"research"}
    assert table.lookup("sekrit-admin").admin


def test_admin_keys_and_tls_config(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    folder = tmp_path / "conf"
    write(folder, "a.yaml", SPEC_EXAMPLE + "admin_keys: [{key: k1, name: ops}]\n")
    write(folder, "b.yaml", f"admin_keys: [k2]\ntls: {{cert_file: {cert}, key_file: {key}}}\n")
    cfg = load_fusion_config(folder)
    assert [(k.key, k.name) for k in cfg.admin_keys] == [("k1", "ops"), ("k2", None)]
    assert cfg.tls and cfg.tls_cert_file == str(cert) and cfg.tls_key_file == str(key)
    assert "k1" not in repr(cfg)  # keys stay out of reprs (and so out of tracebacks)
    write(folder, "c.yaml", f"tls: {{cert_file: {tmp_path / 'nope.pem'}, key_file: {key}}}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: tls.cert_file: no such file"):
        load_fusion_config(folder)
    write(folder, "c.yaml", "admin_keys: [{name: nokey}]\n")
    with pytest.raises(ConfigError, match=r"admin_keys\[0\].key: required"):
        load_fusion_config(folder)


def test_a_key_reused_across_kinds_is_warned_about_without_showing_it(tmp_path):
    cfg = load_fusion_config(write(tmp_path, "c.yaml", SPEC_EXAMPLE + "admin_keys: [query-key]\n"))
    assert any("also an admin or agent key" in w for w in cfg.warnings)
    assert not any("query-key" in w for w in cfg.warnings)


# --------------------------------------------------------------------------- zero config


def test_default_config_keys_persist_and_are_private(tmp_path):
    data = tmp_path / "data"
    first = default_config(data)
    keys_file = data / "keys.yaml"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert set(first.generated_keys) == {"ingest", "query", "admin"}
    assert len(first.generated_keys["ingest"]) >= 32
    assert len(set(first.generated_keys.values())) == 3
    assert first.keys_created
    second = default_config(data)
    assert second.generated_keys == first.generated_keys
    assert not second.keys_created  # only the run that made them prints them
    assert [p.name for p in data.iterdir()] == ["keys.yaml"]  # no temp files left
    assert first.data_dir == str(data)
    assert list(enabled_pipes(second)) == ["default"]
    assert second.receivers["default"].port == 8102
    assert second.views["default"].driver == "fs"
    assert second.pipes["default"] == PipeConfig("default", ["default"])
    ingest, query = first.generated_keys["ingest"], first.generated_keys["query"]
    assert grants(second, ingest) == ("ingest", "default", [], False)
    assert grants(second, query) == ("query", None, ["default"], False)
    assert grants(second, first.generated_keys["admin"]) == ("admin", None, [], True)


def test_default_config_tightens_mode_and_rejects_broken_keys_file(tmp_path):
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("ingest: i-key\nquery: q-key\n")
    keys_file.chmod(0o644)
    cfg = default_config(tmp_path)  # a keys file from before admin keys: one is added
    assert {k: v for k, v in cfg.generated_keys.items() if k != "admin"} == \
        {"ingest": "i-key", "query": "q-key"}
    assert cfg.keys_created and len(cfg.generated_keys["admin"]) >= 32
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    keys_file.chmod(0o644)
    assert not default_config(tmp_path).keys_created
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    keys_file.write_text("- not a map\n")
    with pytest.raises(ConfigError, match="keys.yaml"):
        default_config(tmp_path)


# --------------------------------------------------------------------------- example


def test_dump_example_loads_cleanly(tmp_path):
    text = dump_example()
    assert text.lstrip().startswith("#")
    cfg = load_fusion_config(write(tmp_path, "example.yaml", text))
    assert cfg.ignored == [] and cfg.warnings == []
    assert list(enabled_pipes(cfg)) == ["research"]
    assert cfg.max_body_bytes == 64 * 1024 * 1024


def test_log_level_as_plain_string_is_case_insensitive(tmp_path):
    folder = tmp_path / "conf"
    write(folder, "a.yaml", "logging: {level: error, format: x}\n")
    write(folder, "b.yaml", "logging: warn\n")  # replaces the whole logging block
    cfg = load_fusion_config(folder)
    assert (cfg.logging, cfg.log_format) == ("WARNING", None)
