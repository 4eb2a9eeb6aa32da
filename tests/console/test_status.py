"""``segmind-queue status``: the pure figures, the view, and the command over a real socket."""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from rich.console import Console
from typer.testing import CliRunner

from console.cli import app
from console.status import (
    Samples,
    StatusError,
    format_duration,
    histogram_quantile,
    parse_metrics,
    render,
    run_status,
    scrape,
    summarize,
)

runner = CliRunner()
INF = math.inf

# -- histogram_quantile ----------------------------------------------------------------------

BUCKETS = [(1.0, 2.0), (5.0, 6.0), (10.0, 10.0), (INF, 10.0)]


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # rank 5 in (1, 5]: 4 observations, 3 of them below the rank -> 1 + 4 * 3/4
        (0.5, BUCKETS, 4.0),
        # rank 9.5 in (5, 10]: 5 + 5 * 3.5/4
        (0.95, BUCKETS, 9.375),
        (1.0, BUCKETS, 10.0),
        # in the first bucket, which starts at 0: rank 2 of 4 -> 10 * 2/4
        (0.25, [(10.0, 4.0), (20.0, 8.0), (INF, 8.0)], 5.0),
        # every observation in +Inf: the highest finite bound
        (0.5, [(1.0, 0.0), (5.0, 0.0), (INF, 4.0)], 5.0),
        (0.99, [(1.0, 1.0), (INF, 10.0)], 1.0),
        # q = 0: the lower bound of the first non-empty bucket
        (0.0, [(1.0, 0.0), (5.0, 3.0), (INF, 3.0)], 1.0),
        # any order; decreasing counts raised to be monotonic
        (0.5, list(reversed(BUCKETS)), 4.0),
        (0.5, [(1.0, 2.0), (5.0, 6.0), (10.0, 5.0), (INF, 10.0)], 4.0),
        # a first bound at or below 0 is the answer for ranks inside it
        (0.5, [(-1.0, 4.0), (INF, 4.0)], -1.0),
    ],
)
def test_histogram_quantile_interpolates_like_promql(
    q: float, buckets: list[tuple[float, float]], expected: float
) -> None:
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


@pytest.mark.parametrize(
    "buckets",
    [
        [],
        [(1.0, 0.0), (5.0, 0.0), (INF, 0.0)],  # no observation
        [(INF, 5.0)],  # no finite bound
        [(1.0, 2.0), (5.0, 3.0)],  # no +Inf bucket
    ],
)
def test_histogram_quantile_is_none_without_an_estimate(
    buckets: list[tuple[float, float]],
) -> None:
    assert histogram_quantile(0.5, buckets) is None


@pytest.mark.parametrize("q", [-0.1, 1.5, math.nan])
def test_histogram_quantile_rejects_a_quantile_outside_0_1(q: float) -> None:
    with pytest.raises(ValueError, match="quantile"):
        histogram_quantile(q, BUCKETS)


# -- parse_metrics ---------------------------------------------------------------------------


def test_parse_metrics_keeps_every_sample_and_drops_nan() -> None:
    samples = parse_metrics(
        "# TYPE segmind_jobs_total counter\n"
        'segmind_jobs_total{workflow="a",status="COMPLETED"} 3\n'
        "# TYPE segmind_credits_remaining gauge\n"
        "segmind_credits_remaining NaN\n"
        "segmind_rate_limit_tokens_per_minute 60\n"
    )
    assert samples.series("segmind_jobs_total") == (
        ((("status", "COMPLETED"), ("workflow", "a")), 3.0),
    )
    assert samples.series("segmind_credits_remaining") == ()
    assert samples.series("segmind_rate_limit_tokens_per_minute") == (((), 60.0),)
    assert len(samples) == 2


def test_parse_metrics_accepts_an_empty_exposition() -> None:
    assert len(parse_metrics("")) == 0


@pytest.mark.parametrize(
    "text", ["<html><body>Not Found</body></html>", '{"jobs": 3}', "hello world"]
)
def test_parse_metrics_rejects_what_is_not_prometheus_text(text: str) -> None:
    with pytest.raises(StatusError, match="not Prometheus text"):
        parse_metrics(text)


