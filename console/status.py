"""``segmind-queue status``: the numbers of a worker's metrics endpoint, at a glance.

The metric names and labels are those of docs/metrics.md. The parts:

- ``fetch`` (I/O): the endpoint's text, or ``StatusError``.
- ``parse_metrics`` (pure): Prometheus text to ``Samples``, or ``StatusError``.
- ``summarize`` (pure): one scrape, and the previous one when there is one, to a
  ``StatusSummary``. Counters and histograms are summed over series; fleet gauges (every
  worker reports the same value) are aggregated with ``max``. Rates need two scrapes:
  with one, only the cumulative figures are known and every rate is ``None``.
- ``histogram_quantile`` (pure): PromQL's estimate of a quantile from cumulative buckets.
- ``render``: a ``StatusSummary`` as a rich renderable; ``run_status``: the command's loop.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from producers import wire

#: The endpoint ``segmind-queue worker`` serves (METRICS_PORT 9191).
DEFAULT_URL: Final = "http://127.0.0.1:9191/metrics"
#: The ended statuses the view counts, in its column order.
STATUSES: Final = ("COMPLETED", "FAILED", "TIMED_OUT", "REJECTED")
#: Shown for a figure that is not known (yet).
MISSING: Final = "—"

Labels = tuple[tuple[str, str], ...]
"""A series' labels as sorted ``(name, value)`` pairs."""


class StatusError(Exception):
    """The metrics endpoint could not be read, or did not answer with Prometheus text.

    Its message is one line, meant for the user as it is.
    """


@dataclass(frozen=True)
class Samples:
    """The samples of one scrape: sample name (``segmind_jobs_total``,
    ``segmind_end_to_end_seconds_bucket``, ...) to its ``(labels, value)`` pairs, in the
    order of the exposition (a series listed twice keeps both)."""

    by_name: Mapping[str, tuple[tuple[Labels, float], ...]]

    def series(self, name: str) -> tuple[tuple[Labels, float], ...]:
        """The ``(labels, value)`` pairs of the samples called ``name`` (none: empty)."""
        return self.by_name.get(name, ())

    def __len__(self) -> int:
        return sum(len(pairs) for pairs in self.by_name.values())


@dataclass(frozen=True)
class CreditsStatus:
    """The account's credits and the fleet's spend, in USD.

    ``paid_usd``/``free_usd`` are ``None`` until the fleet has read them (their timestamp is
    0 or absent); ``time_to_empty_s`` is ``(paid + free) / spend rate``, ``None`` when the
    rate is 0 or unknown.
    """

    paid_usd: float | None
    free_usd: float | None
    reserved_usd: float | None
    updated_at: float | None
    spent_usd: float
    spend_rate_usd_per_h: float | None
    time_to_empty_s: float | None


@dataclass(frozen=True)
class WorkflowStatus:
    """One workflow's jobs. Counts and latencies are since the workers started; the rates
    are over the last interval (``None`` until two scrapes exist); ``None`` elsewhere means
    the endpoint reports nothing for it."""

    workflow: str
    in_flight: float | None
    ended: dict[str, float]
    throughput_per_min: float | None
    spent_usd: float
    spend_rate_usd_per_h: float | None
    generation_p50_s: float | None
    generation_p95_s: float | None
    end_to_end_p50_s: float | None
    end_to_end_p95_s: float | None
    polls_per_job: float | None
    oldest_job_age_s: float | None


@dataclass(frozen=True)
class EndpointCalls:
    """Calls to one Segmind endpoint (``submit``, ``poll``, ``credits``): counts by ``code``
    since the workers started, the rate and the share answered 429 (over the last interval
    when there is one, else cumulative; ``None`` when no call was made in it)."""

    endpoint: str
    by_code: dict[str, float]
    calls: float
    calls_per_min: float | None
    rate_limited_share: float | None


@dataclass(frozen=True)
class QueueStatus:
    """Messages ready in one queue; ``dead_letter`` for the ``.XQ`` queues."""

    queue: str
    messages: float
    dead_letter: bool


