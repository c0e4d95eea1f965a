"""Load from many processes or machines, on Ray: one profile split over N load-generator actors.

One client process sustains a lot of streamed tokens, but not a large
deployment's worth, and it uses one core. `--workers N` runs N copies of the
ordinary client (`checks.load.loadgen.run_load`) as Ray actors, on this machine
(a local Ray instance, which is also the multi-core mode for one big box) or on
a cluster (`--ray-address`). Ray supplies the processes, placement and
transport; what this module adds is what makes N clients one measurement:

- the split: a concurrency is divided among the actors; a rate or trace
  schedule is computed once by the driver and its arrivals dealt out in turn,
  so the aggregate is exactly the requested process (Poisson stays Poisson);
- one clock: each actor's clock offset against the driver is measured over
  several round trips (the fastest one bounds the error), every actor starts
  at the same driver instant, and every record comes back on the driver's clock;
- one summary: the merged records go through the same `summarize` as a
  single-process run, and the run is INVALID when any actor could not keep up
  or died (the report names it; what a dead actor sent before is kept, since
  actors hand their records out as they take them).

Warm-up requests are sent by the driver before the actors start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from checks.load.endpoint import Endpoint
from checks.load.loadgen import RunLimits, RunResult, SelfCheck, run_load, scheduled_arrivals, self_check
from checks.load.profiles import LoadProfile, arrival_offsets
from checks.load.prompts import PromptRequest
from checks.load.tokenizer import TextTokenizer
from reports.benchmark_result import WorkerDoc
from reports.records import RequestRecord

CLOCK_ROUND_TRIPS = 7  # the offset comes from the fastest of these
START_MARGIN_S = 1.0  # actors are told to start this long after the driver decides, so all are ready
POLL_S = 0.5  # how often the driver collects records from running actors
PREPARE_TIMEOUT_S = 180.0  # workers not started and loaded by then are reported, never waited on for ever
CLOCK_FIELDS = ("scheduled_s", "ready_s", "send_s", "first_token_s", "end_s")


class DistributedError(ValueError):
    """Ray is missing, cannot start, or the load cannot be split as asked."""


@dataclass(frozen=True, slots=True)
class Share:
    """One actor's part of the load: its schedule (or its concurrency), its requests and its bound."""

    profile: LoadProfile
    requests: list[PromptRequest]
    limits: RunLimits


def check_split(profile: LoadProfile, workers: int) -> None:
    """Whether `profile` can be split over `workers`: the config checks it up front, split_load again."""
    if workers < 1:
        raise DistributedError("give at least 1 worker")
    if profile.kind in ("sync", "sweep"):
        raise DistributedError(f"a {profile.kind} run is one stream of requests: run it with one worker")
    total = profile.concurrency or 1
    if profile.kind == "concurrency" and total < workers:
        raise DistributedError(f"concurrency {total} cannot keep {workers} workers busy: use at most {total}")


def split_load(profile: LoadProfile, requests: list[PromptRequest], limits: RunLimits, workers: int) -> list[Share]:
    """Divide one run among `workers` actors so that together they send what one client would have."""
    check_split(profile, workers)
    measured = [r for i, r in enumerate(requests) if i >= limits.warmup_requests] or requests
    base = replace(limits, warmup_requests=0)
    if profile.kind == "concurrency":
        total = profile.concurrency or 1
        shares = []
        for k in range(workers):
            count = None if limits.requests is None else _part(limits.requests, workers, k)
            if count == 0:
                continue
            share_limits = replace(base, requests=count, seed=limits.seed + k)
            shares.append(
                Share(
                    LoadProfile("concurrency", concurrency=_part(total, workers, k)),
                    measured[k::workers] or measured,
                    share_limits,
                )
            )
        return shares
    # a schedule: computed once here, its arrivals dealt out in turn
    offsets = arrival_offsets(profile, scheduled_arrivals(profile, limits), limits.seed)
    cap = profile.in_flight_limit()
    shares = []
    for k in range(workers):
        mine = offsets[k::workers]
        if not mine:
            continue
        cap_k = None if cap is None else max(1, _part(cap, workers, k))
        share_profile = LoadProfile(
            "trace", offsets=tuple(mine), name=f"{profile.label} share {k + 1}/{workers}", max_concurrency=cap_k
        )
        prompts = [measured[j % len(measured)] for j in range(k, len(offsets), workers)]
        share_limits = replace(base, requests=len(mine) if limits.requests is not None else None)
        shares.append(Share(share_profile, prompts, share_limits))
    return shares


def _part(total: int, workers: int, k: int) -> int:
    return total // workers + (1 if k < total % workers else 0)


def shift_record(record: RequestRecord, shift_s: float, request_id: int) -> RequestRecord:
    """The same record on another clock (every time plus `shift_s`) and under a new id."""
    times = {name: getattr(record, name) for name in CLOCK_FIELDS}
    moved = {name: None if value is None else value + shift_s for name, value in times.items()}
    return replace(record, request_id=request_id, chunk_times_s=[t + shift_s for t in record.chunk_times_s], **moved)