# -- summarize -------------------------------------------------------------------------------


def _text(lines: Mapping[str, float]) -> Samples:
    """Samples from ``{'name{labels}': value}``."""
    return parse_metrics("".join(f"{series} {value}\n" for series, value in lines.items()))


FIRST = {
    'segmind_jobs_total{workflow="stock-video",status="COMPLETED"}': 10,
    'segmind_jobs_total{workflow="stock-video",status="FAILED"}': 2,
    'segmind_jobs_total{workflow="sketch-maker",status="COMPLETED"}': 5,
    'segmind_credits_spent_usd_total{workflow="stock-video"}': 6.0,
    'segmind_credits_spent_usd_total{workflow="sketch-maker"}': 0.5,
    'segmind_http_requests_total{endpoint="submit",code="200"}': 17,
    'segmind_http_requests_total{endpoint="submit",code="429"}': 3,
    'segmind_http_requests_total{endpoint="poll",code="200"}': 80,
    'segmind_rate_limited_total{endpoint="submit"}': 3,
    "segmind_credits_remaining": 90.0,
    "segmind_credits_free_remaining": 10.0,
    "segmind_credits_updated_timestamp_seconds": 1_700_000_000,
    "segmind_credits_reserved_usd": 1.5,
    "segmind_rate_limit_tokens_per_minute": 50,
}


def test_one_scrape_gives_cumulative_figures_and_no_rates() -> None:
    summary = summarize(_text(FIRST), None, None)
    assert summary.interval_s is None
    stock = next(w for w in summary.workflows if w.workflow == "stock-video")
    assert stock.ended == {"COMPLETED": 10, "FAILED": 2, "TIMED_OUT": 0, "REJECTED": 0}
    assert stock.spent_usd == 6.0
    assert stock.throughput_per_min is None
    assert stock.spend_rate_usd_per_h is None
    assert summary.credits.spent_usd == 6.5
    assert summary.credits.spend_rate_usd_per_h is None
    assert summary.credits.time_to_empty_s is None
    # 429 share: cumulative, 3 of 100 calls; 3 of 20 submits
    assert summary.rate_limited_window == "cumulative"
    assert summary.rate_limited_share == pytest.approx(0.03)
    submit = next(c for c in summary.calls if c.endpoint == "submit")
    assert submit.by_code == {"200": 17, "429": 3}
    assert submit.rate_limited_share == pytest.approx(0.15)
    assert submit.calls_per_min is None
    assert summary.tokens_per_minute == 50


def test_two_scrapes_give_rates_over_the_interval_and_time_to_empty() -> None:
    later = dict(FIRST)
    later['segmind_jobs_total{workflow="stock-video",status="COMPLETED"}'] = 16
    later['segmind_jobs_total{workflow="stock-video",status="TIMED_OUT"}'] = 1  # new series
    later['segmind_credits_spent_usd_total{workflow="stock-video"}'] = 7.0
    later['segmind_http_requests_total{endpoint="submit",code="200"}'] = 25
    later['segmind_http_requests_total{endpoint="submit",code="429"}'] = 5
    later['segmind_rate_limited_total{endpoint="submit"}'] = 5
    summary = summarize(_text(later), _text(FIRST), 30.0)

    assert summary.interval_s == 30.0
    stock = next(w for w in summary.workflows if w.workflow == "stock-video")
    sketch = next(w for w in summary.workflows if w.workflow == "sketch-maker")
    assert stock.throughput_per_min == pytest.approx(7 / 30 * 60)  # 6 + 1 new in 30 s
    assert stock.spend_rate_usd_per_h == pytest.approx(1.0 / 30 * 3600)  # $120/h
    assert sketch.throughput_per_min == 0.0
    assert summary.credits.spend_rate_usd_per_h == pytest.approx(120.0)
    # $100 at $120/h: 50 minutes
    assert summary.credits.time_to_empty_s == pytest.approx(3000.0)
    # 429 share over the interval: 2 of the 10 submits made in it (no polls in it)
    assert summary.rate_limited_window == "interval"
    assert summary.rate_limited_share == pytest.approx(0.2)
    submit = next(c for c in summary.calls if c.endpoint == "submit")
    assert submit.calls_per_min == pytest.approx(20.0)
    assert submit.rate_limited_share == pytest.approx(0.2)
    poll = next(c for c in summary.calls if c.endpoint == "poll")
    assert poll.calls_per_min == 0.0
    assert poll.rate_limited_share is None  # no poll in the interval