@dataclass(frozen=True)
class StatusSummary:
    """Everything the view shows, computed from one or two scrapes.

    ``interval_s`` is the time between the two scrapes the rates are computed over
    (``None``: one scrape, no rates). ``rate_limited_share`` is the share of all Segmind
    calls answered 429, over ``rate_limited_window`` (``interval`` or ``cumulative``).
    ``errors`` counts the ended jobs by their result's error code.
    """

    interval_s: float | None
    credits: CreditsStatus
    workflows: tuple[WorkflowStatus, ...]
    calls: tuple[EndpointCalls, ...]
    rate_limited_share: float | None
    rate_limited_window: Literal["interval", "cumulative"]
    tokens_per_minute: float | None
    queues: tuple[QueueStatus, ...]
    errors: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data (the keys of the dataclasses, always all present)."""
        return dataclasses.asdict(self)


# -- parsing -------------------------------------------------------------------------------


def parse_metrics(text: str) -> Samples:
    """Parse a Prometheus text exposition (what ``/metrics`` serves).

    Args:
        text: the exposition; an empty one (a worker that recorded nothing yet) is valid.

    Returns:
        Every sample, NaN values left out (they carry no figure).

    Raises:
        StatusError: the text is not Prometheus' text format (an HTML page, JSON, ...).
    """
    found: dict[str, list[tuple[Labels, float]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if math.isnan(sample.value):
                    continue
                labels = tuple(sorted(sample.labels.items()))
                found.setdefault(sample.name, []).append((labels, float(sample.value)))
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise StatusError(f"not Prometheus text ({detail})") from None
    return Samples({name: tuple(pairs) for name, pairs in found.items()})


# -- quantiles -----------------------------------------------------------------------------


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Estimate the ``q`` quantile from cumulative buckets, as PromQL's
    ``histogram_quantile`` does.

    The quantile's rank is found among the cumulative counts and interpolated linearly
    inside its bucket (the first bucket starts at 0 unless its bound is negative, in which
    case that bound is returned). A rank in the ``+Inf`` bucket returns the highest finite
    bound. Counts that decrease (a bucket scraped mid-update) are raised to be monotonic.
    ``q = 0`` gives the lower bound of the first non-empty bucket.

    Args:
        q: the quantile, 0 to 1.
        buckets: ``(upper bound, cumulative count)`` pairs in any order, ``+Inf`` included.

    Returns:
        The estimate, or ``None`` with no observation, no ``+Inf`` bucket or no finite one.

    Raises:
        ValueError: ``q`` is not within [0, 1].
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], not {q}")
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    counts: list[float] = []
    for _, count in ordered:
        counts.append(max(count, counts[-1]) if counts else count)
    observations = counts[-1]
    if observations <= 0:
        return None
    rank = q * observations
    last = len(ordered) - 1
    index = next(
        (i for i in range(last) if counts[i] >= rank and counts[i] > 0),
        last,
    )
    if index == last:
        return ordered[-2][0]
    upper = ordered[index][0]
    if index == 0 and upper <= 0:
        return upper
    lower = 0.0
    in_bucket = counts[index]
    if index > 0:
        lower = ordered[index - 1][0]
        in_bucket -= counts[index - 1]
        rank -= counts[index - 1]
    return lower + (upper - lower) * (rank / in_bucket)


# -- summarizing ---------------------------------------------------------------------------


def _label(labels: Labels, name: str) -> str:
    return next((value for key, value in labels if key == name), "")


def _merged(samples: Samples, name: str) -> dict[Labels, float]:
    """Counter series by labels; a series listed twice is added up."""
    merged: dict[Labels, float] = {}
    for labels, value in samples.series(name):
        merged[labels] = merged.get(labels, 0.0) + value
    return merged


def _sum_by(series: Mapping[Labels, float], by: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    totals: dict[tuple[str, ...], float] = {}
    for labels, value in series.items():
        key = tuple(_label(labels, name) for name in by)
        totals[key] = totals.get(key, 0.0) + value
    return totals


def _gauge(samples: Samples, name: str, by: tuple[str, ...] = ()) -> dict[tuple[str, ...], float]:
    """A fleet gauge by the ``by`` labels, the ``max`` over any other label (every process
    reports the same fleet-wide value)."""
    found: dict[tuple[str, ...], float] = {}
    for labels, value in samples.series(name):
        key = tuple(_label(labels, label) for label in by)
        found[key] = max(value, found.get(key, value))
    return found


def _increase(current: float, previous: float | None) -> float:
    """A counter's increase between two scrapes; a value that went down means the counter
    restarted from 0, so all of the new value is the increase (as Prometheus does)."""
    if previous is None or current < previous:
        return current
    return current - previous


@dataclass(frozen=True)
class _Counter:
    """A counter summed by some labels: its totals, and its increase since the previous
    scrape (``None`` without one)."""

    totals: dict[tuple[str, ...], float]
    increases: dict[tuple[str, ...], float] | None

    def total(self, key: tuple[str, ...]) -> float:
        return self.totals.get(key, 0.0)

    def increase(self, key: tuple[str, ...]) -> float | None:
        return None if self.increases is None else self.increases.get(key, 0.0)


def _counter(
    current: Samples, previous: Samples | None, name: str, by: tuple[str, ...]
) -> _Counter:
    """The counter ``name`` summed by the ``by`` labels, with its increase since
    ``previous`` when there is one."""
    now = _merged(current, name)
    increases = None
    if previous is not None:
        before = _merged(previous, name)
        # Per series, then summed: a reset of one process's series is that series' own.
        increases = _sum_by(
            {labels: _increase(value, before.get(labels)) for labels, value in now.items()}, by
        )
    return _Counter(_sum_by(now, by), increases)


def _buckets(samples: Samples, name: str, by: str) -> dict[str, list[tuple[float, float]]]:
    """A histogram's cumulative buckets by the ``by`` label, summed over other labels."""
    summed: dict[str, dict[float, float]] = {}
    for labels, value in samples.series(f"{name}_bucket"):
        try:
            bound = float(_label(labels, "le"))
        except ValueError:
            continue
        per_bound = summed.setdefault(_label(labels, by), {})
        per_bound[bound] = per_bound.get(bound, 0.0) + value
    return {key: sorted(bounds.items()) for key, bounds in summed.items()}


