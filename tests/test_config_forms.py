"""Configs and commands written from the seed documents work: one agent-config.yaml with
list-form sections, fusion_pipe_id, files and pipe ids as `start` arguments, `status PIPE`,
old config names reported as not read, and no "ok" for a config that runs nothing."""

from __future__ import annotations

import socket

import httpx
import pytest
from click.testing import CliRunner

from fustor.agent.config import enabled_pipes, load_agent_config
from fustor.cli import main
from fustor.config import load_fusion_config
from fustor.errors import ConfigError
from fustor.targets import load_targets, parse_targets
from tests.e2e import run_cli
from tests.procs import Proc, free_port, wait_http, wait_until

SEED_AGENT = """\
sources:
  - id: lab-data
    type: fs
    config:
      uri: {root}
      driver_params: {{file_pattern: "*.dat"}}
senders:
  - id: main-fusion
    type: fusion
    config:
      endpoint: http://127.0.0.1:18888
      credential: "agent-key-1"
pipes:
  - id: lab
    source_id: lab-data
    sender_id: main-fusion
    enabled: true
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("FUSTOR_HOME", str(h))
    return h


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_the_seed_agent_config_file_with_list_sections_runs(home, tmp_path):
    (home / "agent-config.yaml").write_text(SEED_AGENT.format(root=tmp_path))
    cfg = load_agent_config()
    assert list(enabled_pipes(cfg)) == ["lab"]
    src, snd = cfg.sources["lab-data"], cfg.senders["main-fusion"]
    assert (src.driver, src.uri, src.file_pattern) == ("fs", str(tmp_path), "*.dat")
    assert (snd.driver, snd.uri, snd.api_key) == ("fusion", "http://127.0.0.1:18888", "agent-key-1")
    assert cfg.ignored == []  # every seed key is understood, none silently dropped
    out = cli("agent", "validate")
    assert out.exit_code == 0 and "ok: 1 enabled pipe(s)" in out.output
    assert "agent-key-1" not in out.output


def test_seed_names_work_in_the_mapping_form_too(home, tmp_path):
    (home / "agent-config.yaml").write_text(f"""
sources: {{s: {{type: fs, uri: {tmp_path}}}}}
senders: {{f: {{type: fusion, endpoint: "http://h:8102", credential: {{key: k}}}}}}
pipes: {{p: {{source_id: s, sender_id: f}}, q: {{source_id: s, sender_id: f, enabled: false}}}}
""")
    cfg = load_agent_config()
    assert list(enabled_pipes(cfg)) == ["p"] and cfg.pipes["q"].disabled


@pytest.mark.parametrize("text, problem", [
    ("sources: [{type: fs, config: {uri: /x}}]\n", "sources[0]: expected a mapping with an id"),
    ("sources: [{id: a, type: fs, config: {uri: /x}}, {id: a, type: fs, config: {uri: /y}}]\n",
     "sources[1]: the id 'a' is used twice"),
    ("sources: [{id: a, type: fs, uri: /x, config: {uri: /y}}]\n",
     "sources[0]: uri is given both beside config: and inside it"),
    ("pipes: [{id: p, source_id: nope, sender_id: nope}]\n", "pipes.p.source: 'nope'"),
])
def test_list_form_mistakes_name_the_entry(home, text, problem):
    (home / "agent-config.yaml").write_text(text)
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        load_agent_config()


def test_a_config_that_runs_nothing_is_never_ok(home, tmp_path):
    out = cli("agent", "validate")  # nothing at all
    assert out.exit_code == 1 and "nothing to run: no config files" in out.output
    assert "ok:" not in out.output
    (home / "agent-config.yaml").write_text(SEED_AGENT.format(root=tmp_path)
                                            .replace("enabled: true", "enabled: false"))
    out = cli("agent", "validate")
    assert out.exit_code == 1 and "every pipe is disabled" in out.output
    out = cli("agent", "start")
    assert out.exit_code == 1 and "nothing to run" in out.output


def test_old_config_names_are_reported_as_not_read(home, tmp_path):
    (home / "pushers-config.yaml").write_text("pushers: {}\n")
    (home / "agent-pipes-config").mkdir()
    (home / "receivers-config.yaml").write_text("receivers: {}\n")
    (home / "views-config").mkdir()
    out = cli("agent", "validate")
    assert out.exit_code == 1
    assert f"{home / 'pushers-config.yaml'} is not read" in out.output
    assert "write senders: in agent-config.yaml" in out.output
    assert f"{home / 'agent-pipes-config'} is not read" in out.output
    assert "receivers-config" not in out.output  # a fusion file: fusion says so
    out = cli("fusion", "validate")
    assert out.exit_code == 1
    assert f"{home / 'receivers-config.yaml'} is not read" in out.output
    assert f"{home / 'views-config'} is not read" in out.output and "write views:" in out.output
    (home / "agent-config.yaml").write_text(SEED_AGENT.format(root=tmp_path))
    out = cli("agent", "validate")  # a working config still hears about the old files
    assert out.exit_code == 0 and "pushers-config.yaml is not read" in out.output


FUSION_A = """
admin_keys: [adm]
receivers:
  r: {port: 18888, api_keys: [{key: ka, pipe_id: a}, {key: kb, fusion_pipe_id: b}]}
views: {a: {api_keys: [qa]}, b: {api_keys: [qb]}}
pipes:
  a: {receiver: r, views: [a]}
