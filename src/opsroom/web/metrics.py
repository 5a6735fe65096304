"""Prometheus /metrics: check states, latencies and perfdata, executions, rule runs, and opsroom's own
load (scheduler lag and skips, the result store's backlog and drops)."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from opsroom.checks.results import ResultWriter
from opsroom.checks.scheduler import Scheduler
from opsroom.cluster.node import ClusterCollector
from opsroom.eventlog.relay import is_foreign
from opsroom.events import ExecutionFinished, RuleHeld, RuleTriggered
from opsroom.runtime import Runtime
from opsroom.secrets.masking import mask

router = APIRouter(include_in_schema=False)
# No `_created` series: a start timestamp per labelled child doubles what Prometheus stores for
# no alert anyone writes (process-wide, and opsroom is the only registry user in its process).
disable_created_metrics()  # type: ignore[no-untyped-call]
STATE_VALUE = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}
# A plugin chooses its perfdata labels (check_disk: one per mount point): per check at most this many
# series, the first by label name, so a plugin that prints a label per request cannot flood Prometheus.
MAX_PERFDATA_LABELS = 32
MAX_LABEL_LENGTH = 128  # longer labels are skipped, not cut (two cut labels could collide)


class _MonitorCollector(Collector):
    """Read at scrape time from the monitor's own state: nothing to keep in step on the hot path."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("opsroom_check_state", "0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
                                  labels=["check", "state_type"])
        latency = GaugeMetricFamily("opsroom_check_latency_ms", "latency of the last probe", labels=["check"])
        healthy = GaugeMetricFamily("opsroom_system_healthy", "1 healthy, 0 not", labels=["system"])
        perfdata = GaugeMetricFamily("opsroom_check_perfdata", "the last probe's performance data "
                                     "(Nagios plugin perfdata), unit dropped", labels=["check", "label"])
        mon = self.rt.monitor
        if mon is not None:
            for name, st in mon.status.items():
                state.add_metric([name, st.state_type], STATE_VALUE.get(st.state, 3))
            for name, last in mon.last.items():
                latency.add_metric([name], last.latency_ms)
                for label, value in perfdata_series(last.perfdata):
                    perfdata.add_metric([name, label], value)
            for system, ok in mon.system_healthy.items():
                healthy.add_metric([system], 1 if ok else 0)
            yield CounterMetricFamily("opsroom_checks_run", "checks run since start", value=mon.checks_run)
            yield from _scheduler_metrics(mon.scheduler)
            if mon.results is not None:
                yield from _result_store_metrics(mon.results)
        yield state
        yield latency
        yield healthy
        yield perfdata
        if self.rt.rooms is not None:
            yield from _chat_metrics(self.rt.rooms.stats())


def perfdata_series(perfdata: dict[str, float]) -> list[tuple[str, float]]:
    """A check's perfdata as bounded (label, value) series: Prometheus keeps every label value forever."""
    # /metrics answers anyone who can reach it: a label that quotes a secret (a plugin echoing its
    # argv) is left out, as masked it could collide with another label.
    labels = sorted(k for k in perfdata if 0 < len(k) <= MAX_LABEL_LENGTH and mask(k) == k)
    return [(k, float(perfdata[k])) for k in labels[:MAX_PERFDATA_LABELS]]


def _chat_metrics(stats: dict[str, dict[str, object]]) -> Iterator[Metric]:
    """Each chat adapter's send queue: a platform that is slow or away fills its own queue only."""
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
        "queued": GaugeMetricFamily("opsroom_chat_queued", "messages waiting for the platform", labels=["platform"]),
        "connected": GaugeMetricFamily("opsroom_chat_connected", "1 connected, 0 not", labels=["platform"]),
        "delivered": CounterMetricFamily("opsroom_chat_delivered", "messages sent to the platform",
                                         labels=["platform"]),
        "retried": CounterMetricFamily("opsroom_chat_retried", "sends retried after the platform failed",
                                       labels=["platform"]),
        "overflow": CounterMetricFamily("opsroom_chat_overflow", "messages dropped because the platform's "
                                        "send queue was full", labels=["platform"]),
        "failed": CounterMetricFamily("opsroom_chat_failed", "messages the platform refused for good",
                                      labels=["platform"]),
    }
    for platform, figures in sorted(stats.items()):
        for key, family in families.items():
            family.add_metric([platform], float(figures.get(key, 0)))  # type: ignore[arg-type]
    yield from families.values()


def _scheduler_metrics(sched: Scheduler) -> Iterator[Metric]:
    # The signs that opsroom itself is overloaded: checks starting late, or whole runs skipped.
    lag = GaugeMetricFamily("opsroom_scheduler_lag_seconds",
                            "check start minus its due time over the recent window", labels=["quantile"])
    pct = sched.lag_percentiles()
    for q, key in (("0.5", "p50"), ("0.99", "p99"), ("1", "max")):
        lag.add_metric([q], pct[key])
    yield lag
    yield CounterMetricFamily("opsroom_scheduler_skipped_late", "check runs skipped because the scheduler "
                              "was a whole interval behind", value=sched.skipped_late)
    yield CounterMetricFamily("opsroom_scheduler_skipped_busy", "check runs skipped because the previous "
                              "run of the check was still going", value=sched.skipped_busy)


def _result_store_metrics(results: ResultWriter) -> Iterator[Metric]:
    # A growing backlog or any drop means the store is not keeping up with the checks.
    yield GaugeMetricFamily("opsroom_check_results_pending", "check results waiting to be stored",
                            value=len(results.pending))
    yield CounterMetricFamily("opsroom_check_results_stored", "check results stored", value=results.stored)
    yield CounterMetricFamily("opsroom_check_results_dropped", "check results dropped because the store "
                              "fell behind by more than the backlog bound", value=results.dropped)
    yield CounterMetricFamily("opsroom_check_results_sampled_out", "OK results of unchanged checks not kept "
                              "(check_result_ok_interval)", value=results.sampled_out)


class Metrics:
    """Per node: counts what this server did, never what the relay brought from another one
    (summed over the nodes, each execution and rule firing is counted once)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.registry = CollectorRegistry()
        self.registry.register(_MonitorCollector(rt))
        self.registry.register(ClusterCollector(rt))
        self.executions = Counter("opsroom_executions", "finished executions", ["runbook", "status"],
                                  registry=self.registry)
        self.duration = Histogram("opsroom_execution_seconds", "execution duration", ["runbook"],
                                  registry=self.registry, buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300))
        self.rule_runs = Counter("opsroom_rule_runs", "rule firings", ["rule", "outcome"], registry=self.registry)
        rt.bus.subscribe(ExecutionFinished, self._finished)
        rt.bus.subscribe(RuleTriggered, self._triggered)
        rt.bus.subscribe(RuleHeld, self._held)

    async def _finished(self, ev: ExecutionFinished) -> None:
        if is_foreign(self.rt, ev):
            return
        self.executions.labels(ev.runbook, ev.status).inc()
        self.duration.labels(ev.runbook).observe(ev.duration_s)

    async def _triggered(self, ev: RuleTriggered) -> None:
        if is_foreign(self.rt, ev):
            return
        self.rule_runs.labels(ev.rule, "triggered").inc()

    async def _held(self, ev: RuleHeld) -> None:
        if is_foreign(self.rt, ev):
            return
        self.rule_runs.labels(ev.rule, "held").inc()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    m: Metrics = request.app.state.metrics
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