def _per(amount: float | None, elapsed_s: float | None, unit_s: float) -> float | None:
    if amount is None or elapsed_s is None:
        return None
    return amount / elapsed_s * unit_s


def _share(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return part / whole


def summarize(current: Samples, previous: Samples | None, elapsed_s: float | None) -> StatusSummary:
    """Compute the view's figures from a scrape and, for the rates, the one before.

    Args:
        current: the latest scrape.
        previous: the scrape before it, or ``None`` (the first one).
        elapsed_s: seconds between the two scrapes; the rates are ``None`` when it or
            ``previous`` is ``None`` or it is not positive.

    Returns:
        The summary. Workflows, endpoints and queues are sorted by name; counts, latency
        quantiles (``histogram_quantile`` over the cumulative buckets) and polls per job
        (sum / count) are since the workers started. Never raises on missing metrics:
        what the endpoint does not report is 0 (counters) or ``None`` (gauges, quantiles).
    """
    if previous is None or elapsed_s is None or elapsed_s <= 0:
        previous, elapsed_s = None, None

    jobs = _counter(current, previous, "segmind_jobs_total", ("workflow", "status"))
    spent = _counter(current, previous, "segmind_credits_spent_usd_total", ("workflow",))
    # A fleet gauge per (workflow, tenant): the max over processes, then the tenants added.
    in_flight: dict[tuple[str, ...], float] = {}
    for (workflow, _tenant), count in _gauge(
        current, "segmind_jobs_in_flight", ("workflow", "tenant")
    ).items():
        in_flight[(workflow,)] = in_flight.get((workflow,), 0.0) + count
    oldest = _gauge(current, "segmind_oldest_job_age_seconds", ("workflow",))
    generation = _buckets(current, "segmind_generation_duration_seconds", "workflow")
    end_to_end = _buckets(current, "segmind_end_to_end_seconds", "workflow")
    polls_sum = _sum_by(_merged(current, "segmind_polls_per_job_sum"), ("workflow",))
    polls_count = _sum_by(_merged(current, "segmind_polls_per_job_count"), ("workflow",))

    names = (
        {key[0] for key in jobs.totals}
        | {key[0] for key in spent.totals}
        | {key[0] for key in in_flight}
        | {key[0] for key in oldest}
        | set(generation)
        | set(end_to_end)
        | {key[0] for key in polls_count}
    )
    workflows: list[WorkflowStatus] = []
    for name in sorted(names):
        key = (name,)
        ended_keys = [k for k in jobs.totals if k[0] == name]
        ended = {status: jobs.total((name, status)) for status in STATUSES}
        ended.update({k[1]: jobs.total(k) for k in ended_keys})
        ended_increase = (
            None if jobs.increases is None else sum(jobs.increases.get(k, 0.0) for k in ended_keys)
        )
        workflows.append(
            WorkflowStatus(
                workflow=name,
                in_flight=in_flight.get(key),
                ended=ended,
                throughput_per_min=_per(ended_increase, elapsed_s, 60.0),
                spent_usd=spent.total(key),
                spend_rate_usd_per_h=_per(spent.increase(key), elapsed_s, 3600.0),
                generation_p50_s=histogram_quantile(0.5, generation.get(name, [])),
                generation_p95_s=histogram_quantile(0.95, generation.get(name, [])),
                end_to_end_p50_s=histogram_quantile(0.5, end_to_end.get(name, [])),
                end_to_end_p95_s=histogram_quantile(0.95, end_to_end.get(name, [])),
                polls_per_job=_share(polls_sum.get(key), polls_count.get(key)),
                oldest_job_age_s=oldest.get(key),
            )
        )

    spend_increase = None if spent.increases is None else sum(spent.increases.values())
    spend_rate = _per(spend_increase, elapsed_s, 3600.0)
    updated_at = _gauge(current, "segmind_credits_updated_timestamp_seconds").get(())
    never_read = updated_at is not None and updated_at <= 0
    paid = None if never_read else _gauge(current, "segmind_credits_remaining").get(())
    free = None if never_read else _gauge(current, "segmind_credits_free_remaining").get(())
    balance = None if paid is None and free is None else (paid or 0.0) + (free or 0.0)
    credits = CreditsStatus(
        paid_usd=paid,
        free_usd=free,
        reserved_usd=_gauge(current, "segmind_credits_reserved_usd").get(()),
        updated_at=None if never_read else updated_at,
        spent_usd=sum(spent.totals.values()),
        spend_rate_usd_per_h=spend_rate,
        time_to_empty_s=(
            None if balance is None or not spend_rate else max(balance, 0.0) / spend_rate * 3600
        ),
    )

    http = _counter(current, previous, "segmind_http_requests_total", ("endpoint", "code"))
    limited = _counter(current, previous, "segmind_rate_limited_total", ("endpoint",))
    window: Literal["interval", "cumulative"] = "cumulative" if previous is None else "interval"

    def calls_of(endpoint: str, values: Mapping[tuple[str, ...], float]) -> float:
        return sum(value for key, value in values.items() if key[0] == endpoint)

    calls: list[EndpointCalls] = []
    for endpoint in sorted({key[0] for key in http.totals}):
        by_code = {
            key[1]: value for key, value in sorted(http.totals.items()) if key[0] == endpoint
        }
        total = sum(by_code.values())
        if http.increases is None:
            share = _share(limited.total((endpoint,)), total)
            rate = None
        else:
            recent = calls_of(endpoint, http.increases)
            share = _share(limited.increase((endpoint,)), recent)
            rate = _per(recent, elapsed_s, 60.0)
        calls.append(EndpointCalls(endpoint, by_code, total, rate, share))
    if http.increases is None or limited.increases is None:
        overall = _share(sum(limited.totals.values()), sum(http.totals.values()))
    else:
        overall = _share(sum(limited.increases.values()), sum(http.increases.values()))

    queues = tuple(
        QueueStatus(key[0], value, wire.dead_letter_source(key[0]) is not None)
        for key, value in sorted(_gauge(current, "segmind_queue_messages", ("queue",)).items())
    )
    errors = _sum_by(_merged(current, "segmind_job_errors_total"), ("code",))

    return StatusSummary(
        interval_s=elapsed_s,
        credits=credits,
        workflows=tuple(workflows),
        calls=tuple(calls),
        rate_limited_share=overall,
        rate_limited_window=window,
        tokens_per_minute=_gauge(current, "segmind_rate_limit_tokens_per_minute").get(()),
        queues=queues,
        errors={key[0]: value for key, value in sorted(errors.items(), key=lambda kv: kv[0])},
    )


# -- I/O -----------------------------------------------------------------------------------


def fetch(url: str, timeout_s: float = 5.0) -> str:
    """GET the metrics endpoint's text.

    Args:
        url: the endpoint, ``http://host:port/metrics``.
        timeout_s: the limit on connecting and on each read.

    Raises:
        StatusError: an invalid URL, no answer (refused, timeout, ...) or a status other
            than 200; the message names the URL and is one line.
    """
    try:
        response = httpx.get(url, timeout=timeout_s)
    except httpx.InvalidURL as exc:
        raise StatusError(f"{url}: invalid URL ({exc})") from None
    except httpx.HTTPError as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise StatusError(f"cannot read {url}: {detail}") from None
    if response.status_code != 200:
        raise StatusError(f"cannot read {url}: HTTP {response.status_code}")
    return response.text


def scrape(url: str, timeout_s: float = 5.0) -> Samples:
    """``fetch`` then ``parse_metrics``.

    Raises:
        StatusError: as ``fetch``, or the answer is not Prometheus text (the message
            names the URL).
    """
    text = fetch(url, timeout_s)
    try:
        return parse_metrics(text)
    except StatusError as exc:
        raise StatusError(f"{url}: {exc}") from None


# -- rendering -----------------------------------------------------------------------------


def _number(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def _usd(value: float | None) -> str:
    return MISSING if value is None else f"${value:,.2f}"


def _rate(value: float | None, unit: str) -> str:
    return MISSING if value is None else f"{value:.2f}{unit}"


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1%}"


def format_duration(seconds: float | None) -> str:
    """``12.3s``, ``4m05s``, ``2h03m``, ``3d04h`` (six characters at most below 100 days);
    ``—`` for ``None``."""
    if seconds is None:
        return MISSING
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _table(title: str | None = None) -> Table:
    """A compact table: a header rule, no blank edge lines."""
    return Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 0, 0, 1),
    )


