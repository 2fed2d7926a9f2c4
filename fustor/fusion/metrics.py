"""Fusion's figures for Prometheus (``GET /metrics``), kept with prometheus-client.

Counted as things happen (cheap, on the request path):

    fustor_rows_total{view,member,outcome}       rows of pushed batches, applied / rejected
    fustor_batches_total{view,member}            event batches applied to a tree
    fustor_commit_seconds{view,member}           hand-over to the tree's writer → commit
                                                 (queue wait included; histogram)
    fustor_http_unavailable_total{reason}        503 answers, by error code (view_not_ready,
                                                 store_busy, store_full, store_closed,
                                                 too_many_connections)
    fustor_http_request_seconds{method,route}    HTTP latency by route template (histogram)
    fustor_http_requests_total{method,route,status}

Read when scraped (each is O(1) per tree: one aggregate record, table sizes):

    fustor_view_files / _dirs / _bytes{view,member}   subtree figures of /
    fustor_store_file_bytes / fustor_store_map_bytes{view,member}
    fustor_writer_queue_depth{view,member}            jobs waiting for the tree's writer
    fustor_name_blocks_waiting{view,member}           full name blocks without their trigram
                                                      filter yet (written while idle)
    fustor_view_snapshot_complete{view,member}        1 once a snapshot completed
    fustor_sessions{view,role}                        agent sessions by election key and role
    fustor_agent_heartbeat_age_seconds{agent}         since each agent's last heartbeat
    fustor_open_files / fustor_open_files_limit       descriptors held / the soft limit
    fustor_store_open_files                           descriptors held by stores (~3 per tree)

A forest view's trees carry ``member`` = the pipe id; an fs view's carry ``member=""``.
One registry per :class:`~fustor.fusion.core.Fusion` (never the process-wide default),
so tests and several fusions in one process do not share figures.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:  # pragma: no cover
    from fustor.fusion.core import Fusion

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


def tree_labels(tree_id: str) -> tuple[str, str]:
    """``(view, member)`` of a tree: a forest member's id is ``<view>:<pipe>``."""
    view, _, member = tree_id.partition(":")
    return view, member


class FusionMetrics:
    def __init__(self, fusion: Fusion) -> None:
        self.registry = reg = CollectorRegistry(auto_describe=True)
        self.rows = Counter("fustor_rows", "Rows of pushed event batches, by outcome",
                            ["view", "member", "outcome"], registry=reg)
        self.batches = Counter("fustor_batches", "Event batches applied to a tree",
                               ["view", "member"], registry=reg)
        self.commit = Histogram("fustor_commit_seconds", "Seconds from handing a batch to the "
                                "tree's writer to its commit (queue wait included)",
                                ["view", "member"], buckets=LATENCY_BUCKETS, registry=reg)
        self.unavailable = Counter("fustor_http_unavailable", "503 answers, by reason (the "
                                   "error code)", ["reason"], registry=reg)
        self.http_seconds = Histogram("fustor_http_request_seconds", "HTTP request latency by "
                                      "route", ["method", "route"], buckets=LATENCY_BUCKETS,
                                      registry=reg)
        self.http_requests = Counter("fustor_http_requests", "HTTP requests by route and status",
                                     ["method", "route", "status"], registry=reg)
        reg.register(_State(fusion))

    def batch(self, tree_id: str, applied: int, rejected: int, seconds: float) -> None:
        view, member = tree_labels(tree_id)
        self.rows.labels(view, member, "applied").inc(applied)
        if rejected:
            self.rows.labels(view, member, "rejected").inc(rejected)
        self.batches.labels(view, member).inc()
        self.commit.labels(view, member).observe(seconds)

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_seconds.labels(method, route).observe(seconds)
        self.http_requests.labels(method, route, str(status)).inc()

    def text(self) -> bytes:
        """The exposition text (call it off the event loop: it reads every tree)."""
        return generate_latest(self.registry)


