"""Prometheus /metrics: check states and latencies, executions, rule runs."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from opsroom.events import ExecutionFinished, RuleHeld, RuleTriggered
from opsroom.runtime import Runtime

router = APIRouter(include_in_schema=False)
STATE_VALUE = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}


class _MonitorCollector(Collector):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = GaugeMetricFamily("opsroom_check_state", "0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
                                  labels=["check", "state_type"])
        latency = GaugeMetricFamily("opsroom_check_latency_ms", "latency of the last probe", labels=["check"])
        healthy = GaugeMetricFamily("opsroom_system_healthy", "1 healthy, 0 not", labels=["system"])
        mon = self.rt.monitor
        if mon is not None:
            for name, st in mon.status.items():
                state.add_metric([name, st.state_type], STATE_VALUE.get(st.state, 3))
            for name, last in mon.last.items():
                latency.add_metric([name], last.latency_ms)
            for system, ok in mon.system_healthy.items():
                healthy.add_metric([system], 1 if ok else 0)
            runs = GaugeMetricFamily("opsroom_checks_run", "checks run since start")
            runs.add_metric([], mon.checks_run)
            yield runs
        yield state
        yield latency
        yield healthy


class Metrics:
    def __init__(self, rt: Runtime) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_MonitorCollector(rt))
        self.executions = Counter("opsroom_executions", "finished executions", ["runbook", "status"],
                                  registry=self.registry)
        self.duration = Histogram("opsroom_execution_seconds", "execution duration", ["runbook"],
                                  registry=self.registry, buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300))
        self.rule_runs = Counter("opsroom_rule_runs", "rule firings", ["rule", "outcome"], registry=self.registry)
        rt.bus.subscribe(ExecutionFinished, self._finished)
        rt.bus.subscribe(RuleTriggered, self._triggered)
        rt.bus.subscribe(RuleHeld, self._held)

    async def _finished(self, ev: ExecutionFinished) -> None:
        self.executions.labels(ev.runbook, ev.status).inc()
        self.duration.labels(ev.runbook).observe(ev.duration_s)

    async def _triggered(self, ev: RuleTriggered) -> None:
        self.rule_runs.labels(ev.rule, "triggered").inc()

    async def _held(self, ev: RuleHeld) -> None:
        self.rule_runs.labels(ev.rule, "held").inc()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    m: Metrics = request.app.state.metrics
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