def _credits_table(summary: StatusSummary, now: float) -> Table:
    credits = summary.credits
    read = "never read"
    if credits.updated_at is not None:
        clock = datetime.fromtimestamp(credits.updated_at).strftime("%H:%M:%S")
        read = f"read {clock}, {format_duration(max(0.0, now - credits.updated_at))} ago"
    table = _table(f"Credits (USD, {read})")
    for column in ("paid", "free", "reserved", "spent", "spend/h", "empty in"):
        table.add_column(column, justify="right")
    table.add_row(
        _usd(credits.paid_usd),
        _usd(credits.free_usd),
        _usd(credits.reserved_usd),
        _usd(credits.spent_usd),
        _usd(credits.spend_rate_usd_per_h),
        format_duration(credits.time_to_empty_s),
    )
    return table


#: The jobs table's header of each status.
_STATUS_HEADERS: Final = {
    "COMPLETED": "completed",
    "FAILED": "failed",
    "TIMED_OUT": "timed\nout",
    "REJECTED": "rejected",
}


def _jobs_table(summary: StatusSummary) -> Table:
    table = _table("Jobs by workflow")
    table.add_column("workflow", style="bold", no_wrap=True)
    for column in ("in\nflight", *_STATUS_HEADERS.values(), "jobs/\nmin", "oldest"):
        table.add_column(column, justify="right", no_wrap=True)
    for item in summary.workflows:
        counts = [item.ended.get(status, 0.0) for status in STATUSES]
        table.add_row(
            Text(item.workflow),
            _number(item.in_flight),
            *(
                Text(_number(count), style="red" if count and status != "COMPLETED" else "")
                for status, count in zip(STATUSES, counts, strict=True)
            ),
            _rate(item.throughput_per_min, ""),
            format_duration(item.oldest_job_age_s),
        )
    return table


