"""Keys travel in headers, so fusion serves HTTPS: a real fusion with a certificate made for
the test (trustme), a real agent that trusts it through --ca-file, and clear refusals for
callers that do not trust it."""

from __future__ import annotations

import ssl

import httpx
import pytest
import trustme

from tests.procs import Proc, free_port, wait_until

KEY, QKEY, AKEY = "tls-ingest", "tls-query", "tls-admin"


@pytest.fixture
def certs(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "fusion.pem", "key": tmp_path / "fusion.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(paths["cert"]), append=i > 0)
    return paths


@pytest.fixture
def tls_fusion(tmp_path, certs):
    port, rport = free_port(), free_port()
    cfg = tmp_path / "fusion.yaml"
    cfg.write_text(f"""
host: 127.0.0.1
port: {port}
admin_keys: [{AKEY}]
tls: {{cert_file: {certs['cert']}, key_file: {certs['key']}}}
receivers:
  r: {{bind_host: 127.0.0.1, port: {rport}, api_keys: [{{key: {KEY}, pipe_id: v}}]}}
views:
  v: {{api_keys: [{QKEY}]}}
pipes:
  v: {{receiver: r, views: [v], session_timeout_seconds: 3}}
""")
    p = Proc(["fusion", "serve", "--data", str(tmp_path / "data"), "--config", str(cfg)],
             tmp_path / "home", tmp_path / "fusion.log", env={"FUSTOR_PID_FILE": "0"})
    trust = ssl.create_default_context(cafile=str(certs["ca"]))
    try:
        for u in (f"https://127.0.0.1:{port}/", f"https://127.0.0.1:{rport}/"):
            wait_until(lambda u=u: p.alive() and httpx.get(u, verify=trust, timeout=2).status_code == 200,
                       30, what=u)
        yield p, port, rport, trust
    finally:
        p.stop()


def test_every_listener_speaks_https_and_refuses_untrusting_callers(tls_fusion):
    p, port, rport, trust = tls_fusion
    with httpx.Client(verify=trust, timeout=5) as c:
        r = c.get(f"https://127.0.0.1:{rport}/api/v1/pipe/session/", headers={"X-API-Key": KEY})
        assert r.status_code == 200 and r.json()["view_id"] == "v"
        r = c.get(f"https://127.0.0.1:{port}/api/v1/management/config", headers={"X-API-Key": AKEY})
        assert r.status_code == 200 and r.json()["tls_cert_file"].endswith("fusion.pem")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{port}/", timeout=5)  # the system store does not know our CA
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{rport}/", timeout=5)  # no plain HTTP on a TLS port
    assert p.alive()


def test_a_real_agent_pushes_over_tls_with_its_ca_file_and_says_why_it_cannot_without(
        tmp_path, tls_fusion, certs):
    p, port, rport, trust = tls_fusion
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    for i in range(20):
        (tree / "d" / f"f{i}.txt").write_text("x" * i)
    home = tmp_path / "agent-home"
    args = ["agent", "start", "--watch", str(tree), "--fusion", f"https://127.0.0.1:{rport}",
            "--no-console"]
    bad = Proc(args, home, tmp_path / "untrusting.log", env={"FUSTOR_AGENT_KEY": KEY})
    try:
        wait_until(lambda: "not trusted" in bad.output(), 30, what="a clear TLS error")
    finally:
        bad.stop()
    assert "ca_file" in bad.output() and KEY not in bad.output()
    good = Proc([*args, "--ca-file", str(certs["ca"])], home, tmp_path / "agent.log",
                env={"FUSTOR_AGENT_KEY": KEY})
    try:
        with httpx.Client(verify=trust, timeout=5, headers={"X-API-Key": QKEY}) as c:
            def indexed():
                r = c.get(f"https://127.0.0.1:{port}/api/v1/views/v/stats")
                return r.status_code == 200 and r.json()["file_count"] == 20
            wait_until(indexed, 60, what="the view to hold the 20 files")
    finally:
        assert good.stop() == 0, good.output()[-2000:]