def merge_self_checks(checks: dict[int, SelfCheck], records: list[RequestRecord], profile: LoadProfile) -> SelfCheck:
    """One self-check for the whole run: the schedule lag over all records, the worst event loop, every reason."""
    merged = self_check(records, [], profile)
    loops = [c for c in checks.values() if c.loop_lag_p99_ms is not None]
    if loops:
        merged.loop_lag_p99_ms = max(c.loop_lag_p99_ms or 0.0 for c in loops)
        merged.loop_lag_max_ms = max(c.loop_lag_max_ms or 0.0 for c in loops)
    merged.reasons = [f"worker {k + 1}: {reason}" for k, c in sorted(checks.items()) for reason in c.reasons]
    merged.valid = not merged.reasons
    return merged


@dataclass(slots=True)
class _WorkerState:
    """What the driver knows of one actor."""

    actor: Any
    offset_s: float = 0.0  # the actor's perf_counter minus the driver's, at the same instant
    round_trip_s: float = 0.0  # of the fastest clock probe: the offset is good to half of it
    origin_s: float = 0.0  # the actor's perf_counter when its run began
    records: list[RequestRecord] = field(default_factory=list)
    result: dict[str, Any] | None = None
    died: str | None = None


def _worker_class() -> Any:
    """The Ray actor class, built on first use so that importing this module never imports Ray."""
    import ray  # noqa: PLC0415 - Ray is heavy and only --workers needs it

    @ray.remote
    class LoadWorker:
        """One load-generator process: the ordinary client on its share, records handed out as taken."""

        def __init__(self) -> None:
            self.taken: list[RequestRecord] = []
            self.origin = 0.0
            self.tokenizer: TextTokenizer | None = None

        async def prepare(self) -> None:
            """Load what the run needs before the common start (the tokenizer takes seconds in a new process)."""
            try:
                from checks.load.tokenizer import bundled_tokenizer  # noqa: PLC0415

                self.tokenizer = bundled_tokenizer()
            except Exception:  # noqa: BLE001 - a worker without the model package counts with usage alone
                self.tokenizer = None

        async def clock(self) -> float:
            return time.perf_counter()

        async def take(self) -> tuple[float, list[RequestRecord]]:
            """(the run's origin on this actor's clock, the records taken since the last call)."""
            out = list(self.taken)
            self.taken.clear()  # the same list: run_load appends to it through a bound method
            return self.origin, out

        async def run(self, endpoint: Endpoint, share: Share, start_at: float) -> dict[str, Any]:
            late = time.perf_counter() - start_at
            if late > 0:
                raise DistributedError(f"the worker was ready {late:.1f} s after the common start (START_MARGIN_S)")
            await asyncio.sleep(start_at - time.perf_counter())
            self.origin = time.perf_counter()
            result = await run_load(
                endpoint,
                share.requests,
                share.profile,
                share.limits,
                tokenizer=self.tokenizer,
                origin=self.origin,
                on_record=self.taken.append,
            )
            return {
                "origin": self.origin,
                "self_check": result.self_check,
                "stopped_early": result.stopped_early,
                "left": (await self.take())[1],
            }

        async def pid(self) -> int:
            return os.getpid()

    return LoadWorker


def start_ray(workers: int, address: str | None) -> None:
    """Connect to the cluster at `address`, or start a local instance with a core per worker."""
    try:
        import ray  # noqa: PLC0415
    except ImportError:
        raise DistributedError("--workers needs Ray: install it (pip install ray) or run with one worker") from None
    if ray.is_initialized():
        return
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    modules = [os.path.join(here, name) for name in ("checks", "reports", "engine", "planner")]
    options: dict[str, Any] = {
        "log_to_driver": False,
        "logging_level": logging.ERROR,  # the console is the benchmark's; Ray's start-up lines would bury it
        "runtime_env": {"py_modules": modules},
    }
    if address:
        options["address"] = address
    else:
        options.update(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False)
        options["object_store_memory"] = 128 * 2**20  # records are small; the default takes 30% of RAM
    try:
        ray.init(**options)
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; the user needs one line
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise DistributedError(f"could not start {where}: {type(exc).__name__}: {exc}") from None


def _cause(exc: BaseException) -> str:
    """One line for a Ray failure: the worker's own exception when Ray wraps one, else what Ray says."""
    inner = getattr(exc, "cause", None)
    shown = inner if isinstance(inner, BaseException) else exc
    text = str(shown).strip().splitlines()
    return f"{type(shown).__name__}: {text[-1] if text else 'no message'}"[:300]


def measure_offset(actor: Any) -> tuple[float, float]:
    """(actor clock - driver clock, round trip) from the fastest of several probes."""
    import ray  # noqa: PLC0415

    best: tuple[float, float] | None = None
    for _ in range(CLOCK_ROUND_TRIPS):
        t0 = time.perf_counter()
        remote = ray.get(actor.clock.remote())
        t1 = time.perf_counter()
        if best is None or t1 - t0 < best[1]:
            best = (remote - (t0 + t1) / 2, t1 - t0)
    assert best is not None
    return best


