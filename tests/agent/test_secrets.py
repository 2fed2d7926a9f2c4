"""Keys are secrets: `agent start -D` keeps the key out of the child's command line (which
every user can read in `ps`), the -D log is private (0600) and never holds the key.

Real processes: a real `fustor fusion serve` (tests/e2e.py's Cluster, its ingest key
``KEY``) and a daemonised `fustor agent start -D --watch ...`; the agent must still
authenticate (fusion shows its session) with the key it got another way.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fustor.agent.sender_http import FusionClient, FusionRejectedError
from fustor.pidfile import open_private_log
from tests.e2e import KEY, build_tree
from tests.procs import free_port, kill_daemon, wait_until


def run_cli(args: list[str], home: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "FUSTOR_AGENT_KEY"}
    full.update(FUSTOR_HOME=str(home), **(env or {}))
    return subprocess.run([sys.executable, "-m", "fustor.cli", *args], env=full,
                          capture_output=True, text=True, timeout=60)







@pytest.mark.parametrize("how", ["--key", "--key-file", "env"])
def test_daemon_gets_the_key_without_a_command_line_and_never_logs_it(cluster, tmp_path, how):
    tree = tmp_path / "tree"
    build_tree(tree, 50, fanout=(2,))
    home = cluster.agent_home("d")
    log = home / "logs" / "agent.log"
    log.parent.mkdir(parents=True)
    log.write_text("an older log, once readable by everyone\n")
    log.chmod(0o644)
    cluster.logs["daemon agent.log"] = log
    cluster.start_fusion()

    args = ["agent", "start", "-D", "--watch", str(tree), "--fusion", cluster.rurl,
            "--console-port", str(free_port())]
    env = {}
    if how == "--key":
        args += ["--key", KEY]
    elif how == "--key-file":
        key_file = tmp_path / "agent.key"
        key_file.write_text(KEY + "\n")
        key_file.chmod(0o600)
        args += ["--key-file", str(key_file)]
    else:
        env["FUSTOR_AGENT_KEY"] = KEY
    out = run_cli(args, home, env=env)
    assert out.returncode == 0 and "PID" in out.stdout, (out.stdout, out.stderr)
    pid = int((home / "agent.pid").read_text())
    try:
        with cluster.failing():
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"fustor.cli" in argv and b"--watch" in argv
            assert not any(KEY.encode() in a for a in argv), argv
            assert b"--key" not in argv

            # it authenticated: fusion holds its session, and the view fills
            wait_until(lambda: [s for s in cluster.sessions() if s["task_id"] == f"{s['agent_id']}:default"],
                       30, interval=0.2, what="the daemon's session in fusion")
            cluster.wait_view_equals(tree, 60)

            mode = stat.S_IMODE(log.stat().st_mode)
            assert mode == 0o600, oct(mode)
            out = run_cli(["agent", "stop"], home)
            assert "stopped" in out.stdout, (out.stdout, out.stderr)
            text = log.read_text()
            assert text.startswith("an older log"), "the log was truncated"
            assert "snapshot complete" in text and KEY not in text
    finally:
        kill_daemon(pid, home)


def test_a_new_daemon_log_is_created_private(tmp_path):
    path = tmp_path / "logs" / "x.log"
    old = os.umask(0o022)
    try:
        with open_private_log(path) as fh:
            fh.write(b"line\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


async def test_a_key_fusion_echoes_back_is_not_repeated_in_errors():
    """Fusion echoing the key in a refusal does not put it in the pipe's error (or logs)."""
    secret = "s3cr3t-key-value"

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"detail": f"unknown key {request.headers['x-api-key']}"})

    client = FusionClient("http://fusion", secret, transport=httpx.MockTransport(answer))
    try:
        with pytest.raises(FusionRejectedError) as info:
            await client.create_session("a:p", "/x")
    finally:
        await client.aclose()
    assert secret not in str(info.value) and "unknown key ***" in str(info.value)


def test_key_options(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    home = tmp_path / "home"
    key_file = tmp_path / "k"
    key_file.write_text(KEY)
    base = ["agent", "start", "--watch", str(tree), "--fusion", "http://127.0.0.1:9"]
    both = run_cli([*base, "--key", "x", "--key-file", str(key_file)], home)
    assert both.returncode == 1 and "give --key or --key-file, not both" in both.stderr
    none = run_cli(base, home)
    assert none.returncode == 1 and "FUSTOR_AGENT_KEY" in none.stderr and "--key-file" in none.stderr
    key_file.write_text("")
    empty = run_cli([*base, "--key-file", str(key_file)], home)
    assert empty.returncode == 1 and "expected the key alone on one line" in empty.stderr
    help_text = run_cli(["agent", "start", "--help"], home).stdout
    assert "FUSTOR_AGENT_KEY" in help_text and "--key-file" in help_text and "--ca-file" in help_text
    assert "--console-port" in help_text and "--no-console" in help_text
