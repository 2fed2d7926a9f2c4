"""The reliability guarantees, checked on every CI run: `bench/chaos.py --quick --json`.

The benchmark starts and stops its own fusion and agent processes on 127.0.0.1 (kill -9 in
the middle of ingest, reloads, audits and map growths; a full tmpfs; overload; a one-minute
soak of 20 agents; a fuzz of every route; hot backups). It runs once for this module and
each test asserts one guarantee from its report, naming the figure that broke.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600  # --quick takes about 3 minutes; the rest is slack for a loaded machine


@pytest.fixture(scope="module")
def report() -> dict:
    # its own process group: on a timeout the benchmark and the fusions and agents it started
    # are all stopped (SIGTERM lets it unwind and unmount its tmpfs; SIGKILL if it does not)
    p = subprocess.Popen([sys.executable, str(ROOT / "bench" / "chaos.py"), "--quick", "--json"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            stdout, stderr = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            stdout, stderr = p.communicate()
        pytest.fail(f"bench/chaos.py --quick did not finish in {TIMEOUT_S} s:\n{stderr[-3000:]}")
    assert stdout.strip(), f"no report (exit {p.returncode}):\n{stderr[-3000:]}"
    out = json.loads(stdout)
    out["_stderr"] = stderr[-3000:]
    out["_exit"] = p.returncode
    return out


def figures(report: dict, name: str) -> dict:
    f = report["scenarios"][name]
    assert "error" not in f, f"{name} could not run to its checks: {f['error']}"
    return f


def zero(f: dict, *names: str) -> None:
    bad = {n: f.get(n) for n in names if f.get(n) != 0}
    assert not bad, f"must be 0: {bad}; all figures: {f}"


def test_kill_9_of_fusion_during_ingest_loses_no_acknowledged_row(report):
    f = figures(report, "crash_ingest")
    assert f["kills"] >= 4 and f["acked_rows"] > 0, f
    zero(f, "acked_lost", "torn_batch_dirs", "verify_failures", "unexpected_answers")
    assert f["restart_to_first_200_ms"]["max"] is not None, f


@pytest.mark.parametrize("name", ["crash_reload", "crash_audit", "crash_growth"])
def test_kill_9_of_fusion_in_a_reload_an_audit_or_a_map_growth(report, name):
    f = figures(report, name)
    assert f["kills"] >= 2 and f["acked_rows"] > 0, f
    zero(f, "acked_lost", "torn_batch_dirs", "verify_failures", "diverged_paths")


def test_kill_9_of_the_agent_mid_snapshot_and_mid_realtime_converges(report):
    f = figures(report, "agent_kill")
    assert f["killed_mid_snapshot"] is True, f
    zero(f, "diverged_paths", "verify_failures")


def test_a_full_disk_refuses_pushes_retryably_and_recovers(report):
    f = figures(report, "disk_full")
    assert "skipped" not in f, f"needs root to mount a small tmpfs: {f['skipped']}"
    assert (f["full_status"], f["full_code"]) == (503, "store_full"), f
    assert f["full_retry_after"] is not None and f["fusion_alive"] is True, f
    zero(f, "query_errors_while_full", "verify_failures_while_full", "acked_lost_while_full",
         "torn_batch_dirs_while_full", "failed_batch_files_visible", "push_failures_after_free",
         "acked_lost", "torn_batch_dirs", "verify_failures")


def test_overload_is_refused_with_retry_after_and_other_views_answer(report):
    f = figures(report, "overload")
    assert f["pushes_503"] > 0, f"the overload never happened: {f}"
    zero(f, "retry_after_missing", "push_errors", "query_errors", "acked_lost", "verify_failures")


def test_soak_of_20_agents_has_no_errors_and_flat_memory(report):
    f = figures(report, "soak")
    zero(f, "push_errors", "heartbeat_errors", "read_errors", "verify_failures")


def test_fuzz_of_every_route_finds_no_server_error_and_one_error_shape(report):
    f = figures(report, "fuzz")
    assert f["operations_fuzzed"] == f["operations"], f
    zero(f, "server_errors", "bad_error_shapes", "auth_violations", "verify_failures")


def test_hot_backups_under_writes_open_and_verify(report):
    f = figures(report, "backup")
    assert f["backups"] >= 4 and f["inspect_verify_exit"] == 0, f
    zero(f, "backup_verify_failures", "backup_missing_acked", "backup_torn_batch_dirs")


def test_every_guarantee_held(report):
    """Including the measured bounds (latency, memory slope, fds) the tests above leave to
    the benchmark's own verdict."""
    assert report["ok"] and report["_exit"] == 0, (
        "broken: " + "; ".join(report["broken"]) + f"\n{report['_stderr']}")