def test_a_counter_that_went_down_restarted_from_zero() -> None:
    before = _text({'segmind_credits_spent_usd_total{workflow="a"}': 10.0})
    after = _text({'segmind_credits_spent_usd_total{workflow="a"}': 4.0})
    summary = summarize(after, before, 60.0)
    assert summary.workflows[0].spend_rate_usd_per_h == pytest.approx(4.0 * 60)


def test_a_reset_is_per_series() -> None:
    # One process restarted (pid 2), the other kept counting: 3 + 1, not 8 - 10 + ...
    before = _text(
        {
            'segmind_jobs_total{workflow="a",status="COMPLETED",pid="1"}': 5,
            'segmind_jobs_total{workflow="a",status="COMPLETED",pid="2"}': 5,
        }
    )
    after = _text(
        {
            'segmind_jobs_total{workflow="a",status="COMPLETED",pid="1"}': 8,
            'segmind_jobs_total{workflow="a",status="COMPLETED",pid="2"}': 1,
        }
    )
    workflow = summarize(after, before, 60.0).workflows[0]
    assert workflow.ended["COMPLETED"] == 9
    assert workflow.throughput_per_min == pytest.approx(4.0)


@pytest.mark.parametrize("elapsed", [None, 0.0, -1.0])
def test_no_rates_without_a_positive_interval(elapsed: float | None) -> None:
    summary = summarize(_text(FIRST), _text(FIRST), elapsed)
    assert summary.interval_s is None
    assert summary.credits.spend_rate_usd_per_h is None
    assert summary.rate_limited_window == "cumulative"


def test_time_to_empty_is_unknown_when_nothing_is_spent() -> None:
    summary = summarize(_text(FIRST), _text(FIRST), 10.0)
    assert summary.credits.spend_rate_usd_per_h == 0.0
    assert summary.credits.time_to_empty_s is None
    view = _plain(render(summary, now=1_700_000_012))
    assert "12.0s ago)" in view
    header = next(line for line in view.splitlines() if "empty in" in line)
    credits_row = next(line for line in view.splitlines() if "$90.00" in line)
    # the "empty in" column ends the row
    assert header.rstrip().endswith("empty in")
    assert credits_row.rstrip().endswith("—")


def test_credits_never_read_are_unknown() -> None:
    summary = summarize(
        _text(
            {
                "segmind_credits_remaining": 0,
                "segmind_credits_free_remaining": 0,
                "segmind_credits_updated_timestamp_seconds": 0,
            }
        ),
        None,
        None,
    )
    assert summary.credits.paid_usd is None
    assert summary.credits.free_usd is None
    assert summary.credits.updated_at is None


def test_jobs_in_flight_add_up_over_tenants_once_per_process() -> None:
    samples = parse_metrics(
        "\n".join(
            [
                'segmind_jobs_in_flight{workflow="a",tenant="t1",pid="1"} 4',
                'segmind_jobs_in_flight{workflow="a",tenant="t1",pid="2"} 4',
                'segmind_jobs_in_flight{workflow="a",tenant="t2",pid="1"} 3',
                'segmind_jobs_in_flight{workflow="a",tenant="t2",pid="2"} 3',
                "",
            ]
        )
    )
    assert summarize(samples, None, None).workflows[0].in_flight == 7