def _latency_table(summary: StatusSummary) -> Table:
    table = _table("Latency (since start) and spend by workflow")
    table.add_column("workflow", style="bold", no_wrap=True)
    for column in (
        "gen\np50",
        "gen\np95",
        "e2e\np50",
        "e2e\np95",
        "polls/\njob",
        "spent",
        "spend/h",
    ):
        table.add_column(column, justify="right", no_wrap=True)
    for item in summary.workflows:
        table.add_row(
            Text(item.workflow),
            format_duration(item.generation_p50_s),
            format_duration(item.generation_p95_s),
            format_duration(item.end_to_end_p50_s),
            format_duration(item.end_to_end_p95_s),
            _rate(item.polls_per_job, ""),
            _usd(item.spent_usd),
            _usd(item.spend_rate_usd_per_h),
        )
    return table


def _calls_table(summary: StatusSummary) -> Group:
    window = "last interval" if summary.rate_limited_window == "interval" else "cumulative"
    heading = Text(
        f"Segmind calls: 429 share {_percent(summary.rate_limited_share)} ({window}), "
        f"limit {_number(summary.tokens_per_minute)}/min",
        style="bold",
    )
    table = _table()
    table.add_column("endpoint", style="bold", no_wrap=True)
    table.add_column("calls by code")
    table.add_column("calls/min", justify="right")
    table.add_column("429 share", justify="right")
    for item in summary.calls:
        codes = Text()
        for code, count in item.by_code.items():
            if codes:
                codes.append("  ")
            style = "green" if code.startswith("2") else "red" if code == "429" else "yellow"
            codes.append(f"{code}: {_number(count)}", style=style)
        table.add_row(
            Text(item.endpoint),
            codes,
            _rate(item.calls_per_min, ""),
            _percent(item.rate_limited_share),
        )
    return Group(heading, table) if summary.calls else Group(heading)


