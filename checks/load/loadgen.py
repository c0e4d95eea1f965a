"""The load generator: drive an endpoint with a workload under one load profile.

Order of a run: warm-up requests (recorded, flagged, excluded from the summary), then
the measured window, bounded by a request count and/or a duration. Concurrency
profiles keep N requests in flight; rate profiles send on a precomputed schedule
(`checks.load.profiles`), optionally capped by `max_concurrency`, and the wait for a slot
is queue time, never latency. While it runs the generator watches itself: how late it
became ready against the schedule, and how late its event loop wakes up. A run whose
client could not keep up is marked invalid rather than reported as the server's
latency. A rate run whose queue and latency grow without bound is stopped early,
and says so, as is a run whose server stops accepting connections (a run of
connection failures, with no success between them). Cancel (a `threading.Event`, so a
dashboard thread can set it) stops cleanly: in-flight requests become CANCELLED
records, finished ones are kept.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from checks.load.client import RequestOptions, StreamClient
from checks.load.endpoint import Endpoint
from checks.load.profiles import LoadProfile, arrival_offsets
from checks.load.prompts import Conversation, PromptRequest
from checks.load.tokenizer import TextTokenizer
from reports.benchmark_result import WorkerDoc
from reports.records import NOT_TIMED, ErrorKind, RequestRecord
from reports.stats import percentile

LOOP_PROBE_INTERVAL_S = 0.01
SCHEDULE_LAG_LIMIT_S = 0.05  # p99 lateness against the schedule that invalidates a rate run
LOOP_LAG_LIMIT_S = 0.025  # p99 event-loop oversleep that invalidates any run (timestamps that late)
SATURATION_WINDOW = 5  # consecutive 1-s samples of growing backlog before stopping early
PROGRESS_INTERVAL_S = 0.25
CONNECTION_FAILURE_LIMIT = 16  # connection failures in a row (no success between) that end a run


@dataclass(frozen=True, slots=True, kw_only=True)
class RunLimits:
    """When the measured window ends, plus warm-up. At least one bound is required."""

    requests: int | None = None
    duration_s: float | None = None
    warmup_requests: int = 0
    seed: int = 0
    stop_when_saturated: bool = True
    abandon_rate: float = 0.0  # share of measured requests the client gives up on (a cancellation load)
    abandon_after_s: float = 0.5  # ... this long after sending each of them

    def __post_init__(self) -> None:
        if self.requests is None and self.duration_s is None:
            raise ValueError("bound the run: give a request count, a duration, or both")
        if self.requests is not None and self.requests < 1:
            raise ValueError("requests must be at least 1")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError("duration must be above 0 seconds")
        if self.warmup_requests < 0:
            raise ValueError("warm-up requests cannot be negative")
        if not 0.0 <= self.abandon_rate <= 1.0:
            raise ValueError("the cancel rate is a share of requests, from 0 to 1")
        if not 0 < self.abandon_after_s < math.inf:
            raise ValueError("the cancel delay must be a finite time above 0")

    def abandons(self, request_id: int) -> bool:
        """Whether the cancellation load gives up on this request: a seeded draw per request, so a rerun
        with the same seed abandons the same ones. Warm-up requests are never abandoned."""
        if self.abandon_rate <= 0 or request_id < self.warmup_requests:
            return False
        return random.Random(f"abandon:{self.seed}:{request_id}").random() < self.abandon_rate


@dataclass(frozen=True, slots=True)
class Progress:
    """What a progress callback sees: the CLI draws a bar from it, the dashboard a live panel."""

    phase: str  # "warmup" | "measure" | "drain"
    completed: int
    failed: int
    in_flight: int
    total: int | None
    elapsed_s: float
    output_tokens: int


@dataclass(slots=True)
class SelfCheck:
    """The client's own health during the run."""

    schedule_lag_p99_ms: float | None = None
    schedule_lag_max_ms: float | None = None
    loop_lag_p99_ms: float | None = None
    loop_lag_max_ms: float | None = None
    valid: bool = True
    reasons: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RunResult:
    """Every record of one run plus how the run went."""

    profile: LoadProfile
    records: list[RequestRecord]
    wall_s: float
    self_check: SelfCheck
    stopped_early: str | None = None
    cancelled: bool = False
    workers: list[WorkerDoc] = field(default_factory=list)  # runs split over Ray workers


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True, slots=True)
class _Launch:
    """One request as launched: what `_done` needs to record it, whatever became of it."""

    rid: int
    ready_s: float
    scheduled_s: float | None
    warm: bool
    request: PromptRequest
    session: int | None = None
    turn: int | None = None


