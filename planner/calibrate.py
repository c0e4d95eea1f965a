"""Fit predict's efficiencies and fixed costs to measured runs (`python -m planner calibrate`).

The fit predicts every run through `predict_one`, the code path `predict` and `recommend` use, with
trial values, and minimizes the sum of squared ln(predicted / measured) over the measured TTFT,
TPOT and output tok/s of the fit runs: a log residual weighs a 10% miss the same on a 5 ms TPOT
and on a 500 ms TTFT. These values are fitted, each within bounds a real engine can reach:

- decode_bandwidth: fraction of peak memory bandwidth a decode step reaches,
- prefill_flops: fraction of peak FLOP/s the matmuls reach (prefill, and decode once the batch
  makes it compute-bound),
- step_overhead_ms: a fixed cost per forward pass (dispatch, scheduling, sampling, HTTP framing),
- seq_overhead_us: a cost per sequence in a pass (its sampling, detokenizing and streaming; on the
  bundled engine's CPU path about 3 ms: TPOT grows by that per sequence decoded together),
- queued_prefills (engines whose closed loop is predicted analytically): the share of each other
  in-flight request's prefill a new request waits for before its first token; an engine whose
  scheduler is replayed (planner/replay.py) queues its prompts in the replay instead;
- ingest_ms (engines whose scheduler is replayed): the server's time to take in one request before
  its scheduler sees it, one request at a time; scanned with the prices fixed (scan_ingest);
- prompt_overhead_ms (only from step logs, `--step-log`): a pass that carries prompt tokens costs this
  much beyond its FLOPs. With step logs the prices are fitted to the logged passes (fit_pass_prices)
  and only what the server cannot see (the intake, a queued share) to the runs' figures.

The search is Nelder-Mead on ln(value) (ln(1 + value) for costs and shares that may be 0), each
trial clamped into its bounds (bounds_for: wider efficiencies on a CPU, whose peak is a probe's
reading) and restarted from its best point until a restart gains nothing (a simplex can collapse
early): a handful of parameters and runs need nothing heavier, and no
derivative of the planner's max()-shaped roofline or of a replay is assumed. Held-out runs are
predicted, never fitted.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from planner.calibration import (
    CI_METRICS,
    DEFAULT_PASS_SPREAD,
    METRICS,
    CalibrationDoc,
    CalibrationRun,
    ErrorRow,
    FitError,
    FittedValues,
    InsideCi,
    MedianIntervals,
    Metrics,
    PassFit,
    PassRow,
    PriceName,
    cpu_figures,
    now,
)
from planner.catalog import Catalog, load_catalog
from planner.entrypoints import pass_pricer, predict_one
from planner.errors import PlannerError
from planner.hardware import Hardware, detect
from planner.loaded import StepCost
from planner.predict_io import PredictOptions
from planner.replay import MAX_SPREAD
from planner.step_log import PassClass, pass_classes, read_passes

if TYPE_CHECKING:
    from planner.cpu_probe import CpuMeasurement

# (low, high) per fitted value: efficiencies above 1 would mean beating the datasheet peak.
BOUNDS = {
    "decode_bandwidth": (0.02, 1.5),
    "prefill_flops": (0.005, 1.5),
    "step_overhead_ms": (0.0, 2000.0),
    "queued_prefills": (0.0, 2.0),
    "seq_overhead_us": (0.0, 100_000.0),
    "ingest_ms": (0.0, 50.0),
    "prompt_overhead_ms": (0.0, 2000.0),
}
# On a CPU the peak is the probe's, measured at one moment of a machine whose speed drifts: on the 2-core VM
# its int4 GEMM rate read 77-165 G weight-rows/s within one afternoon, so a run can need 3x the slow reading.
CPU_EFFICIENCY_HIGH = 4.0
Bounds = dict[str, tuple[float, float]]


def bounds_for(device_kind: str) -> Bounds:
    """BOUNDS, with room for a CPU probe that read low."""
    if device_kind != "cpu":
        return BOUNDS
    return BOUNDS | {k: (BOUNDS[k][0], CPU_EFFICIENCY_HIGH) for k in ("decode_bandwidth", "prefill_flops")}


MAX_ITERATIONS = 200
RESTARTS = 3
TOLERANCE = 1e-5

Predictor = Callable[[CalibrationRun, FittedValues | None], Metrics]


def run_options(run: CalibrationRun) -> PredictOptions:
    """The predict question a measured run answers: its model, device, engine, lengths and load.

    Tokens its prefix cache served (a chat template's shared first block, a repeated system prompt)
    are planned as cached: fitting them as computed would charge the prefill rate for work the run
    never did."""
    return PredictOptions(
        model=run.model,
        gpu=run.gpu,
        engine=run.engine,
        engine_version=run.engine_version,
        format=run.format,
        input_tokens=run.input_tokens,
        cached_input_tokens=min(run.cached_input_tokens, run.input_tokens - 1),
        output_tokens=run.output_tokens,
        concurrency=run.concurrency,
        max_num_seqs=run.max_num_seqs,
        requests=run.requests,
    )


MIN_GAPS = 50  # fewer inter-token gaps say too little about their scatter


def gap_spread(gaps_s: Sequence[float]) -> float | None:
    """How much a pass's time scatters, as the sd of ln(gap) estimated from the interquartile range.

    At one stream each gap between one-token chunks is one decode pass plus its trip to the client, so
    the gaps' scatter is the passes' (sd of ln 0.07-0.12 on the 2-core CPU VM; the engine's own step log
    shows 0.08-0.15). The interquartile range (over 1.349, a normal's) ignores the tails a chunk
    arriving with its neighbour or a garbage-collection pause would add to a plain sd."""
    logs = [math.log(g) for g in gaps_s if g > 0]
    if len(logs) < MIN_GAPS:
        return None
    q1, _, q3 = statistics.quantiles(logs, n=4)
    return (q3 - q1) / 1.349


# What identifies a measurement rather than its conditions: two runs equal in everything else are repeats.
NOT_CONDITIONS = {
    "id",
    "source",
    "requests",
    "repeats",
    "gap_spread",
    "measured",
    "measured_ci95",
    "predicted_before",
    "predicted_after",
}


def pool_repeats(runs: Sequence[CalibrationRun]) -> list[CalibrationRun]:
    """Runs of the same conditions as one run each, in first-seen order: each figure the median over repeats.

    On a shared or throttled machine the same run moves by more than a prediction should miss by (10%
    from one minute to the next on a 2-core VM), so one run per concurrency cannot check a few-percent
    model. Repeats measured in interleaved rounds see the machine alike at every concurrency, and the
    median of each figure keeps one slow run from moving the point. Repeats are pooled, not weighted:
    fitting five copies of one concurrency would let it outvote the others.

    The pooled point keeps one run's request count (the lower median of the repeats'), not their sum:
    `predict` replays a run of that many requests, and each figure is the median of runs that long. A
    replay of the summed count is another run (at concurrency 16, 160 requests where each run had 40:
    the opening burst weighs a quarter as much, and its TTFT came out 9% short)."""
    groups: dict[str, list[CalibrationRun]] = {}
    for run in runs:
        groups.setdefault(run.model_dump_json(exclude=NOT_CONDITIONS), []).append(run)
    return [_pooled(group) for group in groups.values()]


def _pooled(group: list[CalibrationRun]) -> CalibrationRun:
    if len(group) == 1:
        return group[0]
    medians = {}
    for metric in METRICS:
        seen = [v for r in group if (v := getattr(r.measured, metric)) is not None]
        medians[metric] = statistics.median(seen) if seen else None
    counted = [r.requests for r in group if r.requests is not None]
    spreads = [r.gap_spread for r in group if r.gap_spread is not None]
    return group[0].model_copy(
        update={
            "measured_ci95": _pooled_intervals(group),
            "gap_spread": statistics.median(spreads) if spreads else None,
            "id": ", ".join(r.id for r in group),
            "source": ", ".join(r.source for r in group),
            "requests": statistics.median_low(counted) if counted else None,
            "repeats": sum(r.repeats for r in group),
            "measured": Metrics(**medians),
        }
    )


def _pooled_intervals(group: list[CalibrationRun]) -> MedianIntervals | None:
    """The median of the repeats' bounds: the interval of one run as long as each of them, which is what a
    prediction of such a run (planner/replay.py replays one) can be held to. Narrower intervals for the
    median of the repeats would need their requests, which the runs no longer carry."""
    bounds = {}
    for metric in CI_METRICS:
        seen = [ci for r in group if (ci := r.ci95(metric))]
        if seen:
            bounds[metric] = (statistics.median(lo for lo, _ in seen), statistics.median(hi for _, hi in seen))
    return MedianIntervals(**bounds) if bounds else None


def predictor(catalog: Catalog, hw: Hardware, measure: Callable[[], CpuMeasurement] | None) -> Predictor:
    """Predict one run with given values (None: the catalog's), through predict_one."""

    def predict(run: CalibrationRun, values: FittedValues | None) -> Metrics:
        r = predict_one(run_options(run), catalog, hw, measure, values)
        if not r.fits:
            raise PlannerError(f"run {run.id} ({run.source}) does not fit as predicted: {r.reason}")
        return Metrics(ttft_ms=r.ttft_ms, tpot_ms=r.tpot_ms, output_tok_s=r.output_tok_s)

    return predict


def abs_pct(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or measured is None:
        return None
    return abs(predicted - measured) / measured * 100


def error_row(runs: Sequence[CalibrationRun], predicted: Sequence[Metrics | None]) -> ErrorRow:
    """Median absolute % error per metric over `runs` (a run without a prediction counts for none)."""
    cols: dict[str, float | None] = {}
    for metric in METRICS:
        errs = [
            e
            for run, p in zip(runs, predicted, strict=True)
            if p is not None and (e := abs_pct(getattr(p, metric), getattr(run.measured, metric))) is not None
        ]
        cols[metric] = statistics.median(errs) if errs else None
    return ErrorRow(runs=len(runs), **cols, inside_ci95=inside_ci(runs, predicted))


def inside_ci(runs: Sequence[CalibrationRun], predicted: Sequence[Metrics | None]) -> InsideCi | None:
    """Per median, how many predictions fall inside their run's own 95% interval, of the runs that have one."""
    counts: dict[str, tuple[int, int]] = {}
    for metric in CI_METRICS:
        hits = []
        for run, p in zip(runs, predicted, strict=True):
            ci, got = run.ci95(metric), getattr(p, metric, None)
            if ci is not None and got is not None:
                hits.append(ci[0] <= got <= ci[1])
        if hits:
            counts[metric] = (sum(hits), len(hits))
    return InsideCi(**counts) if counts else None


def log_residuals(runs: Sequence[CalibrationRun], predicted: Sequence[Metrics]) -> list[float]:
    out = []
    for run, p in zip(runs, predicted, strict=True):
        for metric in METRICS:
            got, want = getattr(p, metric), getattr(run.measured, metric)
            if got is not None and want is not None:
                out.append(math.log(max(got, 1e-12) / want))
    return out


# Fitted on ln(value); the rest (fixed costs and shares that may be 0) on ln(1 + value).
LOG_SCALED = ("decode_bandwidth", "prefill_flops")
PRICES: tuple[str, ...] = get_args(PriceName)  # what a pass costs
# A step log prices prompt passes of many sizes, which tells a prompt pass's own fixed cost from its FLOPs.
LOGGED_PRICES = (*PRICES, "prompt_overhead_ms")
ANALYTIC = (*PRICES, "queued_prefills")
# A replayed scheduler (planner/replay.py) queues prompts itself: no share of other prompts is fitted; the
# server's time to take in each request (ingest_ms) is scanned, not searched (it moves requests between passes).
REPLAYED = PRICES


def _to_values(x: Sequence[float], names: Sequence[str], base: FittedValues, bounds: Bounds = BOUNDS) -> FittedValues:
    update = {}
    for name, xi in zip(names, x, strict=True):
        lo, hi = bounds[name]
        update[name] = min(hi, max(lo, math.exp(xi) if name in LOG_SCALED else math.expm1(xi)))
    return base.model_copy(update=update)


def _to_x(v: FittedValues, names: Sequence[str]) -> list[float]:
    return [math.log(getattr(v, n)) if n in LOG_SCALED else math.log1p(getattr(v, n)) for n in names]


def nelder_mead(f: Callable[[list[float]], float], start: list[float], step: float = 0.5) -> list[float]:
    """Minimize f from `start` (standard reflection / expansion / contraction / shrink coefficients)."""
    n = len(start)
    simplex = [list(start)] + [[s + (step if i == j else 0.0) for j, s in enumerate(start)] for i in range(n)]
    scores = [f(p) for p in simplex]
    for _ in range(MAX_ITERATIONS):
        order = sorted(range(n + 1), key=scores.__getitem__)
        simplex, scores = [simplex[i] for i in order], [scores[i] for i in order]
        if scores[-1] - scores[0] < TOLERANCE:
            break
        centroid = [sum(p[j] for p in simplex[:-1]) / n for j in range(n)]
        worst = simplex[-1]

        def toward(t: float, centroid: list[float] = centroid, worst: list[float] = worst) -> list[float]:
            return [c + t * (w - c) for c, w in zip(centroid, worst, strict=True)]

        reflected = toward(-1.0)
        fr = f(reflected)
        if fr < scores[0]:
            expanded = toward(-2.0)
            fe = f(expanded)
            simplex[-1], scores[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < scores[-2]:
            simplex[-1], scores[-1] = reflected, fr
        else:
            contracted = toward(0.5)
            fc = f(contracted)
            if fc < scores[-1]:
                simplex[-1], scores[-1] = contracted, fc
            else:
                best = simplex[0]
                simplex = [best] + [[b + 0.5 * (p - b) for b, p in zip(best, q, strict=True)] for q in simplex[1:]]
                scores = [scores[0]] + [f(p) for p in simplex[1:]]
    return simplex[min(range(n + 1), key=scores.__getitem__)]


def _minimize(cost: Callable[[list[float]], float], x: list[float]) -> list[float]:
    """Nelder-Mead from `x`, restarted around its best point until a restart gains nothing (a simplex can
    collapse early)."""
    score = cost(x)
    for _ in range(RESTARTS):
        nxt = nelder_mead(cost, x)
        got = cost(nxt)
        if got >= score - TOLERANCE:
            break
        x, score = nxt, got
    return x


def rms_residual(runs: Sequence[CalibrationRun], predict: Predictor, values: FittedValues) -> float:
    """What the fit minimizes, as an RMS: ln(predicted / measured) over the runs' figures."""
    residuals = log_residuals(runs, [predict(run, values) for run in runs])
    return math.sqrt(sum(r * r for r in residuals) / max(1, len(residuals)))


def fit_values(
    runs: Sequence[CalibrationRun],
    predict: Predictor,
    start: FittedValues,
    names: Sequence[str] = ANALYTIC,
    bounds: Bounds = BOUNDS,
) -> FittedValues:
    """The values `names` that minimize the squared log residuals over `runs` (the others stay as in
    `start`); `rms_residual` says what they leave."""

    def cost(x: list[float]) -> float:
        values = _to_values(x, names, start, bounds)
        return sum(r * r for r in log_residuals(runs, [predict(run, values) for run in runs]))

    return _to_values(_minimize(cost, _to_x(start, names)), names, start, bounds)


Pricer = Callable[[FittedValues], StepCost]
# The pass fit's cost is a weighted mean of squared ln residuals (~1e-3 at a 3% fit); scaled so that the
# simplex's TOLERANCE stops it near 0.03% rather than 0.3%, where a prompt pass's fixed cost and its FLOPs
# would still trade against each other.
PASS_COST_SCALE = 1e3
PROMPT_STARTS_MS = (0.0, 5.0, 25.0, 100.0)  # starting points of a prompt pass's fixed cost (fit_pass_prices)
MIN_PROMPT_KINDS = 2  # kinds of pass with prompt tokens a step log needs before it can price prompts


def fit_pass_prices(
    classes: Sequence[PassClass], price: Pricer, start: FittedValues, bounds: Bounds = BOUNDS
) -> FittedValues:
    """The LOGGED_PRICES values whose StepCost best matches a server's logged passes (pass_fit says how well).

    Each kind of pass (decoding sequences, prompt tokens) is one residual, ln(price / mean gap), weighted by
    the engine time its passes took: a kind seen once weighs what it cost, and the decode passes a run
    spends most of its time in are priced closest. A logged pass's gap is what a stream waited, so the
    prices are in the units the replay charges."""
    total = sum(c.busy_s for c in classes)

    def cost(x: list[float]) -> float:
        step = price(_to_values(x, LOGGED_PRICES, start, bounds))
        return PASS_COST_SCALE * sum(c.busy_s * _log_gap(step, c) ** 2 for c in classes) / total

    # A prompt pass's fixed cost and the FLOP rate trade along a shallow valley, and a simplex started at
    # no fixed cost can stay there (on the 2-core VM one probe's fit found 21 ms, another 0 from the same
    # logs): start from several and keep the best.
    starts = [_to_x(start.model_copy(update={"prompt_overhead_ms": ms}), LOGGED_PRICES) for ms in PROMPT_STARTS_MS]
    best_x = min((_minimize(cost, x) for x in starts), key=cost)
    return _to_values(best_x, LOGGED_PRICES, start, bounds)


def _log_gap(step: StepCost, c: PassClass) -> float:
    return math.log(max(step(c.decoding, c.prompt_tokens), 1e-12) / c.mean_s)


def settle_undetermined(
    values: FittedValues, start: FittedValues, evidence: Callable[[FittedValues], list[float | None]]
) -> tuple[FittedValues, list[str]]:
    """`values` with each price moved back toward its start (the catalog's) as far as nothing the fit saw
    changes, and the names of those put all the way back.

    Why: a value no prediction moves with is wherever the simplex left it, and it is not harmless. On the
    2-core CPU VM every pass of SmolLM2-135M is compute-bound, so the runs say nothing of memory bandwidth
    and the fitted decode_bandwidth landed anywhere from 0.6 to the bound, 4; a plan for an 8B model on the
    same CPU, memory-bound, then predicted a TPOT of 191 or 106 ms from the same runs (uncalibrated: 148).
    Where the runs bound a price from one side only (memory must not bind, or the logged passes would
    cost more), it goes to the edge nearest the catalog's figure: the most cautious value they allow.
    "Changes" means by more than a part in a million in any figure of the evidence."""
    seen = evidence(values)

    def same(v: FittedValues) -> bool:
        return all(_same_number(a, b) for a, b in zip(seen, evidence(v), strict=True))

    kept: list[str] = []
    for name in PRICES:
        fitted, catalog = getattr(values, name), getattr(start, name)
        if fitted == catalog:
            continue

        toward = _Toward(values, name, catalog, fitted)
        if same(toward(0.0)):
            values = toward(0.0)
            kept.append(name)
        elif same(toward(1 - SETTLE_STEP)):  # free near the fit: find the edge of what the runs allow
            lo, hi = 0.0, 1 - SETTLE_STEP  # at lo the evidence differs, at hi it does not
            for _ in range(SETTLE_BISECTIONS):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if same(toward(mid)) else (mid, hi)
            values = toward(hi)
    return values, kept


@dataclass(frozen=True, slots=True)
class _Toward:
    """`values` with one price `t` of the way from its catalog figure (0) to its fitted one (1)."""

    values: FittedValues
    name: str
    catalog: float
    fitted: float

    def __call__(self, t: float) -> FittedValues:
        return self.values.model_copy(update={self.name: self.catalog + (self.fitted - self.catalog) * t})


SETTLE_STEP = 1e-3  # a price that moves the evidence this close to its fitted value is pinned by it
SETTLE_BISECTIONS = 12  # the edge to 1/4096 of the way from the fit to the catalog's figure


def _same_number(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b), 1e-12)


INGEST_POINTS = 48  # log-spaced candidates between INGEST_LOW_MS and the bound, then a linear refinement
INGEST_LOW_MS = 0.05


def scan_ingest(runs: Sequence[CalibrationRun], predict: Predictor, values: FittedValues) -> FittedValues:
    """The server's per-request intake time (ingest_ms) that best predicts `runs`, with the other values fixed.

    Why a scan: the intake decides which pass a request sent beside others lands in, so the predicted
    figures jump where a request moves to the next pass; a simplex stalls on such steps. The scan tries 0
    and log-spaced values up to the bound, then 10 evenly spaced ones between the best's neighbours; the
    first best wins (the smallest intake that explains the runs)."""
    hi = BOUNDS["ingest_ms"][1]

    def cost(ms: float) -> float:
        v = values.model_copy(update={"ingest_ms": ms})
        return sum(r * r for r in log_residuals(runs, [predict(run, v) for run in runs]))

    grid = [0.0] + [INGEST_LOW_MS * (hi / INGEST_LOW_MS) ** (i / (INGEST_POINTS - 1)) for i in range(INGEST_POINTS)]
    scores = [cost(ms) for ms in grid]
    i = min(range(len(grid)), key=scores.__getitem__)
    lo_ms, hi_ms = grid[max(0, i - 1)], grid[min(len(grid) - 1, i + 1)]
    fine = [lo_ms + (hi_ms - lo_ms) * k / 10 for k in range(11)]
    best = min([(scores[i], grid[i])] + [(cost(ms), ms) for ms in fine])[1]
    return values.model_copy(update={"ingest_ms": round(best, 3)})


MAX_PASS_ROWS = 24


def pass_fit(sources: Sequence[str], classes: Sequence[PassClass], step: StepCost) -> PassFit:
    """The step-log evidence a calibration keeps: the kinds of pass that took the most engine time, priced."""
    kept = sorted(sorted(classes, key=lambda c: -c.busy_s)[:MAX_PASS_ROWS], key=lambda c: (c.decoding, c.prompt_tokens))
    rows = [
        PassRow(
            decoding=c.decoding,
            prompt_tokens=c.prompt_tokens,
            passes=c.passes,
            measured_ms=c.mean_s * 1e3,
            fitted_ms=max(step(c.decoding, c.prompt_tokens), 1e-9) * 1e3,
        )
        for c in kept
    ]
    total = sum(c.busy_s for c in classes)
    logs = [(c.busy_s, _log_gap(step, c)) for c in classes]
    rms = math.sqrt(sum(w * x * x for w, x in logs) / total)
    bias = math.exp(sum(w * x for w, x in logs) / total) - 1
    return PassFit(
        sources=list(sources), passes=sum(c.passes for c in classes), rms_log_residual=rms, bias=bias, rows=rows
    )


def check_passes(sources: Sequence[str], step: StepCost) -> PassFit:
    """Held-out runs' logged passes priced at the fitted prices: whether a held-out miss is in the prices
    (the passes themselves cost otherwise) or in the arrangement (the prices hold, the runs' passes came in
    another order than the replay's). On the 2-core CPU VM the eighth set's c2 logs were priced 9.5% cheap
    overall, their two-sequence decodes 11%, while c16's were within 2.2% (docs/BENCHMARKS.md)."""
    classes = pass_classes(read_passes(sources))
    if not classes:
        raise PlannerError(f"the step log(s) {', '.join(sources)} hold no busy pass to check the prices on")
    return pass_fit(sources, classes, step)


def logged_classes(step_logs: Sequence[str]) -> list[PassClass]:
    """The kinds of pass in the fit runs' step logs; a log that cannot price both decodes and prompts is
    refused with one line (a fit would leave the missing kind to the start values)."""
    classes = pass_classes(read_passes(step_logs))
    decode = [c for c in classes if c.prompt_tokens == 0]
    prompts = {c.prompt_tokens for c in classes if c.prompt_tokens}
    if not decode or len(prompts) < MIN_PROMPT_KINDS:
        raise PlannerError(
            f"the step log(s) {', '.join(step_logs)} hold {sum(c.passes for c in decode)} decode-only busy passes and "
            f"{len(prompts)} prompt size(s): a fit needs decode passes and at least {MIN_PROMPT_KINDS} prompt sizes "
            "(log a run with several concurrent requests, e.g. concurrency 8)"
        )
    return classes


def measured_pass_spread(runs: Sequence[CalibrationRun]) -> float:
    """The fit runs' pass-time scatter: the gap spread of those at the lowest concurrency that has one,
    where a gap is one pass (at 8 streams a gap also holds other requests' prompt chunks). 0 without one."""
    seen = [(r.concurrency, r.gap_spread) for r in runs if r.gap_spread is not None]
    if not seen:
        return 0.0
    low = min(c for c, _ in seen)
    return statistics.median(s for c, s in seen if c == low)


def _same(runs: Sequence[CalibrationRun], attr: str) -> str:
    seen = {str(getattr(r, attr)) for r in runs}
    if len(seen) > 1:
        raise PlannerError(f"the runs differ in {attr} ({', '.join(sorted(seen))}): calibrate one {attr} at a time")
    return seen.pop()


def calibrate(
    runs: Sequence[CalibrationRun],
    held_out: Sequence[CalibrationRun] = (),
    catalog: Catalog | None = None,
    hw: Hardware | None = None,
    measure: Callable[[], CpuMeasurement] | None = None,
    pass_spread: float | Literal["measured"] = DEFAULT_PASS_SPREAD,
    step_logs: Sequence[str] = (),
    held_out_step_logs: Sequence[str] = (),
) -> CalibrationDoc:
    """Fit on `runs`, check on `held_out`, and describe both in a calibration document.

    Repeats of one set of conditions count as one run (pool_repeats), in either list.

    `pass_spread` scatters each replayed pass's time (planner/replay.py) by that sd of ln, or by the fit
    runs' own ("measured": measured_pass_spread); it is measured, never fitted, and the other values are
    fitted with exact prices either way. The measured scatter is the default (DEFAULT_PASS_SPREAD): the
    earlier evidence against it (16.8 -> 8.3% on one set, 2.2 -> 12.9% on another) came from pooled points
    replayed at four times their length, a bug fixed since; re-read, it helps (DEFAULT_PASS_SPREAD).

    `held_out_step_logs` are held-out runs' logs: their passes are priced at the fitted prices and kept
    beside the held-out error (`held_out_passes`), which tells a miss in the prices from one in the runs'
    arrangement of passes.

    `step_logs` are the fit runs' servers' own logs (`serve --step-log`): the pass prices are then fitted
    to the logged passes (fit_pass_prices) and only what the server cannot see is fitted to the runs (the
    intake time of a replayed engine, the queued share of an analytic one). Without them the prices are
    fitted to the runs' figures, which a few figures cannot always separate (planner/step_log.py).

    On a replayed engine the server's intake time (ingest_ms) is then scanned with the prices fixed
    (scan_ingest); without step logs the prices are fitted once more around it.

    All runs must share engine, engine version, device, format and (on CPU) threads: one calibration
    describes one engine (and, for vLLM, one release's memory rule) on one device. On CPU the device is
    measured once here, with the runs' thread count."""
    if not runs:
        raise PlannerError("calibrate needs at least one measured run")
    if pass_spread != "measured" and not 0 <= pass_spread <= MAX_SPREAD:
        raise PlannerError(
            f"--pass-spread is a standard deviation of ln time between 0 and {MAX_SPREAD:g}, not {pass_spread}"
        )
    runs, held_out = pool_repeats(runs), pool_repeats(held_out)
    everything = [*runs, *held_out]
    engine, gpu = _same(everything, "engine"), _same(everything, "gpu")
    _same(everything, "format")
    version = runs[0].engine_version
    _same(everything, "engine_version")
    if version is not None and engine != "vllm":
        raise PlannerError(f"an engine version names a vLLM release; these runs served with {engine}")
    threads = _same(everything, "threads")
    cat = catalog or load_catalog()
    hw = hw or detect()
    if gpu == "cpu" and measure is None:
        from planner.cpu_probe import measure as probe

        m = probe(int(threads) if threads != "None" else None)
        measure = lambda: m  # noqa: E731 - the probe's signature: no arguments
    measurement = measure() if gpu == "cpu" and measure is not None else None
    predict = predictor(cat, hw, measure)
    first = predict_one(run_options(runs[0]), cat, hw, measure)
    a = first.assumptions
    start = FittedValues(
        decode_bandwidth=float(a["decode_bandwidth_efficiency"]),
        prefill_flops=float(a["prefill_flops_efficiency"]),
        step_overhead_ms=float(a["step_overhead_ms"]),
        queued_prefills=0.25,  # a start inside the bounds, not at one
        seq_overhead_us=max(1.0, float(a["seq_overhead_us"])),
    )
    bounds = bounds_for("cpu" if gpu == "cpu" else "gpu")
    replayed = a.get("closed_loop") == "replayed"
    if replayed:
        start = start.model_copy(update={"queued_prefills": 0.0})
    passes = None
    # logged passes are priced in the first fit run's workload (its context)
    price = pass_pricer(run_options(runs[0]), cat, hw, measure) if step_logs or held_out_step_logs else None
    if step_logs:
        assert price is not None
        classes = logged_classes(step_logs)
        values = fit_pass_prices(classes, price, start, bounds)
        passes = pass_fit(step_logs, classes, price(values))
        if not replayed:
            values = fit_values(runs, predict, values, ("queued_prefills",), bounds)
    else:
        values = fit_values(runs, predict, start, REPLAYED if replayed else ANALYTIC, bounds)
    if replayed:
        values = scan_ingest(runs, predict, values)
        if not step_logs:
            values = fit_values(runs, predict, values, REPLAYED, bounds)

    def evidence(v: FittedValues) -> list[float | None]:
        """Everything a fit can see: the fit runs' predicted figures and, with step logs, the logged passes' prices."""
        figures = [getattr(predict(r, v), m) for r in runs for m in METRICS]
        if not step_logs:
            return figures
        step = price(v)
        return figures + [step(c.decoding, c.prompt_tokens) for c in classes]

    values, undetermined = settle_undetermined(values, start, evidence)
    held_out_passes = None
    if held_out_step_logs:
        assert price is not None
        held_out_passes = check_passes(held_out_step_logs, price(values))
    rms = rms_residual(runs, predict, values)
    spread = measured_pass_spread(runs) if pass_spread == "measured" else pass_spread
    values = values.model_copy(update={"pass_spread": round(spread, 4)})
    runs = [
        r.model_copy(update={"predicted_before": predict(r, None), "predicted_after": predict(r, values)}) for r in runs
    ]
    held_out = [
        r.model_copy(update={"predicted_before": predict(r, None), "predicted_after": predict(r, values)})
        for r in held_out
    ]
    error = FitError(
        fit_before=error_row(runs, [r.predicted_before for r in runs]),
        fit_after=error_row(runs, [r.predicted_after for r in runs]),
        rms_log_residual=rms,
    )
    if held_out:
        error.held_out_before = error_row(held_out, [r.predicted_before for r in held_out])
        error.held_out_after = error_row(held_out, [r.predicted_after for r in held_out])
    seqs = {r.max_num_seqs for r in runs}
    return CalibrationDoc(
        created_at=now(),
        engine=engine,
        engine_version=version,
        device_kind="cpu" if gpu == "cpu" else "gpu",
        device=first.device,
        values=values,
        max_num_seqs=seqs.pop() if len(seqs) == 1 else None,
        cpu=cpu_figures(measurement) if measurement is not None else None,
        runs=list(runs),
        held_out=list(held_out),
        error=error,
        passes=passes,
        held_out_passes=held_out_passes,
        undetermined=undetermined,
        source=f"python -m planner calibrate: least squares on ln(predicted/measured) over {len(runs)} run(s)"
        + (f", pass prices on {passes.passes} logged passes" if passes else ""),
    )


def _cell(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}%"


def format_fit(doc: CalibrationDoc) -> list[str]:
    """Console lines: the fitted values, then median absolute % error before and after, fit and held out."""
    v, e = doc.values, doc.error
    kept = (
        [f"kept at the catalog's, no prediction moved with it: {', '.join(doc.undetermined)}"]
        if doc.undetermined
        else []
    )
    lines = [
        f"calibrated {doc.served} on {doc.device} ({doc.device_kind}) from {sum(r.repeats for r in doc.runs)} run(s)"
        + (f", {sum(r.repeats for r in doc.held_out)} held out" if doc.held_out else ""),
        f"decode_bandwidth {v.decode_bandwidth:.4g}, prefill_flops {v.prefill_flops:.4g}, "
        f"step_overhead_ms {v.step_overhead_ms:.4g}, seq_overhead_us {v.seq_overhead_us:.4g}, "
        f"queued_prefills {v.queued_prefills:.3g}, prompt_overhead_ms {v.prompt_overhead_ms:.3g}, "
        f"ingest_ms {v.ingest_ms:.3g} "
        f"(RMS ln residual {e.rms_log_residual:.3f})",
        f"pass_spread {v.pass_spread:.3g}" + _spread_hint(doc),
        *kept,
        "median absolute error      TTFT     TPOT   output tok/s   inside the runs' 95% CI: TTFT, TPOT",
    ]
    rows = [("fit runs, before", e.fit_before), ("fit runs, after", e.fit_after)]
    if e.held_out_before and e.held_out_after:
        rows += [("held-out runs, before", e.held_out_before), ("held-out runs, after", e.held_out_after)]
    for name, row in rows:
        label = f"{name} ({row.runs})"
        lines.append(
            f"{label:<25} {_cell(row.ttft_ms):>6}  {_cell(row.tpot_ms):>7}  {_cell(row.output_tok_s):>10}"
            + (f"   {format_inside(row.inside_ci95):>12}" if row.inside_ci95 else "")
        )
    lines.append("per run, measured [its median's 95% CI] / calibrated prediction: TTFT ms, TPOT ms, output tok/s")
    lines += _pass_lines(doc)
    for kind, group in (("fit", doc.runs), ("held out", doc.held_out)):
        for r in group:
            m, p = r.measured, r.predicted_after or Metrics()
            cells = "  ".join(
                f"{_num(getattr(m, k))}{_interval(r, k)} / {_num(getattr(p, k))}"
                for k in ("ttft_ms", "tpot_ms", "output_tok_s")
            )
            hits = r.cached_input_tokens
            cached = f"  ({hits} of {r.input_tokens} prompt tokens cached)" if hits else ""
            repeats = f"  (median of {r.repeats} runs)" if r.repeats > 1 else ""
            lines.append(f"  {kind:<8} c={r.concurrency:<3} {cells}{cached}{repeats}")
    return lines


def format_inside(inside: InsideCi | None) -> str:
    """Per median (TTFT, then TPOT), the predictions inside their run's own 95% interval as k/n; "-" for none."""
    if inside is None:
        return "-"
    return ", ".join(f"{k[0]}/{k[1]}" if (k := getattr(inside, metric)) else "-" for metric in CI_METRICS)


def _interval(run: CalibrationRun, metric: str) -> str:
    ci = run.ci95(metric)
    return "" if ci is None else f" [{ci[0]:.1f}-{ci[1]:.1f}]"


def _pass_lines(doc: CalibrationDoc) -> list[str]:
    lines = []
    for p, what in ((doc.passes, "pass prices fitted to"), (doc.held_out_passes, "held-out runs: fitted prices on")):
        if p is None:
            continue
        overall = f", {p.bias * 100:+.1f}% overall" if p.bias is not None else ""
        lines.append(
            f"{what} {p.passes} logged passes ({len(p.sources)} step log(s)), RMS ln residual "
            f"{p.rms_log_residual:.3f} weighted by engine time{overall}; the kinds that took the most time, "
            "measured / fitted ms:"
        )
        lines += [
            f"  {r.decoding:>3} decoding + {r.prompt_tokens:>4} prompt tokens  x{r.passes:<5} "
            f"{r.measured_ms:7.1f} / {r.fitted_ms:7.1f} ({(r.fitted_ms / r.measured_ms - 1) * 100:+.1f}%)"
            for r in p.rows
        ]
    return lines


def _spread_hint(doc: CalibrationDoc) -> str:
    seen = measured_pass_spread(doc.runs)
    if not seen or doc.values.pass_spread:
        return ""
    return f" (replayed exactly; the fit runs' inter-token gaps scatter by sd of ln {seen:.3g}: --pass-spread measured)"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"
