"""docs/config.md names every key the config loaders read: a key the loader accepts but the
reference lacks fails here. The keys are taken from the loaders themselves, by recording
every key they ask for while reading a config that sets every optional block."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fustor import config as fusion_config
from fustor.agent.config import load_agent_config
from fustor.config import Section, load_fusion_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"
SECTIONS = ("receivers", "views", "pipes", "sources", "senders")


def _normal(name: str) -> str:
    name = re.sub(r"\[\d+\]", "[]", name)
    return re.sub(rf"^({'|'.join(SECTIONS)})\.[^.\[]+", r"\1.<id>", name)


@pytest.fixture
def asked(monkeypatch):
    """Every dotted key any Section is asked for (present or not)."""
    seen: set[str] = set()
    for method in ("get", "items", "child"):
        real = getattr(Section, method)

        def spy(self, key, *a, _real=real, **kw):
            seen.add(_normal(self.name(key)))
            return _real(self, key, *a, **kw)

        monkeypatch.setattr(Section, method, spy)
    real_syn = Section.synonym

    def syn(self, key, *others):
        seen.update(_normal(self.name(o)) for o in (key, *others))
        return real_syn(self, key, *others)

    monkeypatch.setattr(Section, "synonym", syn)
    return seen


def fusion_keys(tmp_path, seen) -> set[str]:
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("x")
    (tmp_path / "f.yaml").write_text(f"""
host: 127.0.0.1
port: 8101
data_dir: {tmp_path}
session_cleanup_interval: 5
max_body_bytes: 1000
logging: {{level: INFO, format: "%(message)s", dir: {tmp_path}}}
tls: {{cert_file: {tmp_path}/c.pem, key_file: {tmp_path}/k.pem}}
metrics: {{public: false}}
admin_keys: [{{key: a, name: ops}}]
receivers: {{r: {{api_keys: [{{key: k, pipe_id: p}}]}}}}
views: {{v: {{api_keys: [q], driver_params: {{consistency: {{}}, limits: {{}}}}}}}}
pipes: {{p: {{receiver: r, views: [v]}}}}
""")
    seen.clear()
    load_fusion_config(tmp_path / "f.yaml")
    return {k for k in seen if k}


def agent_keys(tmp_path, seen) -> set[str]:
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "a.yaml").write_text(f"""
fs_scan_workers: 4
agent_id: a1
status_interval_sec: 10
logging: {{level: INFO, format: "%(message)s", dir: {tmp_path}}}
console: {{port: 8100}}
sources: {{s: {{driver: fs, uri: {tmp_path}, driver_params: {{}}}}}}
senders: {{f: {{driver: fusion, uri: "http://h:1", credential: {{key: k}}, driver_params: {{}},
           ca_file: {tmp_path}/ca.pem}}}}
pipes: {{p: {{source: s, sender: f}}}}
""")
    seen.clear()
    load_agent_config(tmp_path / "a.yaml")
    return {k for k in seen if k}


def documented() -> set[str]:
    return set(re.findall(r"`([a-z_<>\[\].]+)`", DOC.read_text()))


def test_every_fusion_key_is_in_the_reference(tmp_path, asked):
    keys = fusion_keys(tmp_path, asked)
    assert {"port", "receivers.<id>.api_keys[].fusion_pipe_id", "metrics.public"} <= keys
    assert sorted(keys - documented()) == []


def test_every_agent_key_is_in_the_reference(tmp_path, asked):
    keys = agent_keys(tmp_path, asked)
    assert {"sources.<id>.driver_params.file_pattern", "senders.<id>.endpoint",
            "pipes.<id>.source_id", "console.port"} <= keys
    assert sorted("agent: " + k for k in keys - documented()) == []


def test_the_list_form_and_the_example_configs_are_documented():
    text = DOC.read_text()
    for phrase in ("`id`", "`config`", "agent-config.yaml", "fusion-config/"):
        assert phrase in text
    assert fusion_config.EXAMPLE_CONFIG  # the examples load (tests/test_config.py checks them)