def test_a_fleet_gauge_reported_by_several_processes_is_taken_once() -> None:
    # Whether the endpoint merged them (one series) or not (a series per pid, or the same
    # series listed twice), every process reports the same fleet-wide value: max, not sum.
    for lines in (
        ['segmind_jobs_in_flight{workflow="a"} 4'],
        [
            'segmind_jobs_in_flight{workflow="a",pid="1"} 4',
            'segmind_jobs_in_flight{workflow="a",pid="2"} 4',
        ],
        ['segmind_jobs_in_flight{workflow="a"} 4', 'segmind_jobs_in_flight{workflow="a"} 4'],
    ):
        samples = parse_metrics(
            "\n".join(
                [
                    *lines,
                    'segmind_queue_messages{queue="q",pid="1"} 7',
                    'segmind_queue_messages{queue="q",pid="2"} 7',
                    "segmind_credits_remaining 9",
                    "segmind_credits_remaining 9",
                    "",
                ]
            )
        )
        summary = summarize(samples, None, None)
        assert summary.workflows[0].in_flight == 4
        assert [(q.queue, q.messages) for q in summary.queues] == [("q", 7)]
        assert summary.credits.paid_usd == 9


def test_histograms_polls_queues_and_errors() -> None:
    lines = {
        'segmind_end_to_end_seconds_bucket{workflow="a",le="10.0"}': 2,
        'segmind_end_to_end_seconds_bucket{workflow="a",le="20.0"}': 6,
        'segmind_end_to_end_seconds_bucket{workflow="a",le="+Inf"}': 6,
        'segmind_polls_per_job_sum{workflow="a"}': 21,
        'segmind_polls_per_job_count{workflow="a"}': 6,
        'segmind_oldest_job_age_seconds{workflow="a"}': 125,
        'segmind_job_errors_total{workflow="a",code="generation_failed"}': 2,
        'segmind_job_errors_total{workflow="b",code="generation_failed"}': 1,
        'segmind_job_errors_total{workflow="b",code="deadline_exceeded"}': 1,
        'segmind_queue_messages{queue="segmind.requests"}': 3,
        'segmind_queue_messages{queue="segmind.requests.XQ"}': 1,
        'segmind_queue_messages{queue="segmind.polls.DQ"}': 0,
    }
    summary = summarize(_text(lines), None, None)
    a = next(w for w in summary.workflows if w.workflow == "a")
    # rank 3 of 6 in (10, 20], which holds 4 with 2 below: 10 + 10 * 1/4
    assert a.end_to_end_p50_s == pytest.approx(12.5)
    assert a.end_to_end_p95_s == pytest.approx(10 + 10 * (5.7 - 2) / 4)
    assert a.generation_p50_s is None
    assert a.polls_per_job == pytest.approx(3.5)
    assert a.oldest_job_age_s == 125
    assert a.in_flight is None
    assert summary.errors == {"deadline_exceeded": 1, "generation_failed": 3}
    assert [(q.queue, q.dead_letter) for q in summary.queues] == [
        ("segmind.polls.DQ", False),
        ("segmind.requests", False),
        ("segmind.requests.XQ", True),
    ]


def test_summary_json_has_stable_keys() -> None:
    empty = summarize(parse_metrics(""), None, None).as_dict()
    full = summarize(_text(FIRST), _text(FIRST), 5.0).as_dict()
    assert set(empty) == set(full)
    assert set(empty["credits"]) == set(full["credits"])
    json.dumps(full, allow_nan=False)


# -- render ----------------------------------------------------------------------------------


def _console() -> Console:
    return Console(width=200, record=True, force_terminal=True, color_system="truecolor")


def _plain(renderable: Any) -> str:
    console = _console()
    console.print(renderable)
    return console.export_text()


