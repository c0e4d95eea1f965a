"""A closed-loop benchmark replayed pass by pass through an engine's own scheduling policy.

Why a replay and not a queueing formula: clients of a closed loop with equal request lengths do not
arrive as a Poisson stream. A benchmark at concurrency C sends C requests at once; the prompts
packed into one pass finish prefill together, decode together, end together and come back
together, so the cohorts persist for the whole run. On the bundled engine (budget 512 tokens, 128-token
prompts) the measured TTFT at concurrency 2, 4, 8 and 16 is the pass that carries a prompt's cohort
and the passes ahead of it, which an M/D/1 wait misses by up to 35% (docs/BENCHMARKS.md, "Planner
calibration"). Where the planner knows the policy exactly, because the engine is ours
(engine/batch/scheduler.py), it replays it:

- every pass gives each decoding sequence one token first, then continues partly prefilled prompts
  in arrival order, then admits waiting requests first come first served while the batch has room,
  each prompt chunk capped by the per-sequence chunk size and all of them by the token budget;
- a pass costs StepCost(decoding sequences, prompt tokens), the same price the analytic model uses;
- a prompt whose last chunk ran gets its first token at the end of that pass; a sequence with all its
  output ends there, and its client sends the next request at once;
- a request sent as a pass ends misses the pass that starts then (the HTTP round trip is longer than
  the engine's turn-around); an idle engine wakes for the first request to arrive, so requests that
  end together and come back one by one split (measured at concurrency 2: 269 / 535 ms TTFT pairs),
  while the run's opening burst, sent in one go, is taken in together;
- the server takes requests in one at a time (`ingest_s` each: HTTP parsing, the chat template and
  tokenizing, on its event loop beside the running pass), so requests sent together reach the scheduler
  one intake apart, and a pass admits those taken in before it starts. Where a cohort's requests end
  one pass before another's, the intake decides how many are in before the other's last pass ends: on
  the bundled engine at concurrency 4 the opening 3 + 1 split drifted to 2 + 2 and then 1 + 3 over a
  run (its step log), which a replay without an intake kept at 3 + 1 (TTFT 22% short, TPOT 17% high
  at the log's own prices; with a 4-6 ms intake 3% and 3%). `calibrate` fits it (scan_ingest).

The figures are computed the way the benchmark computes them (checks/load/metrics.py): median TTFT
and TPOT over requests, output tokens over the time from the first send to the last end. With a
request count the replay is that benchmark run, first burst included; without one it is the steady
state: the first wave is left out of the figures.

A real machine does not run a pass in the same time twice. Where the timing of a pass decides which
requests share the next one, that scatter changes the figures, not just their spread: at concurrency 2
a request's first token comes either after its own prompt pass (~150 ms on the bundled CPU engine) or
after its partner's and its own (~280 ms), and a deterministic replay locks every request into one of
the two modes while the measured run mixes them (docs/BENCHMARKS.md, "Planner calibration"). With a
`spread` (the standard deviation of ln pass time, measured from a run's inter-token gaps) each pass
is priced times a lognormal factor of mean 1, and REPLAYS seeded replays are pooled: the figures are
computed over all their requests, as if one long run, so the prediction is the mode mix's median and
stays the same from one call to the next.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import deque
from dataclasses import dataclass

from planner.loaded import StepCost

STEADY_WAVES = 4  # requests per client replayed for a steady-state figure (the first wave not counted)
REPLAYS = 8  # seeded replays pooled when passes are priced with a spread
MAX_SPREAD = 2.0  # sd of ln pass time: beyond it a pass would take e^2 = 7x its price one time in six


@dataclass(frozen=True, slots=True)
class ReplayLimits:
    """The scheduler's limits: sequences in the running batch, tokens per pass, prompt tokens per sequence per pass."""

    max_num_seqs: int
    max_num_batched_tokens: int
    prefill_chunk_tokens: int


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a benchmark of the replayed run would report."""

    ttft_s: float  # median
    tpot_s: float  # median
    e2e_s: float  # mean
    output_tok_s: float
    requests_s: float
    mean_batch: float  # sequences in the running batch, time-weighted
    requests: int  # counted in the figures


@dataclass(slots=True)
class _Request:
    sent_s: float  # the client sends it (TTFT and E2E count from here, as the benchmark does)
    opening: bool  # one of the run's first requests, sent in one go
    arrive_s: float  # the server has taken it in: the scheduler sees it
    first_s: float = 0.0
    end_s: float = 0.0


@dataclass(slots=True)
class _Replayed:
    counted: list[_Request]  # the requests the figures count
    span_s: float  # first counted send to last counted end
    busy_area: float  # running sequences x seconds
    busy_s: float  # the replay's whole length


def replay_closed_loop(
    cost: StepCost,
    limits: ReplayLimits,
    clients: int,
    input_tokens: int,
    output_tokens: int,
    requests: int | None = None,
    spread: float = 0.0,
    ingest_s: float = 0.0,
) -> ReplayResult:
    """Replay `clients` closed-loop clients sending `requests` requests in all (None: the steady state),
    each pass priced with a lognormal `spread` (0: exactly; otherwise REPLAYS seeded replays pooled), each
    request taken in by the server `ingest_s` after the one before it."""
    if clients < 1 or input_tokens < 1 or output_tokens < 1:
        raise ValueError("a replay needs at least one client, one prompt token and one output token")
    if not 0.0 <= ingest_s < math.inf:
        raise ValueError(f"a server's intake time per request is a finite time of 0 s or more, not {ingest_s}")
    if not 0.0 <= spread <= MAX_SPREAD:
        raise ValueError(f"a pass-time spread is a standard deviation of ln time in [0, {MAX_SPREAD:g}], not {spread}")
    seeds = range(REPLAYS) if spread > 0 else range(1)
    runs = [
        _replay(cost, limits, clients, input_tokens, output_tokens, requests, spread, seed, ingest_s) for seed in seeds
    ]
    counted = [r for run in runs for r in run.counted]
    tpots = [(r.end_s - r.first_s) / (output_tokens - 1) for r in counted] if output_tokens > 1 else [0.0]
    span = sum(run.span_s for run in runs)
    busy_s = sum(run.busy_s for run in runs)
    return ReplayResult(
        ttft_s=statistics.median(r.first_s - r.sent_s for r in counted),
        tpot_s=statistics.median(tpots),
        e2e_s=statistics.fmean(r.end_s - r.sent_s for r in counted),
        output_tok_s=len(counted) * output_tokens / span,
        requests_s=len(counted) / span,
        mean_batch=sum(run.busy_area for run in runs) / busy_s if busy_s else 0.0,
        requests=len(counted) // len(runs),
    )


def _replay(
    cost: StepCost,
    limits: ReplayLimits,
    clients: int,
    input_tokens: int,
    output_tokens: int,
    requests: int | None,
    spread: float,
    seed: int,
    ingest_s: float = 0.0,
) -> _Replayed:
    """One replay; with a spread, each pass's time is its price times exp(N(-spread^2/2, spread^2))."""
    # The engine's scheduler is plain Python over token ids (no tensors), so the replay drives the real one.
    from engine.batch.scheduler import Scheduler, SchedulerConfig
    from engine.batch.sequence import Sequence
    from engine.sampling import SamplingParams

    total = requests if requests is not None else clients * STEADY_WAVES
    skip = 0 if requests is not None else clients
    length = input_tokens + output_tokens + 1
    block = SchedulerConfig().block_size
    sched = Scheduler(
        SchedulerConfig(
            max_num_seqs=limits.max_num_seqs,
            max_num_batched_tokens=max(limits.max_num_batched_tokens, limits.max_num_seqs),
            prefill_chunk_size=limits.prefill_chunk_tokens,
            max_queue=max(1, clients),
            max_model_len=length,
            num_kv_blocks=(max(clients, limits.max_num_seqs) + 1) * -(-length // block),  # room for every client
        )
    )
    params = SamplingParams(max_tokens=output_tokens, ignore_eos=True)
    pending: deque[_Request] = deque()  # sent, not yet seen by the scheduler (in send order)
    sent: list[_Request] = []

    intake_free = 0.0  # when the server is done taking in the requests sent so far

    def send(at: float, opening: bool = False) -> None:
        # The opening burst, sent in one go to an idle server, is taken in as one; every later request
        # waits for the one before it to be taken in.
        nonlocal intake_free
        arrive = at + ingest_s if opening else max(at, intake_free) + ingest_s
        intake_free = arrive
        sent.append(_Request(at, opening, arrive))
        pending.append(sent[-1])

    def admit() -> None:
        r = pending.popleft()
        k = len(sent) - len(pending) - 1  # its index in send order: pending holds the last ones sent
        # distinct prompts: no prefix-cache hit between requests, as with the benchmark's random prompts
        ids = list(range(k * input_tokens + 1, (k + 1) * input_tokens + 1))
        sched.add(Sequence(seq_id=k, prompt_token_ids=ids, params=params, arrival_s=r.sent_s))

    for _ in range(min(clients, total)):
        send(0.0, opening=True)
    prices: dict[tuple[int, int], float] = {}
    rng = random.Random(seed)
    drift = -spread * spread / 2  # keeps a pass's mean time at its price: the price is what a fit measures
    now = busy_area = 0.0
    while pending or sched.has_unfinished:
        # A request sent as a pass ends reaches the scheduler after the next pass has started (the HTTP
        # round trip), and one intake after the request taken in before it. An idle engine wakes for the
        # first to arrive: the run's opening burst, sent in one go, arrives together; requests sent as
        # their predecessors end arrive one by one, and the first starts a pass alone.
        if not sched.has_unfinished and pending[0].arrive_s >= now:
            now = pending[0].arrive_s
            admit()
            while pending and pending[0].opening and pending[0].arrive_s <= now:
                admit()
        while pending and pending[0].arrive_s < now:
            admit()
        out = sched.schedule()
        key = (len(out.decodes), sum(item.num_tokens for item in out.prefills))
        if key not in prices:
            prices[key] = cost(*key)
        took = prices[key] * math.exp(rng.gauss(drift, spread)) if spread else prices[key]
        busy_area += took * len(sched.running)
        now += took
        sampled = {item.seq.seq_id: [0] for item in out.items if item.samples}
        for item in out.prefills:
            if item.samples:
                sent[item.seq.seq_id].first_s = now
        for seq in sched.postprocess(out, sampled):
            sent[seq.seq_id].end_s = now
            if len(sent) < total:
                send(now)
    counted = sent[skip:]
    start = min(r.sent_s for r in counted)
    span = max(max(r.end_s for r in counted) - start, 1e-12)
    return _Replayed(counted, span, busy_area, now)
