"""The agent talks to an https fusion: the real fusion app behind uvicorn with a certificate
of a test CA (trustme) on 127.0.0.1. With the CA as ``ca_file`` everything works; without
it (the system trust store does not know the test CA) every call fails with a message
that says which setting fixes it, and the pipe keeps retrying.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import textwrap

import pytest
import trustme
import uvicorn

from fustor.agent.config import load_agent_config, quick_config
from fustor.agent.daemon import build_pipe
from fustor.agent.sender_http import FusionClient, FusionUnavailableError
from fustor.config import load_fusion_config
from fustor.errors import ConfigError
from fustor.fusion.app import create_app
from fustor.fusion.core import Fusion
from tests.agent.conftest import FUSION_YAML, INGEST_KEY
from tests.agent.test_pipe import make_tree, until, view_stats
from tests.procs import Proc, free_port


class _Server(uvicorn.Server):
    def capture_signals(self):  # pytest owns the signals
        return contextlib.nullcontext()


@pytest.fixture
def certs(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, server_pem = tmp_path / "fusion-ca.pem", tmp_path / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    return ca_file, server_pem


@pytest.fixture
async def https_fusion(tmp_path, certs):
    """(Fusion, "https://127.0.0.1:PORT"): the real app over TLS, in this event loop."""
    cfg = tmp_path / "fusion.yaml"
    cfg.write_text(FUSION_YAML)
    fusion = Fusion(load_fusion_config(cfg), tmp_path / "data")
    fusion.open()
    port = free_port()
    _, server_pem = certs
    server = _Server(uvicorn.Config(create_app(fusion), host="127.0.0.1", port=port,
                                    ssl_certfile=str(server_pem), ssl_keyfile=str(server_pem),
                                    lifespan="off", log_level="warning", log_config=None))
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started or task.done(), what="the https server")
        assert server.started, task.exception()
        yield fusion, f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        await fusion.stop()


async def test_client_with_the_ca_file_opens_a_session(https_fusion, certs):
    fusion, url = https_fusion
    client = FusionClient(url, INGEST_KEY, ca_file=str(certs[0]))
    try:
        reply = await client.create_session("agent-1:p1", "/tree")
        assert reply["session_id"] and reply["role"] == "leader"
        assert client.reachable is True
    finally:
        await client.aclose()
    assert [s.task_id for s in fusion.sessions.sessions.values()] == ["agent-1:p1"]


async def test_client_without_the_ca_file_fails_clearly_and_sends_nothing(https_fusion):
    fusion, url = https_fusion
    client = FusionClient(url, INGEST_KEY)  # the system trust store: the test CA is unknown
    try:
        with pytest.raises(FusionUnavailableError) as info:
            await client.create_session("agent-1:p1", "/tree")
    finally:
        await client.aclose()
    msg = str(info.value)
    assert f"TLS certificate of {url} not trusted (" in msg
    assert "certificate" in msg.split("not trusted (", 1)[1]  # the reason from the handshake
    assert "set the sender's ca_file" in msg and "to the CA that signed fusion's certificate" in msg
    assert INGEST_KEY not in msg
    assert client.reachable is False
    assert fusion.sessions.sessions == {}


async def test_pipe_over_https_snapshots_with_ca_file_and_backs_off_without(
        tmp_path, https_fusion, certs):
    fusion, url = https_fusion
    root = tmp_path / "root"
    root.mkdir()
    make_tree(root, dirs=2, files_per_dir=20)

    # no ca_file: the pipe reports the certificate problem and keeps trying
    untrusting = build_pipe(quick_config(root, url, INGEST_KEY, error_retry_interval=0.05,
                                         max_backoff_seconds=0.2), "default", "agent-x")
    await untrusting.start()
    try:
        await until(lambda: untrusting.errors >= 3, what="three failed attempts")
        assert untrusting.state in ("backing off", "connecting")
        assert "not trusted" in untrusting.last_error and "ca_file" in untrusting.last_error
        st = untrusting.agent_status()
        assert st["fusion_reachable"] is False and st["last_error"] == untrusting.last_error
    finally:
        await asyncio.wait_for(untrusting.stop(), 10)
    assert fusion.sessions.sessions == {}

    # the sender's ca_file, as the YAML says it
    cfg_file = tmp_path / "agent.yaml"
    cfg_file.write_text(textwrap.dedent(f"""\
        sources: {{t: {{driver: fs, uri: '{root}'}}}}
        senders: {{f: {{driver: fusion, uri: '{url}', credential: {{key: {INGEST_KEY}}},
                       ca_file: {certs[0].name}}}}}
        pipes: {{p: {{source: t, sender: f}}}}
        """))
    cfg = load_agent_config(cfg_file)
    assert cfg.senders["f"].ca_file == str(certs[0])  # relative to the file that says it
    pipe = build_pipe(cfg, "p", "agent-1")
    await pipe.start()
    try:
        await until(lambda: fusion.sessions.snapshot_complete("v1") and pipe.snapshot_done,
                    what="the snapshot over https")
        assert view_stats(fusion)["file_count"] == 40
        assert pipe.last_error is None and pipe.client.reachable is True
    finally:
        await asyncio.wait_for(pipe.stop(), 10)


def test_ca_file_that_does_not_exist_is_a_config_error(tmp_path):
    cfg_file = tmp_path / "agent.yaml"
    cfg_file.write_text("senders: {f: {driver: fusion, uri: 'https://f', ca_file: nope.pem}}\n")
    with pytest.raises(ConfigError, match=r"agent\.yaml: senders\.f\.ca_file: 'nope\.pem' is "
                                          r"not a file; give the PEM file of the CA"):
        load_agent_config(cfg_file)


async def test_agent_process_with_ca_file_flag(tmp_path, https_fusion, certs):
    """`agent start --watch --fusion https://... --ca-file`: the view fills; without the
    flag the status file and the log say the certificate is not trusted."""
    fusion, url = https_fusion
    root = tmp_path / "root"
    root.mkdir()
    make_tree(root, dirs=1, files_per_dir=10)
    base = ["agent", "start", "--watch", str(root), "--fusion", url, "--key", INGEST_KEY,
            "--no-console"]
    good = Proc([*base, "--ca-file", str(certs[0])], tmp_path / "home-good", tmp_path / "good.log")
    bad = Proc(base, tmp_path / "home-bad", tmp_path / "bad.log")
    try:
        await until(lambda: fusion.sessions.snapshot_complete("v1") or not good.alive(),
                    timeout=30, what="the snapshot from the agent process")
        assert good.alive(), good.output()
        assert view_stats(fusion)["file_count"] == 10

        status = tmp_path / "home-bad" / "agent-status.json"

        def bad_reports_tls():
            assert bad.alive(), bad.output()
            if not status.exists():
                return None
            err = json.loads(status.read_text())["pipes"].get("default", {}).get("last_error")
            return err if err and "not trusted" in err else None

        err = await until(bad_reports_tls, timeout=30, what="the TLS error in the status")
        assert f"TLS certificate of {url} not trusted" in err and "ca_file" in err
    finally:
        # in a thread: this event loop serves fusion, which the agent closes its session with
        codes = [await asyncio.to_thread(p.stop) for p in (good, bad)]
    assert codes == [0, 0]
    assert "not trusted" in bad.output() and INGEST_KEY not in bad.output()
    assert fusion.sessions.sessions == {}  # the stopped agent closed its session