"""
FUSION_B = "pipes:\n  b: {receiver: r, views: [b]}\n"


def test_fusion_pipe_id_is_a_synonym_of_pipe_id(tmp_path):
    (tmp_path / "a.yaml").write_text(FUSION_A)
    (tmp_path / "b.yaml").write_text(FUSION_B)
    cfg = load_fusion_config(tmp_path)
    assert [(k.key, k.pipe_id) for k in cfg.receivers["r"].api_keys] == [("ka", "a"), ("kb", "b")]
    assert cfg.ignored == []


def test_start_targets_pick_files_and_pipe_ids(home, tmp_path):
    cdir = home / "fusion-config"
    cdir.mkdir()
    (cdir / "a.yaml").write_text(FUSION_A)
    (cdir / "my-custom-pipes.yaml").write_text(FUSION_B)

    def pipes(*items):
        return sorted(load_targets(parse_targets(items, cdir), load_fusion_config, cdir).pipes)

    assert pipes() == ["a", "b"]
    assert pipes("my-custom-pipes.yaml") == ["b"]  # found in the config dir, read with a.yaml
    assert pipes(str(cdir / "a.yaml")) == ["a"]
    assert pipes("a", "b") == ["a", "b"]
    with pytest.raises(ConfigError, match="nope: not a configured pipe"):
        pipes("nope")
    with pytest.raises(ConfigError, match="missing.yaml: no such config file"):
        pipes("missing.yaml")
    alone = tmp_path / "alone.yaml"  # outside the config dir: read on its own
    alone.write_text(FUSION_A.replace(", {key: kb, fusion_pipe_id: b}", ""))
    assert pipes(str(alone)) == ["a"]  # my-custom-pipes.yaml was not read
    out = cli("fusion", "validate", "my-custom-pipes.yaml")
    assert out.exit_code == 0 and "ok: 1 enabled pipe(s)" in out.output
    out = cli("fusion", "status", "b")
    assert out.exit_code == 0 and out.output.splitlines() == [
        "STOPPED", "  b: receiver r, views b, ENABLED (Config)"]
    assert cli("fusion", "status", "zz").exit_code == 1


def test_agent_start_targets_and_status_of_one_pipe(home, tmp_path):
    cdir = home / "agent-config"
    cdir.mkdir()
    (home / "agent-config.yaml").write_text(SEED_AGENT.format(root=tmp_path))
    (cdir / "more.yaml").write_text(f"""
sources: [{{id: other, type: fs, config: {{uri: {tmp_path}/o}}}}]
pipes: [{{id: second, source_id: other, sender_id: main-fusion}}]
""")
    assert cli("agent", "validate").output.count("enabled pipe(s)") == 1
    assert "ok: 2 enabled pipe(s)" in cli("agent", "validate").output
    assert "ok: 1 enabled pipe(s)" in cli("agent", "validate", "more.yaml").output
    assert "ok: 1 enabled pipe(s)" in cli("agent", "validate", "lab").output
    out = cli("agent", "status", "second")
    assert out.exit_code == 0
    assert out.output.strip() == "second: STOPPED; source other, sender main-fusion, ENABLED (config)"


def _busy_line(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


def test_zero_config_receiver_port_env_port_and_a_busy_port(tmp_path):
    home = tmp_path / "home"
    port, rport = free_port(), free_port()
    p = Proc(["fusion", "serve", "--data", str(tmp_path / "d"), "--host", "127.0.0.1",
              "--receiver-port", str(rport)], home, tmp_path / "f.log",
             env={"FUSTOR_FUSION_PORT": str(port)})
    try:
        wait_http(f"http://127.0.0.1:{port}/", p)
        wait_until(lambda: "ingest key:" in p.output(), what="the keys")
        key = next(ln.split(":", 1)[1].strip() for ln in p.output().splitlines()
                   if "ingest key:" in ln)
        r = httpx.get(f"http://127.0.0.1:{rport}/api/v1/pipe/session/",
                      headers={"X-API-Key": key}, timeout=5)
        assert r.status_code == 200 and r.json()["view_id"] == "default"
        assert f"--fusion http://HOST:{rport}" in p.output()
    finally:
        assert p.stop() == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        out = run_cli(["fusion", "serve", "--data", str(tmp_path / "d2"), "--host", "127.0.0.1",
                       "--port", str(free_port()), "--receiver-port", str(taken)], home)
    assert out.returncode == 1 and "Traceback" not in out.stderr + out.stdout
    lines = _busy_line(out.stderr)
    assert len(lines) == 1 and f"cannot listen on 0.0.0.0:{taken}" in lines[0]
    out = run_cli(["fusion", "serve", "--config", str(tmp_path), "--receiver-port", "9"], home)
    assert out.returncode == 1 and "--receiver-port sets the port of the zero-config" in out.stderr


def test_fusion_start_with_a_config_file_argument(tmp_path):
    """The seed's `fustor-fusion start my-custom-pipes.yaml`: only that file's pipes run."""
    home = tmp_path / "home"
    cdir = home / "fusion-config"
    cdir.mkdir(parents=True)
    port, rport = free_port(), free_port()
    (cdir / "a.yaml").write_text(FUSION_A.replace("18888", str(rport)).replace(
        "admin_keys", f"host: 127.0.0.1\nport: {port}\nadmin_keys"))
    (cdir / "my-custom-pipes.yaml").write_text(FUSION_B)
    p = Proc(["fusion", "start", "my-custom-pipes.yaml", "--data", str(tmp_path / "d")], home,
             tmp_path / "f.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/", p)
        url = f"http://127.0.0.1:{rport}/api/v1/pipe/session/"
        ok = httpx.post(url, json={"task_id": "x:b"}, headers={"X-API-Key": "kb"}, timeout=5)
        assert ok.status_code == 200 and ok.json()["role"] == "leader"
        other = httpx.post(url, json={"task_id": "x:a"}, headers={"X-API-Key": "ka"}, timeout=5)
        assert other.status_code == 400 and "not found or not enabled" in other.json()["detail"]
    finally:
        assert p.stop() == 0
