"""The agent's figures for Prometheus (``GET /metrics`` on the agent console).

    fustor_agent_push_seconds{pipe}            latency of event pushes to fusion (histogram)
    fustor_agent_rows_pushed_total{pipe}       rows fusion acknowledged
    fustor_agent_rows_rejected_total{pipe}     rows fusion refused for good
    fustor_agent_rows_dropped_total{pipe}      rows dropped after a refusal (split to the bad row)
    fustor_agent_events_dropped_total{pipe}    realtime events lost to a full queue (overflows)
    fustor_agent_queue_depth{pipe}             realtime events waiting to be pushed
    fustor_agent_queue_overflowed{pipe}        1 while an overflow awaits its repairing audit
    fustor_agent_watch_limit_reached{pipe}     1 when the inotify watch limit is exhausted
    fustor_agent_watched_dirs{pipe}            directories watched
    fustor_agent_realtime_lag_seconds{pipe}    since fusion last acknowledged a realtime push
    fustor_agent_fusion_reachable{pipe}        1 when the last call to fusion had an answer
    fustor_agent_leader{pipe}                  1 while the pipe leads its view

Everything but the histogram is read from the agent's status when scraped, so the
figures are the ones `fustor agent status` shows.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# name, kind, help, how to read it from one pipe's status
_FIGURES: list[tuple[str, str, str, Callable[[dict], float | None]]] = [
    ("rows_pushed", "counter", "Rows fusion acknowledged", lambda p: p.get("rows_pushed")),
    ("rows_rejected", "counter", "Rows fusion refused for good", lambda p: p.get("rows_rejected")),
    ("rows_dropped", "counter", "Rows dropped after a refusal", lambda p: p.get("rows_dropped")),
    ("events_dropped", "counter", "Realtime events lost to a full queue",
     lambda p: (p.get("watch") or {}).get("events_dropped")),
    ("queue_depth", "gauge", "Realtime events waiting to be pushed",
     lambda p: (p.get("watch") or {}).get("queued_events")),
    ("queue_overflowed", "gauge", "1 while a queue overflow awaits its repairing audit",
     lambda p: _flag((p.get("watch") or {}).get("overflowed"))),
    ("watch_limit_reached", "gauge", "1 when the inotify watch limit is exhausted",
     lambda p: _flag((p.get("watch") or {}).get("watch_limit_reached"))),
    ("watched_dirs", "gauge", "Directories watched",
     lambda p: (p.get("watch") or {}).get("watched_dirs")),
    ("realtime_lag_seconds", "gauge", "Seconds since fusion last acknowledged a realtime push",
     lambda p: p.get("lag_s")),
    ("fusion_reachable", "gauge", "1 when the last call to fusion had an answer",
     lambda p: None if p.get("fusion_reachable") is None else _flag(p["fusion_reachable"])),
    ("leader", "gauge", "1 while the pipe leads its view", lambda p: _flag(p.get("role") == "leader")),
]


def _flag(value) -> int:
    return 1 if value else 0


class AgentMetrics:
    def __init__(self, status: Callable[[], dict]) -> None:
        self.registry = CollectorRegistry()
        self.push_seconds = Histogram("fustor_agent_push_seconds", "Seconds per push of events "
                                      "to fusion", ["pipe"], buckets=BUCKETS,
                                      registry=self.registry)
        self.registry.register(_Status(status))

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _Status:
    def __init__(self, status: Callable[[], dict]) -> None:
        self.status = status

    def describe(self):
        return []

    def collect(self):
        pipes = sorted((self.status().get("pipes") or {}).items())
        for name, kind, help_text, read in _FIGURES:
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                f"fustor_agent_{name}", help_text, labels=["pipe"])
            for pid, p in pipes:
                value = read(p)
                if isinstance(value, int | float):
                    family.add_metric([pid], value)
            yield family