def _queues_table(summary: StatusSummary) -> Table:
    table = _table("Queues (ready)")
    table.add_column("queue", no_wrap=True)
    table.add_column("messages", justify="right")
    for queue in summary.queues:
        alert = queue.dead_letter and queue.messages > 0
        style = "bold red" if alert else ""
        table.add_row(Text(queue.queue, style=style), Text(_number(queue.messages), style=style))
    return table


def _errors_table(summary: StatusSummary) -> Table:
    table = _table("Errors by code")
    table.add_column("code", no_wrap=True)
    table.add_column("jobs", justify="right")
    for code, count in sorted(summary.errors.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(Text(code), _number(count))
    return table


def render(
    summary: StatusSummary | None,
    *,
    url: str | None = None,
    error: str | None = None,
    now: float | None = None,
) -> RenderableType:
    """The view of a summary: a header line, then credits, jobs, latency and spend,
    Segmind calls, and queues beside errors (the sections with nothing to show left out).

    Args:
        summary: what to show (``None``: nothing scraped yet).
        url: the endpoint, named in the header.
        error: the last scrape's failure, shown above the (older) figures.
        now: the Unix time the credits' age is measured from (default: now).
    """
    parts: list[RenderableType] = []
    header = Text("segmind-queue status", style="bold")
    if url:
        header.append(f"  {url}", style="dim")
    if summary is not None:
        if summary.interval_s is None:
            header.append("  (since start; rates from the next scrape)", style="dim")
        else:
            header.append(f"  (rates over {summary.interval_s:.1f}s)", style="dim")
    parts.append(header)
    if error:
        parts.append(Text(f"error: {error}", style="bold red"))
    if summary is None:
        return Group(*parts)
    parts.append(_credits_table(summary, time.time() if now is None else now))
    if summary.workflows:
        parts += [_jobs_table(summary), _latency_table(summary)]
    else:
        parts.append(Text("No jobs yet.", style="dim"))
    if summary.calls or summary.tokens_per_minute is not None:
        parts.append(_calls_table(summary))
    side: list[Table] = []
    if summary.queues:
        side.append(_queues_table(summary))
    if summary.errors:
        side.append(_errors_table(summary))
    if side:
        row = Table.grid(padding=(0, 4))
        row.add_row(*side)
        parts.append(row)
    return Group(*parts)


# -- the command ---------------------------------------------------------------------------


def summary_json(summary: StatusSummary) -> str:
    """The summary as indented JSON with sorted keys."""
    return json.dumps(summary.as_dict(), sort_keys=True, indent=2, allow_nan=False)


def run_status(
    url: str,
    *,
    interval_s: float,
    once: bool,
    as_json: bool,
    console: Console,
    errors: Console,
    timeout_s: float = 5.0,
    iterations: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run ``segmind-queue status``; its exit code.

    With ``once``: one scrape, printed as the view (or as JSON with ``as_json``) on
    ``console``: 0; or one error line on ``errors``: 1. Otherwise a live view refreshed
    every ``interval_s`` until Ctrl-C (0); a failed scrape is shown in the view and retried
    at the next interval. ``iterations`` stops the live view after that many scrapes,
    ``clock``/``sleep`` replace the time functions (both for tests).
    """
    if once:
        try:
            samples = scrape(url, timeout_s)
        except StatusError as exc:
            errors.print(
                f"error: {exc}", markup=False, emoji=False, highlight=False, soft_wrap=True
            )
            return 1
        summary = summarize(samples, None, None)
        if as_json:
            console.print(
                summary_json(summary), markup=False, emoji=False, highlight=False, soft_wrap=True
            )
        else:
            console.print(render(summary, url=url))
        return 0

    from rich.live import Live

    previous: tuple[Samples, float] | None = None
    summary_now: StatusSummary | None = None
    try:
        with Live(render(None, url=url), console=console, auto_refresh=False) as live:
            for count in itertools.count(1):
                started = clock()
                error = None
                try:
                    samples = scrape(url, timeout_s)
                except StatusError as exc:
                    error = str(exc)
                else:
                    if previous is None:
                        summary_now = summarize(samples, None, None)
                    else:
                        summary_now = summarize(samples, previous[0], started - previous[1])
                    previous = (samples, started)
                live.update(render(summary_now, url=url, error=error), refresh=True)
                if iterations is not None and count >= iterations:
                    break
                sleep(max(0.0, interval_s - (clock() - started)))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how the live view ends
    return 0