def test_render_shows_the_figures_and_highlights_a_non_empty_dead_letter_queue() -> None:
    lines = dict(FIRST)
    lines['segmind_queue_messages{queue="segmind.requests.XQ"}'] = 2
    lines['segmind_queue_messages{queue="segmind.polls.XQ"}'] = 0
    lines['segmind_job_errors_total{workflow="stock-video",code="generation_failed"}'] = 2
    summary = summarize(_text(lines), None, None)
    view = _plain(render(summary, url="http://x/metrics", now=1_700_000_000))
    for figure in (
        "stock-video",
        "sketch-maker",
        "$90.00",
        "$10.00",
        "$1.50",
        "$6.50",
        "generation_failed",
        "429 share 3.0% (cumulative)",
        "limit 50/min",
        "200: 17",
        "429: 3",
        "http://x/metrics",
        "rates from the next scrape",
    ):
        assert figure in view, figure

    console = _console()
    styles = {
        segment.text.strip(): segment.style
        for segment in console.render(render(summary))
        if segment.text.strip().endswith(".XQ")
    }
    alert = styles["segmind.requests.XQ"]
    assert alert is not None
    assert alert.bold
    assert alert.color is not None
    assert alert.color.name == "red"
    assert styles["segmind.polls.XQ"] is None or not styles["segmind.polls.XQ"].bold