class _State:
    """Gauges read from the running fusion when scraped."""

    def __init__(self, fusion: Fusion) -> None:
        self.fusion = fusion

    def describe(self):
        return []  # figures appear and vanish with views; nothing fixed to describe

    def collect(self):
        f = self.fusion
        tree = ["view", "member"]
        files = GaugeMetricFamily("fustor_view_files", "Files under / of the tree", labels=tree)
        dirs = GaugeMetricFamily("fustor_view_dirs", "Directories under / of the tree (/ "
                                 "included)", labels=tree)
        size = GaugeMetricFamily("fustor_view_bytes", "Sum of file sizes under / of the tree",
                                 labels=tree)
        disk = GaugeMetricFamily("fustor_store_file_bytes", "Size of the tree's store file",
                                 labels=tree)
        mapped = GaugeMetricFamily("fustor_store_map_bytes", "Address space mapped for the "
                                   "tree's store", labels=tree)
        queue = GaugeMetricFamily("fustor_writer_queue_depth", "Jobs waiting for the tree's "
                                  "writer", labels=tree)
        waiting = GaugeMetricFamily("fustor_name_blocks_waiting", "Full name-index blocks "
                                    "whose trigram filter is not written yet (fusion writes "
                                    "them while the tree's writer is idle)", labels=tree)
        snap = GaugeMetricFamily("fustor_view_snapshot_complete", "1 once a leader's snapshot "
                                 "completed for the tree", labels=tree)
        for v in f.fs_views():
            labels = list(tree_labels(v.id))
            try:
                st = v.stats("/")
                disk_bytes, map_bytes = v.store.disk_bytes(), v.store.map_size
                blocks = v.name_blocks_waiting()
            except Exception:  # a tree closing under a reload: leave it out of this scrape
                continue
            files.add_metric(labels, st["file_count"])
            dirs.add_metric(labels, st["dir_count"])
            size.add_metric(labels, st["total_size"])
            disk.add_metric(labels, disk_bytes)
            mapped.add_metric(labels, map_bytes)
            queue.add_metric(labels, v.store.queued)
            waiting.add_metric(labels, blocks)
            snap.add_metric(labels, 1 if v.snapshot_completed_at is not None
                            or f.sessions.snapshot_complete(v.id) else 0)
        sessions = GaugeMetricFamily("fustor_sessions", "Agent sessions by election key (a view, "
                                     "or <forest>:<pipe>) and role", labels=["view", "role"])
        counts: dict[tuple[str, str], int] = {}
        for s in list(f.sessions.sessions.values()):
            for key in s.keys:
                role = "leader" if f.sessions.leader.get(key) == s.session_id else "follower"
                counts[(key, role)] = counts.get((key, role), 0) + 1
        for (key, role), n in sorted(counts.items()):
            sessions.add_metric([key, role], n)
        beat = GaugeMetricFamily("fustor_agent_heartbeat_age_seconds", "Seconds since each "
                                 "agent's last heartbeat", labels=["agent"])
        now = time.time()
        for aid, a in sorted(f.fleet.agents.items()):
            if a.last_heartbeat is not None:
                beat.add_metric([aid], round(now - a.last_heartbeat, 3))
        fds = f.admission.figures(f.data_dir)
        open_files = GaugeMetricFamily("fustor_open_files", "File descriptors the fusion "
                                       "process holds")
        open_files.add_metric([], fds["in_use"])
        limit = GaugeMetricFamily("fustor_open_files_limit", "Soft RLIMIT_NOFILE of the fusion "
                                  "process (raised to the hard limit at start)")
        limit.add_metric([], fds["soft_limit"])
        held = GaugeMetricFamily("fustor_store_open_files", "File descriptors held by open "
                                 "stores (~3 per tree)")
        held.add_metric([], fds["held_by_stores"])
        return [files, dirs, size, disk, mapped, queue, waiting, snap, sessions, beat, open_files,
                limit, held]
