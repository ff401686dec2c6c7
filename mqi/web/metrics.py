"""``/metrics`` in the Prometheus text format, built from one read of SQLite per scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from mqi.clock import parse_utc
from mqi.store import BEAM_STATUSES, CASE_STATUSES, MetricsSnapshot
from mqi.store.views import Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def verdict_metrics(snapshot: MetricsSnapshot) -> list[Metric]:
    """Cases by their newest QA verdict (pass, review, fail, not-compared, error)."""
    family = GaugeMetricFamily("mqi_cases_by_verdict", "Cases by their newest QA verdict", labels=["verdict"])
    for verdict, count in sorted(snapshot.extra.get("cases_by_verdict", {}).items()):
        family.add_metric([verdict], count)
    return [family]


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    pairs = zip(histogram.bounds, histogram.cumulative[:-1], strict=True)
    buckets = [(repr(float(bound)), count) for bound, count in pairs]
    buckets.append(("+Inf", histogram.count))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=histogram.total)


def families(snapshot: MetricsSnapshot) -> Iterator[Metric]:
    cases = GaugeMetricFamily("mqi_cases", "Cases by status.", labels=["status"])
    for status in CASE_STATUSES:
        cases.add_metric([status], snapshot.cases_by_status.get(status, 0))
    yield cases
    beams = GaugeMetricFamily("mqi_beams", "Beams by status.", labels=["status"])
    for status in BEAM_STATUSES:
        beams.add_metric([status], snapshot.beams_by_status.get(status, 0))
    yield beams
    jobs = GaugeMetricFamily("mqi_jobs", "Slurm jobs by the state the last poll saw.", labels=["state"])
    for state, count in sorted(snapshot.jobs_by_state.items()):
        jobs.add_metric([state], count)
    yield jobs
    yield _histogram(
        "mqi_beam_queue_wait_seconds", "From a beam's job submission to its start.", snapshot.queue_wait
    )
    yield _histogram("mqi_beam_run_seconds", "From a beam's start to its end.", snapshot.run_time)
    counters = snapshot.counters
    cycles = counters["poll_cycles_ok"] + counters["poll_cycles_failed"]
    yield SummaryMetricFamily(
        "mqi_poll_cycle_duration_seconds",
        "Poll cycles (mqi poll / mqi run) and their total duration.",
        count_value=int(cycles),
        sum_value=snapshot.poll_seconds_sum,
    )
    outcomes = CounterMetricFamily("mqi_poll_cycles", "Poll cycles by outcome.", labels=["outcome"])
    outcomes.add_metric(["ok"], counters["poll_cycles_ok"])
    outcomes.add_metric(["failed"], counters["poll_cycles_failed"])
    yield outcomes
    last = snapshot.last_poll
    yield GaugeMetricFamily(
        "mqi_poll_last_cycle_seconds",
        "Duration of the most recent poll cycle.",
        value=last["seconds"] if last else 0,
    )
    yield GaugeMetricFamily(
        "mqi_poll_last_success_timestamp_seconds",
        "Unix time of the last successful poll cycle (0: never).",
        value=parse_utc(snapshot.last_ok_poll_at).timestamp() if snapshot.last_ok_poll_at else 0,
    )
    yield CounterMetricFamily(
        "mqi_submit_failures", "Failed submissions (not rejections).", value=counters["submit_failures"]
    )
    yield CounterMetricFamily(
        "mqi_uploaded_bytes", "Bytes uploaded to the cluster.", value=counters["bytes_uploaded"]
    )
    yield CounterMetricFamily(
        "mqi_downloaded_bytes", "Bytes of results brought home.", value=counters["bytes_downloaded"]
    )
    yield from verdict_metrics(snapshot)


class _Snapshot:
    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return families(self.snapshot)


def render(snapshot: MetricsSnapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(snapshot))
    return generate_latest(registry)