def test_render_shows_an_error_without_figures() -> None:
    view = _plain(render(None, url="http://x/metrics", error="cannot read http://x/metrics"))
    assert "error: cannot read http://x/metrics" in view


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "—"),
        (5.25, "5.2s"),
        (59.96, "1m00s"),
        (245, "4m05s"),
        (7380, "2h03m"),
        (3 * 86400 + 4 * 3600, "3d04h"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


# -- over a real socket ----------------------------------------------------------------------


@dataclass
class Endpoint:
    """A metrics endpoint served on 127.0.0.1 from a registry (or a fixed answer)."""

    url: str
    registry: CollectorRegistry
    metrics: dict[str, Any]
    answer: tuple[int, bytes] | None = None


def _record(registry: CollectorRegistry) -> dict[str, Any]:
    """Instruments named as docs/metrics.md, with observations."""
    m: dict[str, Any] = {
        "jobs": Counter("segmind_jobs_total", "", ["workflow", "status"], registry=registry),
        "errors": Counter("segmind_job_errors_total", "", ["workflow", "code"], registry=registry),
        "spent": Counter("segmind_credits_spent_usd_total", "", ["workflow"], registry=registry),
        "http": Counter("segmind_http_requests_total", "", ["endpoint", "code"], registry=registry),
        "limited": Counter("segmind_rate_limited_total", "", ["endpoint"], registry=registry),
        "generation": Histogram(
            "segmind_generation_duration_seconds",
            "",
            ["workflow"],
            buckets=(1, 2, 5, 10, 20, 30, 60, 120),
            registry=registry,
        ),
        "e2e": Histogram(
            "segmind_end_to_end_seconds",
            "",
            ["workflow"],
            buckets=(0.1, 1, 5, 10, 20, 30, 60, 120),
            registry=registry,
        ),
        "polls": Histogram(
            "segmind_polls_per_job",
            "",
            ["workflow"],
            buckets=(0, 1, 2, 3, 4, 5, 6, 8, 10),
            registry=registry,
        ),
        "in_flight": Gauge("segmind_jobs_in_flight", "", ["workflow"], registry=registry),
        "oldest": Gauge("segmind_oldest_job_age_seconds", "", ["workflow"], registry=registry),
        "paid": Gauge("segmind_credits_remaining", "", registry=registry),
        "free": Gauge("segmind_credits_free_remaining", "", registry=registry),
        "updated": Gauge("segmind_credits_updated_timestamp_seconds", "", registry=registry),
        "reserved": Gauge("segmind_credits_reserved_usd", "", registry=registry),
        "tokens": Gauge("segmind_rate_limit_tokens_per_minute", "", registry=registry),
        "queues": Gauge("segmind_queue_messages", "", ["queue"], registry=registry),
    }
    m["jobs"].labels("stock-video", "COMPLETED").inc(3)
    m["jobs"].labels("stock-video", "FAILED").inc()
    m["jobs"].labels("sketch-maker", "COMPLETED").inc(2)
    m["jobs"].labels("unknown", "REJECTED").inc()
    m["errors"].labels("stock-video", "generation_failed").inc()
    m["errors"].labels("unknown", "unknown_workflow").inc()
    for _ in range(3):
        m["spent"].labels("stock-video").inc(0.6676)
    m["spent"].labels("sketch-maker").inc(0.2012)
    m["http"].labels("submit", "200").inc(6)
    m["http"].labels("submit", "429").inc(2)
    m["http"].labels("poll", "200").inc(12)
    m["limited"].labels("submit").inc(2)
    for seconds in (12, 18, 25):
        m["generation"].labels("stock-video").observe(seconds)
    for seconds in (15, 20, 40):
        m["e2e"].labels("stock-video").observe(seconds)
    for polls in (3, 5, 4):
        m["polls"].labels("stock-video").observe(polls)
    m["in_flight"].labels("stock-video").set(2)
    m["in_flight"].labels("sketch-maker").set(0)
    m["oldest"].labels("stock-video").set(42)
    m["oldest"].labels("sketch-maker").set(0)
    m["paid"].set(100.5)
    m["free"].set(2.5)
    m["updated"].set(1_700_000_000)
    m["reserved"].set(1.3352)
    m["tokens"].set(60)
    m["queues"].labels("segmind.requests").set(5)
    m["queues"].labels("segmind.requests.XQ").set(1)
    m["queues"].labels("segmind.polls.DQ").set(3)
    return m


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    registry = CollectorRegistry()
    served = Endpoint("", registry, _record(registry))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = served.answer or (200, generate_latest(registry))
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"


def test_status_once_json_reports_what_was_recorded(endpoint: Endpoint) -> None:
    result = runner.invoke(app, ["status", "--url", endpoint.url, "--once", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["interval_s"] is None
    assert data["credits"] == {
        "paid_usd": 100.5,
        "free_usd": 2.5,
        "reserved_usd": 1.3352,
        "updated_at": 1_700_000_000,
        "spent_usd": pytest.approx(3 * 0.6676 + 0.2012),
        "spend_rate_usd_per_h": None,
        "time_to_empty_s": None,
    }
    workflows = {w["workflow"]: w for w in data["workflows"]}
    assert list(workflows) == ["sketch-maker", "stock-video", "unknown"]
    stock = workflows["stock-video"]
    assert stock["ended"] == {"COMPLETED": 3, "FAILED": 1, "TIMED_OUT": 0, "REJECTED": 0}
    assert stock["in_flight"] == 2
    assert stock["oldest_job_age_s"] == 42
    assert stock["spent_usd"] == pytest.approx(3 * 0.6676)
    assert stock["throughput_per_min"] is None
    # generation 12, 18, 25 in buckets (10, 20], (10, 20], (20, 30]
    assert stock["generation_p50_s"] == pytest.approx(10 + 10 * 1.5 / 2)
    assert stock["generation_p95_s"] == pytest.approx(20 + 10 * 0.85)
    # end to end 15, 20, 40 in (10, 20], (10, 20], (30, 60]
    assert stock["end_to_end_p50_s"] == pytest.approx(17.5)
    assert stock["end_to_end_p95_s"] == pytest.approx(30 + 30 * 0.85)
    assert stock["polls_per_job"] == pytest.approx(4.0)
    assert workflows["sketch-maker"]["ended"]["COMPLETED"] == 2
    assert workflows["sketch-maker"]["generation_p50_s"] is None
    assert workflows["unknown"]["ended"]["REJECTED"] == 1
    assert data["calls"] == [
        {
            "endpoint": "poll",
            "by_code": {"200": 12},
            "calls": 12,
            "calls_per_min": None,
            "rate_limited_share": 0.0,
        },
        {
            "endpoint": "submit",
            "by_code": {"200": 6, "429": 2},
            "calls": 8,
            "calls_per_min": None,
            "rate_limited_share": 0.25,
        },
    ]
    assert data["rate_limited_share"] == pytest.approx(0.1)
    assert data["rate_limited_window"] == "cumulative"
    assert data["tokens_per_minute"] == 60
    assert data["queues"] == [
        {"queue": "segmind.polls.DQ", "messages": 3, "dead_letter": False},
        {"queue": "segmind.requests", "messages": 5, "dead_letter": False},
        {"queue": "segmind.requests.XQ", "messages": 1, "dead_letter": True},
    ]
    assert data["errors"] == {"generation_failed": 1, "unknown_workflow": 1}


def test_status_once_renders_the_view(endpoint: Endpoint) -> None:
    result = runner.invoke(
        app, ["status", "--once"], env={"METRICS_URL": endpoint.url, "COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    for figure in (
        "stock-video",
        "sketch-maker",
        "$100.50",
        "$2.50",
        "$1.34",
        "segmind.requests.XQ",
        "generation_failed",
        endpoint.url,
    ):
        assert figure in result.output, figure


def test_status_once_exits_1_on_an_unreachable_endpoint() -> None:
    url = _closed_port_url()
    result = runner.invoke(app, ["status", "--url", url, "--once"])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: cannot read {url}: ")
    assert result.output.count("\n") == 1
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ((200, b"<html><body>hello</body></html>"), "not Prometheus text"),
        ((404, b"not here"), "HTTP 404"),
    ],
)
def test_status_once_exits_1_when_the_answer_is_not_metrics(
    endpoint: Endpoint, answer: tuple[int, bytes], message: str
) -> None:
    endpoint.answer = answer
    result = runner.invoke(app, ["status", "--url", endpoint.url, "--once", "--json"])
    assert result.exit_code == 1
    assert endpoint.url in result.output
    assert message in result.output
    assert result.output.count("\n") == 1


def test_status_json_needs_once() -> None:
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 2
    assert "--json needs --once" in result.output


def test_the_live_view_computes_rates_between_scrapes(endpoint: Endpoint) -> None:
    now = [1000.0]

    def sleep(seconds: float) -> None:
        # 30 s pass, in which 3 more jobs end costing $1.50 and one submit is answered 429.
        now[0] += 30.0
        endpoint.metrics["jobs"].labels("stock-video", "COMPLETED").inc(3)
        endpoint.metrics["spent"].labels("stock-video").inc(1.5)
        endpoint.metrics["http"].labels("submit", "200").inc(3)
        endpoint.metrics["http"].labels("submit", "429").inc()
        endpoint.metrics["limited"].labels("submit").inc()

    console = Console(width=200, record=True)
    code = run_status(
        endpoint.url,
        interval_s=30.0,
        once=False,
        as_json=False,
        console=console,
        errors=console,
        iterations=2,
        clock=lambda: now[0],
        sleep=sleep,
    )
    assert code == 0
    view = console.export_text()
    assert "rates over 30.0s" in view
    assert "429 share 25.0% (last interval)" in view
    assert "$180.00" in view  # $1.50 in 30 s
    # $103 at $180/h
    assert format_duration(103 / 180 * 3600) in view
    stock = next(line for line in view.splitlines() if line.strip().startswith("stock-video"))
    assert "6.00" in stock  # 3 jobs in 30 s


def test_the_live_view_shows_an_error_and_goes_on() -> None:
    url = _closed_port_url()
    console = Console(width=200, record=True)
    sleeps: list[float] = []
    code = run_status(
        url,
        interval_s=2.0,
        once=False,
        as_json=False,
        console=console,
        errors=console,
        iterations=2,
        sleep=sleeps.append,
    )
    assert code == 0
    assert len(sleeps) == 1
    assert f"error: cannot read {url}" in console.export_text()


def test_scrape_names_the_url() -> None:
    url = _closed_port_url()
    with pytest.raises(StatusError, match=re.escape(f"cannot read {url}: ")):
        scrape(url, timeout_s=2.0)
    with pytest.raises(StatusError, match=re.escape("cannot read ftp://x/metrics: ")):
        scrape("ftp://x/metrics", timeout_s=2.0)


def test_importing_the_cli_does_not_import_prometheus_client() -> None:
    code = "import console.cli, sys; assert 'prometheus_client' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_ctrl_c_ends_the_live_view_with_0(endpoint: Endpoint) -> None:
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    console = Console(width=200, record=True)
    code = run_status(
        endpoint.url,
        interval_s=2.0,
        once=False,
        as_json=False,
        console=console,
        errors=console,
        sleep=interrupt,
    )
    assert code == 0
    assert "stock-video" in console.export_text()