class _Run:
    """The mutable state of one run (one event loop)."""

    def __init__(
        self,
        client: StreamClient,
        requests: list[PromptRequest],
        limits: RunLimits,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
        on_record: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self.client = client
        self.requests = requests
        self.limits = limits
        self.progress = progress
        self.cancel = cancel or threading.Event()
        self.records: list[RequestRecord] = []
        self.in_flight: dict[asyncio.Task[RequestRecord], _Launch] = {}
        self.next_id = 0
        self.phase = "warmup"
        self.measure_start = 0.0
        self.loop_lags: list[float] = []
        self.stopped_early: str | None = None
        self.error: BaseException | None = None  # a bug in a request task: re-raised by run_load
        self.connection_failures = 0  # in a row
        self.on_record = on_record  # a Ray worker hands its records out as it takes them
        self._last_progress = 0.0

    def request(self, i: int) -> PromptRequest:
        return self.requests[i % len(self.requests)]

    def window_open(self) -> bool:
        lim = self.limits
        measured = self.next_id - lim.warmup_requests
        if lim.requests is not None and measured >= lim.requests:
            return False
        if lim.duration_s is not None and self.client.now() - self.measure_start >= lim.duration_s:
            return False
        return not self.cancel.is_set() and self.stopped_early is None and self.error is None

    def launch(
        self,
        ready_s: float,
        scheduled_s: float | None,
        gate: asyncio.Semaphore | None,
        turn: tuple[PromptRequest, int | None, int | None] | None = None,
    ) -> asyncio.Task[RequestRecord]:
        """Send the next request: the workload's, or one `turn` (request, session, turn number) of a session."""
        rid = self.next_id
        self.next_id += 1
        launch = _Launch(
            rid,
            ready_s,
            scheduled_s,
            rid < self.limits.warmup_requests,
            self.request(rid) if turn is None else turn[0],
            None if turn is None else turn[1],
            None if turn is None else turn[2],
        )
        task = asyncio.ensure_future(self._one(launch, gate))
        self.in_flight[task] = launch
        task.add_done_callback(self._done)
        return task

    async def _one(self, launch: _Launch, gate: asyncio.Semaphore | None) -> RequestRecord:
        if gate is None:
            return await self._send(launch)
        async with gate:
            return await self._send(launch)

    async def _send(self, launch: _Launch) -> RequestRecord:
        """Send one request; under a cancellation load, close it unfinished after the set delay."""
        rid, ready_s, scheduled_s, warm = launch.rid, launch.ready_s, launch.scheduled_s, launch.warm
        keep = launch.session is not None  # a session's next turn sends this answer back
        sending = self.client.send(rid, launch.request, ready_s, scheduled_s, warm, keep_answer=keep)
        if not self.limits.abandons(rid):
            return await sending
        task = asyncio.ensure_future(sending)
        after = self.limits.abandon_after_s
        done, _ = await asyncio.wait([task], timeout=after)
        # The timer started before the task put the request on the wire (building the payload, the event
        # loop's turn): wait out what is left of `after` from the recorded send, so that no request is
        # closed sooner after sending than the load promises.
        while task not in done:
            sent = self.client.sent_at(rid)
            left = after if sent is None else sent + after - self.client.now()
            if left <= 0:
                break
            done, _ = await asyncio.wait([task], timeout=left)
        if task in done:
            return task.result()  # it finished before its time to be abandoned
        task.cancel()  # closes the connection mid-answer: the server sees the client leave
        await asyncio.gather(task, return_exceptions=True)
        return self.client.abandoned(rid, ready_s, scheduled_s, warm, self.limits.abandon_after_s)

    def _done(self, task: asyncio.Task[RequestRecord]) -> None:
        launch = self.in_flight.pop(task)
        if task.cancelled():
            record = self.client.cancelled(launch.rid, launch.ready_s, launch.scheduled_s, launch.warm)
        elif task.exception() is not None:  # the client records every server fault, so this is our bug
            self.error = self.error or task.exception()
            self.report()
            return
        else:
            record = task.result()
            self.watch_connections(record)
        record.session, record.turn = launch.session, launch.turn
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)
        self.report()

    def watch_connections(self, record: RequestRecord) -> None:
        """Stop a run whose server no longer accepts connections: each failure comes back at once, so
        a concurrency run would otherwise send thousands of them per second until its window ends."""
        if record.error_kind != ErrorKind.CONNECTION:
            self.connection_failures = 0
            return
        self.connection_failures += 1
        if self.connection_failures >= CONNECTION_FAILURE_LIMIT and self.stopped_early is None:
            self.stopped_early = (
                f"the server stopped accepting connections: {self.connection_failures} requests in a row "
                f"failed to connect (last: {record.error_excerpt})"
            )

    def report(self, force: bool = False) -> None:
        now = self.client.now()
        if self.progress is None or (not force and now - self._last_progress < PROGRESS_INTERVAL_S):
            return
        self._last_progress = now
        measured = [r for r in self.records if not r.warmup]
        self.progress(
            Progress(
                phase=self.phase,
                completed=sum(r.ok for r in measured),
                failed=sum(not r.ok and r.error_kind not in NOT_TIMED for r in measured),
                in_flight=len(self.in_flight),
                total=self.limits.requests,
                elapsed_s=max(0.0, now - self.measure_start) if self.phase != "warmup" else 0.0,
                output_tokens=sum(r.output_tokens or 0 for r in measured if r.ok),
            )
        )

    async def probe_loop(self) -> None:
        """Measure event-loop oversleep: the error bound on every timestamp the client takes."""
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(LOOP_PROBE_INTERVAL_S)
            self.loop_lags.append(max(0.0, time.perf_counter() - t0 - LOOP_PROBE_INTERVAL_S))

    async def watch_cancel(self) -> None:
        while not self.cancel.is_set():
            await asyncio.sleep(0.05)

    async def watch_saturation(self) -> None:
        """Stop a rate run whose backlog and TTFT both keep growing (the server cannot keep up)."""
        backlog: list[int] = []
        while True:
            await asyncio.sleep(1.0)
            backlog.append(len(self.in_flight))
            recent = backlog[-(SATURATION_WINDOW + 1) :]
            growing = len(recent) > SATURATION_WINDOW and all(b > a for a, b in zip(recent, recent[1:], strict=False))
            ttfts = [r.ttft_s for r in self.records if r.ok and not r.warmup and r.ttft_s is not None]
            if growing and len(ttfts) >= 8:
                early = statistics.median(ttfts[: len(ttfts) // 4 or 1])
                late = statistics.median(ttfts[-(len(ttfts) // 4 or 1) :])
                if late > 3 * early:
                    self.stopped_early = (
                        f"over-saturated: {recent[-1]} requests in flight and growing for {SATURATION_WINDOW} s, "
                        f"median TTFT rose from {early * 1000:.0f} ms to {late * 1000:.0f} ms"
                    )
                    return


async def _drive_concurrency(run: _Run, limit: int, total_warmup: int) -> None:
    """Keep `limit` requests in flight; warm-up first (same concurrency), then the measured window."""

    async def fill(open_: Callable[[], bool]) -> None:
        while open_():
            while len(run.in_flight) >= limit:
                await asyncio.wait(list(run.in_flight), return_when=asyncio.FIRST_COMPLETED)
            if open_():
                run.launch(run.client.now(), None, None)

    await fill(lambda: run.next_id < total_warmup and not run.cancel.is_set() and run.error is None)
    if run.in_flight:
        await asyncio.wait(list(run.in_flight))
    run.phase, run.measure_start = "measure", run.client.now()
    await fill(run.window_open)


def scheduled_arrivals(profile: LoadProfile, limits: RunLimits) -> int:
    """How many arrivals a rate run schedules: its request count, else (duration-bound) enough to outlast
    the window; a trace has exactly its own."""
    if limits.requests is not None:
        return limits.requests
    if profile.offsets is not None:
        return len(profile.offsets)
    return int((limits.duration_s or 0) * (profile.rate or 0) * 2) + 16


async def _drive_schedule(run: _Run, profile: LoadProfile, total_warmup: int) -> None:
    """Warm-up one at a time, then send on the precomputed schedule; lateness is measured, not hidden."""
    while run.next_id < total_warmup and not run.cancel.is_set() and run.error is None:
        run.launch(run.client.now(), None, None)
        await asyncio.wait(list(run.in_flight))
    run.phase, run.measure_start = "measure", run.client.now()
    gate = asyncio.Semaphore(profile.max_concurrency) if profile.max_concurrency else None
    n = scheduled_arrivals(profile, run.limits)
    window_end = None if run.limits.duration_s is None else run.measure_start + run.limits.duration_s
    for offset in arrival_offsets(profile, n, run.limits.seed):
        due = run.measure_start + offset
        # never sleep past the end of a duration-bound window waiting for an arrival that will not be sent
        delay = (due if window_end is None else min(due, window_end)) - run.client.now()
        if delay > 0:
            await asyncio.sleep(delay)
        if not run.window_open():
            break
        run.launch(run.client.now(), due, gate)


@dataclass(frozen=True, slots=True)
class Sessions:
    """Multi-turn load: conversations instead of single requests, and the pause a user takes between turns.

    The profile applies to sessions: `concurrency:N` keeps N conversations going
    (each has at most one request in flight, none while its user thinks), a rate
    profile starts conversations on its schedule. Conversations are reused in
    order when the run asks for more turns than they hold.
    """

    conversations: tuple[Conversation, ...]
    think_time_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.conversations:
            raise ValueError("a multi-turn run needs at least one conversation")
        if not 0 <= self.think_time_s < math.inf:
            raise ValueError("think time must be a finite number of seconds, 0 or more")


async def _session(run: _Run, sid: int, conversation: Conversation, think_s: float, scheduled_s: float | None) -> None:
    """One conversation: each turn sends the whole history (the server's own answers) and waits for its answer."""
    history: tuple[dict[str, str], ...] = ()
    for number, (text, max_tokens) in enumerate(conversation.turns, start=1):
        if not run.window_open():
            return
        messages = (*history, {"role": "user", "content": text})
        request = PromptRequest(
            prompt=None,
            messages=messages,
            max_tokens=max_tokens,
            input_tokens=None,
            ignore_eos=conversation.ignore_eos,
            source=f"{conversation.source}/turn{number}",
        )
        task = run.launch(run.client.now(), scheduled_s if number == 1 else None, None, (request, sid, number))
        rid = run.in_flight[task].rid
        await asyncio.wait({task})
        record = None if task.cancelled() or task.exception() is not None else task.result()
        answer = run.client.answers.pop(rid, None)
        if record is None or not record.ok or answer is None:
            return  # a turn that failed or was abandoned ends its conversation: the history is broken
        history = (*messages, {"role": "assistant", "content": answer})
        if think_s and number < len(conversation.turns):
            await asyncio.sleep(think_s)


async def _drive_sessions(run: _Run, profile: LoadProfile, sessions: Sessions, total_warmup: int) -> None:
    """Warm-up (first turns, one at a time), then conversations at the profile's concurrency or schedule."""
    convs = sessions.conversations
    for i in range(total_warmup):
        if run.cancel.is_set() or run.error is not None:
            return
        conversation = convs[i % len(convs)]
        text, max_tokens = conversation.turns[0]
        request = PromptRequest(None, ({"role": "user", "content": text},), max_tokens, None, True, conversation.source)
        await asyncio.wait({run.launch(run.client.now(), None, None, (request, None, None))})
    run.phase, run.measure_start = "measure", run.client.now()
    active: set[asyncio.Task[None]] = set()
    next_sid = 0

    def start(scheduled_s: float | None) -> None:
        nonlocal next_sid
        conversation = convs[(total_warmup + next_sid) % len(convs)]
        active.add(asyncio.ensure_future(_session(run, next_sid, conversation, sessions.think_time_s, scheduled_s)))
        next_sid += 1

    try:
        if profile.is_rate:
            for offset in arrival_offsets(profile, scheduled_arrivals(profile, run.limits), run.limits.seed):
                delay = run.measure_start + offset - run.client.now()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not run.window_open():
                    break
                start(offset)
                active = {t for t in active if not t.done()}
        else:
            limit = profile.in_flight_limit() or 1
            while run.window_open():
                while len(active) < limit and run.window_open():
                    start(None)
                    await asyncio.sleep(0)  # let the new session send its first turn before counting again
                if active:
                    _done, pending = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
                    active = set(pending)
        if active:
            await asyncio.wait(active)
    finally:
        for task in active:
            task.cancel()


async def run_load(
    endpoint: Endpoint,
    requests: list[PromptRequest],
    profile: LoadProfile,
    limits: RunLimits,
    *,
    tokenizer: TextTokenizer | None = None,
    options: RequestOptions | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    origin: float | None = None,
    sessions: Sessions | None = None,
    on_record: Callable[[RequestRecord], None] | None = None,
) -> RunResult:
    """Run one profile against `endpoint` and return every record (warm-up included, flagged).

    With `sessions`, the load is conversations (`Sessions`) and `requests` is not used. `on_record`
    sees each record as it is taken (a Ray worker hands them out as it goes, so a worker that dies
    mid-run still leaves what it measured)."""
    if not requests and sessions is None:
        raise ValueError("the workload has no requests")
    if profile.kind == "sweep":
        raise ValueError("a sweep is several runs: use checks.load.sweep.run_sweep")
    if sessions is not None and endpoint.api != "chat":
        raise ValueError("multi-turn sessions send chat messages: use the chat API")
    chat = next((r for r in requests if r.is_chat), None) if endpoint.api == "completions" else None
    if chat is not None:
        raise ValueError(
            f"{chat.source}: the workload has chat messages, which cannot go to the completions API; "
            "use the chat API, or a workload of plain prompts"
        )
    origin = time.perf_counter() if origin is None else origin
    async with StreamClient(endpoint, origin, tokenizer, options) as client:
        run = _Run(client, requests, limits, progress, cancel, on_record)
        helpers = [asyncio.ensure_future(run.probe_loop())]
        if profile.is_rate and limits.stop_when_saturated:
            helpers.append(asyncio.ensure_future(run.watch_saturation()))
        t0 = time.perf_counter()
        limit = profile.in_flight_limit()
        if sessions is not None:
            driver = asyncio.ensure_future(_drive_sessions(run, profile, sessions, limits.warmup_requests))
        elif profile.is_rate:
            driver = asyncio.ensure_future(_drive_schedule(run, profile, limits.warmup_requests))
        else:
            driver = asyncio.ensure_future(_drive_concurrency(run, limit or 1, limits.warmup_requests))
        canceller = asyncio.ensure_future(run.watch_cancel())
        await asyncio.wait([driver, canceller], return_when=asyncio.FIRST_COMPLETED)
        run.phase = "drain"
        while run.in_flight and not run.cancel.is_set() and run.error is None:
            await asyncio.wait([canceller, *run.in_flight], return_when=asyncio.FIRST_COMPLETED)
        for task in [driver, canceller, *helpers, *run.in_flight]:
            task.cancel()
        await asyncio.gather(driver, canceller, *helpers, *list(run.in_flight), return_exceptions=True)
        driver_error = None if driver.cancelled() else driver.exception()
        if driver_error is not None or run.error is not None:
            raise driver_error or run.error
        run.report(force=True)
        records = sorted(run.records, key=lambda r: r.request_id)
        return RunResult(
            profile=profile,
            records=records,
            wall_s=time.perf_counter() - t0,
            self_check=self_check(records, run.loop_lags, profile),
            stopped_early=run.stopped_early,
            cancelled=run.cancel.is_set(),
        )


def _lag_ms(values_s: list[float], limit_s: float) -> tuple[float | None, float | None, bool]:
    """(p99 ms, max ms, over the limit) of a list of lags in seconds; (None, None, False) when empty."""
    if not values_s:
        return None, None, False
    p99 = percentile(values_s, 99) or 0.0
    return p99 * 1000, max(values_s) * 1000, p99 > limit_s


def self_check(records: list[RequestRecord], loop_lags_s: list[float], profile: LoadProfile) -> SelfCheck:
    """Whether the client kept up: schedule lag (rate profiles) and event-loop lag, with reasons."""
    check = SelfCheck()
    schedule = [r.schedule_lag_s for r in records if not r.warmup and r.schedule_lag_s is not None]
    check.schedule_lag_p99_ms, check.schedule_lag_max_ms, late = _lag_ms(schedule, SCHEDULE_LAG_LIMIT_S)
    if late:
        check.reasons.append(
            f"the client sent late against the {profile.label} schedule: p99 lag {check.schedule_lag_p99_ms:.0f} ms "
            f"(limit {SCHEDULE_LAG_LIMIT_S * 1000:.0f} ms)"
        )
    check.loop_lag_p99_ms, check.loop_lag_max_ms, slow = _lag_ms(loop_lags_s, LOOP_LAG_LIMIT_S)
    if slow:
        check.reasons.append(
            f"the client's event loop woke {check.loop_lag_p99_ms:.0f} ms late at p99 "
            f"(limit {LOOP_LAG_LIMIT_S * 1000:.0f} ms): its timestamps are that coarse, "
            "so the latencies are not the server's"
        )
    check.valid = not check.reasons
    return check


def run_load_sync(*args: object, **kwargs: object) -> RunResult:
    """`run_load` from synchronous code (CLI, a dashboard worker thread): its own event loop."""
    return asyncio.run(run_load(*args, **kwargs))  # type: ignore[arg-type]
