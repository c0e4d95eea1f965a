"""Scraping a target's `/metrics`: once, from a check (`read_target_metrics`), or about every
second during the benchmark into a `MetricsTimeline` (`MetricsScraper`).

The scraper runs on its own thread with blocking `urllib` and a timeout per scrape, so
it never shares, or slows, the load generator's event loop; the thread only sleeps,
waits on the socket and parses a few kilobytes a second. Every body is read up to a
cap, and every failure (timeout, HTTP error, text that is not Prometheus) becomes a
sample with `error`, never an exception: a monitoring gap is a finding, not a crash.
The runner starts it around the benchmark:

    with MetricsScraper(endpoint, origin=run_origin) as scraper:
        ...  # the load
    ctx.scratch["metrics_timeline"] = scraper.timeline
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from checks.load.endpoint import Endpoint, root_url
from checks.readiness.metrics_names import MetricsParseError, MetricsReading, read_metrics
from checks.readiness.probe import ProbeResponse, request
from reports.metrics_timeline import MetricsFollowUp, MetricsSample, MetricsSource, MetricsTimeline, usage_line

DEFAULT_INTERVAL_S = 1.0
SCRAPE_TIMEOUT_S = 5.0
MAX_METRICS_BYTES = 4 * 1024 * 1024  # vLLM's full exposition is a few hundred KiB
MAX_SAMPLES = 3600  # an hour at 1 s; a longer run is thinned to every other sample, interval doubled
UNKNOWN_NAMES = "no metric names of vLLM, SGLang, TGI, llama.cpp's server or Preflight's engine"


TIMELINE_KEY = "metrics_timeline"  # where the runner leaves the MetricsTimeline in CheckContext.scratch
KV_TOLERANCE = 0.01  # KV usage may sit this far above the baseline (a block's rounding)
FOLLOW_UP_DEADLINE_S = 15.0  # how long abandoned requests get to free their slots and blocks
FOLLOW_UP_POLL_S = 0.25


class ScrapeError(Exception):
    """One scrape failed; the message is short enough for a timeline sample."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as an error: following it would send the key to wherever it points."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def fetch_metrics(endpoint: Endpoint, timeout_s: float = SCRAPE_TIMEOUT_S, max_bytes: int = MAX_METRICS_BYTES) -> str:
    """GET `/metrics` with the key (blocking); the body as text, or ScrapeError with the reason."""
    headers = {"Accept": "text/plain"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    req = urllib.request.Request(root_url(endpoint.base_url) + "/metrics", headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout_s) as resp:
            body = resp.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise ScrapeError(f"HTTP {exc.code}") from None
    except TimeoutError:
        raise ScrapeError(f"timeout after {timeout_s:g} s") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise ScrapeError(f"{type(reason).__name__}: {reason}"[:200]) from None
    if len(body) > max_bytes:
        raise ScrapeError(f"body over {max_bytes} bytes")
    return body.decode("utf-8", errors="replace")


class MetricsScraper:
    """Scrape `/metrics` every `interval_s` on a thread between `start()` and `stop()`.

    `origin` is the run clock's zero (a `time.perf_counter()` value, as the load
    generator's), so sample times line up with request records; default: `start()`.
    A 404 or a refused key ends scraping early with a `note` (the answer will not
    change); any other failure is kept as a sample and scraping goes on.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        interval_s: float = DEFAULT_INTERVAL_S,
        *,
        origin: float | None = None,
        timeout_s: float = SCRAPE_TIMEOUT_S,
        max_samples: int = MAX_SAMPLES,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0:
            raise ValueError("interval_s and timeout_s must be positive")
        if max_samples < 2:
            raise ValueError("max_samples must be at least 2")
        self.endpoint = endpoint
        self.interval_s = interval_s
        self.origin = origin
        self.timeout_s = timeout_s
        self.max_samples = max_samples
        self._source: MetricsSource | None = None
        self._samples: list[MetricsSample] = []
        self._note: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._first = threading.Event()  # set once the first scrape is in (or scraping ended)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this MetricsScraper was already started; make a new one per run")
        if self.origin is None:
            self.origin = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="preflight-metrics-scrape", daemon=True)
        self._thread.start()

    def wait_first(self, timeout_s: float | None = None) -> bool:
        """Block until the first scrape is in (a baseline taken before the load starts); False on timeout."""
        return self._first.wait(self.timeout_s + 1.0 if timeout_s is None else timeout_s)

    def stop(self) -> MetricsTimeline:
        """Take a last scrape, stop (waiting at most one scrape's timeout) and return the timeline."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2 * self.timeout_s + 1.0)  # the scrape under way, then the last one
        return self.timeline

    def __enter__(self) -> MetricsScraper:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def timeline(self) -> MetricsTimeline:
        """What was scraped so far (a copy: safe to read while the thread runs)."""
        with self._lock:
            note = self._note
            if self._source is None and note is None:
                note = "no scrape succeeded" if self._samples else "no scrape was taken"
            return MetricsTimeline(
                source=self._source, interval_s=self.interval_s, samples=list(self._samples), note=note
            )

    def _run(self) -> None:
        """Scrape until stopped, and once more on the way out: the counters then span the whole run."""
        last = False
        while not last:
            last = self._stop.is_set()
            began = time.perf_counter()
            sample, final_note = self._scrape(began - (self.origin or began))
            with self._lock:
                if sample is not None:
                    self._keep(sample)
                if final_note is not None:
                    self._note = final_note
                    self._first.set()
                    return
            self._first.set()
            if not last:
                self._stop.wait(max(0.0, self.interval_s - (time.perf_counter() - began)))

    def _scrape(self, t_s: float) -> tuple[MetricsSample | None, str | None]:
        """One scrape as (sample, None), or (None, note) when scraping should end."""
        try:
            reading = read_metrics(fetch_metrics(self.endpoint, self.timeout_s))
        except ScrapeError as exc:
            status = str(exc)
            if status == "HTTP 404":
                return None, "GET /metrics answered 404: the server exports no metrics (llama.cpp needs --metrics)"
            if status in ("HTTP 401", "HTTP 403"):
                return None, f"GET /metrics answered {status[5:]} with the key: metrics are not readable with it"
            return MetricsSample(t_s=t_s, error=status), None
        except MetricsParseError as exc:
            return MetricsSample(t_s=t_s, error=str(exc)), None
        if reading.source is None:
            return None, f"GET /metrics answered {reading.families} metric families but {UNKNOWN_NAMES}"
        if self._source is None:
            self._source = reading.source
        elif reading.source != self._source:
            return MetricsSample(t_s=t_s, error=f"names changed from {self._source} to {reading.source}"), None
        return reading.sample(t_s), None

    def _keep(self, sample: MetricsSample) -> None:
        self._samples.append(sample)
        if len(self._samples) >= self.max_samples:
            self._samples = self._samples[::2]
            self.interval_s *= 2
            self._note = f"thinned to every other sample at {self.interval_s:g} s"


@dataclass(frozen=True, slots=True)
class TargetMetrics:
    """One `/metrics` read from a check: the response, and the reading or why there is none."""

    response: ProbeResponse
    reading: MetricsReading | None
    problem: str | None  # None when `reading` is set


async def read_target_metrics(endpoint: Endpoint, timeout_s: float = SCRAPE_TIMEOUT_S) -> TargetMetrics:
    """GET `/metrics` with the key (async, for checks) and map it; never raises for what the server does."""
    resp = await request(endpoint, "GET", "/metrics", timeout_s=timeout_s, max_body_bytes=MAX_METRICS_BYTES)
    if resp.status is None:
        return TargetMetrics(resp, None, f"GET /metrics failed: {resp.error}")
    if resp.status != 200:
        return TargetMetrics(resp, None, f"GET /metrics answered {resp.status}")
    if resp.truncated:
        return TargetMetrics(resp, None, f"GET /metrics sent over {MAX_METRICS_BYTES} bytes")
    try:
        reading = read_metrics(resp.text)
    except MetricsParseError as exc:
        return TargetMetrics(resp, None, f"GET /metrics: {exc}")
    if reading.source is None:
        return TargetMetrics(resp, reading, f"GET /metrics has {reading.families} metric families but {UNKNOWN_NAMES}")
    return TargetMetrics(resp, reading, None)


def at_baseline(running: float | None, kv: float | None, running0: float | None, kv0: float | None) -> bool:
    """Whether a reading is back where the baseline was: no more running requests and no more KV-cache
    usage (within a block's rounding); a figure the baseline lacks is not judged."""
    return (running0 is None or (running is not None and running <= running0)) and (
        kv0 is None or (kv is not None and kv <= kv0 + KV_TOLERANCE)
    )


def follow_up(
    scraper: MetricsScraper,
    since_s: float,
    deadline_s: float = FOLLOW_UP_DEADLINE_S,
    poll_s: float = FOLLOW_UP_POLL_S,
) -> MetricsFollowUp | None:
    """After a load that abandoned requests, watch the running scraper's samples (taken after `since_s` on
    its clock) until running requests and KV-cache usage are back at the first sample's values, or the
    deadline passes. None when the scrapes gave no baseline to compare with (no metrics, or neither figure)."""
    ok = [s for s in scraper.timeline.samples if s.error is None]
    if not ok or (ok[0].running is None and ok[0].kv_cache_usage is None):
        return None
    running0, kv0 = ok[0].running, ok[0].kv_cache_usage
    start = time.perf_counter()
    last = "no reading after the load"
    while True:
        after = [s for s in scraper.timeline.samples if s.error is None and s.t_s >= since_s]
        if after:
            s = after[-1]
            last = usage_line(s.running, s.kv_cache_usage)
            if at_baseline(s.running, s.kv_cache_usage, running0, kv0):
                waited = max(0.0, s.t_s - since_s)
                return MetricsFollowUp(
                    baseline=usage_line(running0, kv0), last=last, recovered_after_s=waited, deadline_s=deadline_s
                )
        if time.perf_counter() - start > deadline_s:
            return MetricsFollowUp(baseline=usage_line(running0, kv0), last=last, deadline_s=deadline_s)
        time.sleep(poll_s)
