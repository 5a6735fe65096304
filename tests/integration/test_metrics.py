"""/metrics on a running opsroom: what Prometheus reads, values included, not just names."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from opsroom.checks.probes.base import ProbeResult
from opsroom.web.metrics import Metrics
from tests.factories import small_catalog
from tests.inprocess import booted

T0 = 1_700_000_000.0


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _ok() -> ProbeResult:
    return ProbeResult(state="OK", output="OK - fine", long_output="", latency_ms=2.5, perfdata={}, down=False)


async def test_metrics_show_check_state_and_the_result_store_load(tmp_path: Path) -> None:
    async with booted(tmp_path, small_catalog(tmp_path)) as (rt, _fake):
        mon = rt.monitor
        assert mon is not None and mon.results is not None
        metrics = Metrics(rt)
        rt.settings.check_result_ok_interval = 60.0
        for i in range(30):  # an OK check that stays OK for 30 s: kept once, the rest sampled out
            mon.record("svc-cmd", _ok(), now=T0 + i)
        before = _samples(metrics)
        assert before[("opsroom_checks_run_total", ())] == 30
        assert before[("opsroom_check_results_sampled_out_total", ())] == mon.results.sampled_out > 0
        assert before[("opsroom_check_results_pending", ())] == len(mon.results.pending) > 0
        assert before[("opsroom_check_results_dropped_total", ())] == 0
        assert before[("opsroom_check_state", (("check", "svc-cmd"), ("state_type", "hard")))] == 0
        assert before[("opsroom_check_latency_ms", (("check", "svc-cmd"),))] == 2.5
        for q in ("0.5", "0.99", "1"):
            assert ("opsroom_scheduler_lag_seconds", (("quantile", q),)) in before
        assert before[("opsroom_scheduler_skipped_late_total", ())] == 0

        await mon.results.flush()
        after = _samples(metrics)
        assert after[("opsroom_check_results_pending", ())] == 0
        assert after[("opsroom_check_results_stored_total", ())] == \
            before[("opsroom_check_results_stored_total", ())] + before[("opsroom_check_results_pending", ())]
        assert after[("opsroom_check_results_stored_total", ())] + after[
            ("opsroom_check_results_sampled_out_total", ())] == 30


async def test_every_metric_is_documented(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    async with booted(tmp_path, small_catalog(tmp_path)) as (rt, _fake):
        metrics = Metrics(rt)
        metrics.executions.labels("count", "succeeded").inc()  # labelled families show once they have a child
        metrics.duration.labels("count").observe(0.1)
        metrics.rule_runs.labels("r", "held").inc()
        text = generate_latest(metrics.registry).decode()
        names = {f.name + ("_total" if f.type == "counter" else "") for f in text_string_to_metric_families(text)}
    assert len(names) >= 14
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"docs/metrics.md lacks {missing}"