def run_distributed(
    endpoint: Endpoint,
    requests: list[PromptRequest],
    profile: LoadProfile,
    limits: RunLimits,
    workers: int,
    *,
    address: str | None = None,
    tokenizer: TextTokenizer | None = None,
    cancel: threading.Event | None = None,
    origin: float | None = None,
    on_poll: Callable[[list[Any], list[int]], None] | None = None,
) -> RunResult:
    """Run `profile` over `workers` Ray actors and return one run on the driver's clock.

    `on_poll` gets the actors and the records taken from each so far, after every poll
    (a progress display; the tests use it to kill a worker mid-run).
    """
    import ray  # noqa: PLC0415

    shares = split_load(profile, requests, limits, workers)
    origin = time.perf_counter() if origin is None else origin
    cancel = cancel or threading.Event()
    warm: list[RequestRecord] = []
    if limits.warmup_requests:
        warm_run = asyncio.run(
            run_load(
                endpoint,
                requests[: limits.warmup_requests],
                LoadProfile("sync", concurrency=1),
                RunLimits(requests=limits.warmup_requests, seed=limits.seed),
                tokenizer=tokenizer,
                origin=origin,
            )
        )
        warm = [replace(r, warmup=True) for r in warm_run.records]
    start_ray(len(shares), address)
    cls = _worker_class()
    # No CPU reservation: a client is mostly waiting on sockets, and a reservation larger than what the Ray
    # instance was started with (a second run with more workers in one process) would leave actors pending
    # for ever. SPREAD places them on as many nodes of a cluster as it can.
    states = [_WorkerState(cls.options(num_cpus=0, scheduling_strategy="SPREAD").remote()) for _ in shares]
    try:
        ray.get([state.actor.prepare.remote() for state in states], timeout=PREPARE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - an actor that cannot even start: no load was sent
        for state in states:
            ray.kill(state.actor, no_restart=True)
        raise DistributedError(f"the load workers could not start: {_cause(exc)}") from None
    for state in states:
        state.offset_s, state.round_trip_s = measure_offset(state.actor)
    start = time.perf_counter() + START_MARGIN_S
    t0 = time.perf_counter()
    refs = {
        state.actor.run.remote(endpoint, share, start + state.offset_s): k
        for k, (state, share) in enumerate(zip(states, shares, strict=True))
    }
    pending = dict(refs)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
        for ref in done:
            k = pending.pop(ref)
            try:
                states[k].result = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - an actor that died, or failed: named, its records kept
                states[k].died = _cause(exc)
        for k in pending.values():
            try:
                origin_k, taken = ray.get(states[k].actor.take.remote(), timeout=10)
                states[k].records += taken
                states[k].origin_s = origin_k or states[k].origin_s
            except Exception as exc:  # noqa: BLE001 - it died between polls; the run ref reports it next
                states[k].died = states[k].died or f"{type(exc).__name__}"
        if on_poll is not None:
            on_poll([s.actor for s in states], [len(s.records) for s in states])
        if cancel.is_set():
            for ref in pending:
                ray.cancel(ref)
            break
    wall_s = time.perf_counter() - t0
    for state in states:
        if state.result is not None:
            state.records += state.result["left"]
            state.origin_s = state.result["origin"]
        elif not state.origin_s:  # died before a poll read its origin: it started on time (run() sleeps to it)
            state.origin_s = start + state.offset_s
        ray.kill(state.actor, no_restart=True)
    merged = list(warm)
    for state in states:
        shift = state.origin_s - state.offset_s - origin
        merged += [shift_record(r, shift, 0) for r in state.records]
    merged.sort(key=lambda r: (not r.warmup, r.send_s))
    merged = [replace(r, request_id=i) for i, r in enumerate(merged)]
    checks = {k: s.result["self_check"] for k, s in enumerate(states) if s.result is not None}
    check = merge_self_checks(checks, merged, profile)
    for k, state in enumerate(states):
        if state.died:
            check.reasons.append(
                f"worker {k + 1} died mid-run ({state.died}); its {len(state.records)} records up to then are kept"
            )
    check.valid = not check.reasons
    stopped = [
        f"worker {k + 1}: {s.result['stopped_early']}"
        for k, s in enumerate(states)
        if s.result and s.result["stopped_early"]
    ]
    workers_doc = [
        WorkerDoc(
            worker=k + 1,
            clock_offset_ms=s.offset_s * 1000,
            clock_round_trip_ms=s.round_trip_s * 1000,
            records=len(s.records),
            died=s.died,
        )
        for k, s in enumerate(states)
    ]
    return RunResult(
        profile=profile,
        records=merged,
        wall_s=wall_s,
        self_check=check,
        stopped_early="; ".join(stopped) or None,
        cancelled=cancel.is_set(),
        workers=workers_doc,
    )
