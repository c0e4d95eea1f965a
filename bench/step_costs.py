"""What each kind of engine pass cost in the server, from `serve --step-log`, and what the planner's replay of
the scheduler predicts when it is given those measured prices (issue 22).

    .venv/bin/python bench/step_costs.py STEPS.jsonl [more.jsonl ...] [--measured c2.json c4.json ...]
        [--each] [--stat mean|median] [--ingest-ms MS]

The log is read by the planner's own reader (planner/step_log.py, which `planner calibrate --step-log`
fits its pass prices with). Prints the passes the log holds, by decoding sequences and prompt tokens:
how many, and the mean time from one pass's start to the next one's while the engine was busy (what a
stream waits between its tokens: the step itself and the loop's turn-around). With `--measured`
benchmark results of the same server (`python -m checks bench --target URL --out FILE`), each run is
replayed through the planner's own replay of the bundled engine's scheduler (planner/replay.py, with
the limits `predict` uses), each pass priced from the log instead of from the roofline, next to what
the run measured:

- decode-only passes: the mean gap at that many sequences, linear between the counts the log holds
  (and along the last two counts' line beyond them);
- passes that carry prompt tokens: a least-squares line in prompt tokens and decoding sequences.

With `--each`, the logs and the results pair up in order (one server, one log per run) and each run is
priced from its own log: on a VM whose speed drifts between runs, pooled prices fit no run. `--stat
median` prices decode-only passes at their median gap instead of the mean (a few slow passes move a
mean; a request's median TPOT rarely sees them). `--ingest-ms` replays the server taking in each request
that long after the one before it (planner/replay.py; `planner calibrate` fits it as ingest_ms).

This separates the two halves of a calibrated prediction's error: with right prices, what is left is
the replay's (the order and timing of passes); the gap between these prices and the calibrated ones
is the cost model's. Measure the log and the runs in one session on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench._common import format_table  # noqa: E402
from planner.errors import PlannerError  # noqa: E402
from planner.step_log import Pass, read_passes  # noqa: E402


@dataclass(frozen=True, slots=True)
class MeasuredPrices:
    """Pass prices from a step log, callable as the replay's cost (decoding sequences, prompt tokens) -> s."""

    decode_s: dict[int, float]  # decoding sequences -> mean gap of decode-only passes
    mixed: tuple[float, float, float]  # s = a + b * prompt tokens + c * decoding sequences

    def __call__(self, b: int, p: float = 0.0) -> float:
        if p > 0:
            a, per_token, per_seq = self.mixed
            return max(1e-6, a + per_token * p + per_seq * b)
        return _along(self.decode_s, b)


def _along(table: dict[int, float], x: int) -> float:
    """Linear between the nearest counts in `table`; beyond its ends, along its first or last two points."""
    keys = sorted(table)
    if x in table or len(keys) == 1:
        return table.get(x, table[keys[0]])
    if x < keys[0]:
        lo, hi = keys[0], keys[1]
    elif x > keys[-1]:
        lo, hi = keys[-2], keys[-1]
    else:
        lo, hi = max(k for k in keys if k < x), min(k for k in keys if k > x)
    return max(1e-6, table[lo] + (table[hi] - table[lo]) * (x - lo) / (hi - lo))


def fit_prices(passes: Sequence[Pass], stat: str = "mean") -> MeasuredPrices:
    decode: dict[int, list[float]] = defaultdict(list)
    for p in passes:
        if p.prompt_tokens == 0 and p.decoding > 0:
            decode[p.decoding].append(p.gap_s)
    mixed = [p for p in passes if p.prompt_tokens > 0]
    if not decode or len(mixed) < 3:
        raise SystemExit("the step log needs decode-only passes and at least 3 passes with prompt tokens")
    average = statistics.median if stat == "median" else statistics.fmean
    return MeasuredPrices({b: average(v) for b, v in decode.items()}, _least_squares(mixed))


def _least_squares(mixed: Sequence[Pass]) -> tuple[float, float, float]:
    """gap = a + b * prompt tokens + c * decoding sequences; c is 0 when every pass had as many sequences
    (that term cannot be told apart from a then)."""
    spread = len({p.decoding for p in mixed}) > 1
    columns = [[1.0] * len(mixed), [float(p.prompt_tokens) for p in mixed]]
    if spread:
        columns.append([float(p.decoding) for p in mixed])
    design = np.array(columns).T
    coef, _, rank, _ = np.linalg.lstsq(design, np.array([p.gap_s for p in mixed]), rcond=None)
    if rank < design.shape[1]:
        raise SystemExit("the passes with prompt tokens do not determine a line (too few distinct sizes)")
    return float(coef[0]), float(coef[1]), float(coef[2]) if spread else 0.0


def pass_table(passes: Sequence[Pass]) -> list[list[str]]:
    groups: dict[tuple[int, int], list[float]] = defaultdict(list)
    for p in passes:
        groups[(p.decoding, p.prompt_tokens)].append(p.gap_s)
    return [
        [str(b), str(t), str(len(v)), f"{statistics.fmean(v) * 1e3:.1f}", f"{statistics.median(v) * 1e3:.1f}"]
        for (b, t), v in sorted(groups.items())
        if len(v) >= 2 or t > 0
    ]


def replay_rows(prices: Sequence[MeasuredPrices], results: Sequence[Path], ingest_s: float = 0.0) -> list[list[str]]:
    """One row per run; `prices` has one entry for all runs, or one per result file. `ingest_s`: the
    server's time to take in each request, one at a time (planner/replay.py)."""
    from planner.calibrate_cli import BUNDLED_MODEL, ServedBy, load_runs
    from planner.catalog import load_catalog
    from planner.predict import Knobs, replayer, scheduler_limits
    from planner.roofline import Device, Parallel
    from planner.workload import computed_input_tokens

    catalog = load_catalog()
    engine = catalog.engines["bundled"]
    cpu = Device(name="cpu", kind="cpu", vendor="cpu", memory_bytes=0, bandwidth_bytes_s=1.0, flops={})
    rows = []
    served = ServedBy(model=BUNDLED_MODEL, gpu="cpu", engine="bundled", format="int4")  # for runs against a URL
    for i, path in enumerate(results):
        [run] = load_runs([str(path)], served)
        price = prices[i] if len(prices) > 1 else prices[0]
        context = run.input_tokens + run.output_tokens + 1
        # Prompt tokens the prefix cache served (the chat template's first block) are never prefilled: the
        # replay packs what the engine computed, as `predict` does.
        computed = computed_input_tokens(run.input_tokens, run.cached_input_tokens)
        limits = scheduler_limits(engine, cpu, context, Parallel(), catalog, Knobs(max_num_seqs=run.max_num_seqs))
        replay = replayer(
            price,  # type: ignore[arg-type] - a StepCost in all but name: (sequences, prompt tokens) -> s
            limits,
            limits.max_num_seqs or run.concurrency,
            "continuous",
            computed,
            run.output_tokens,
            run.concurrency,
            run.requests,
            ingest_s=ingest_s,
        )
        if replay is None:
            raise SystemExit(f"{run.source}: the planner does not replay this run (too long, or not bundled)")
        got = replay(run.concurrency, run.requests)
        m = run.measured
        rows.append(
            [
                str(run.concurrency),
                _pair(m.ttft_ms, got.ttft_s * 1e3),
                _pair(m.tpot_ms, got.tpot_s * 1e3),
                _pair(m.output_tok_s, got.output_tok_s),
            ]
        )
    return rows


def _pair(measured: float | None, replayed: float) -> str:
    if measured is None:
        return f"- / {replayed:.1f}"
    return f"{measured:.1f} / {replayed:.1f} ({(replayed / measured - 1) * 100:+.1f}%)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logs", nargs="+", type=Path, help="step logs written by `python -m engine serve --step-log`")
    ap.add_argument("--measured", nargs="*", type=Path, default=[], help="benchmark results of the same server")
    ap.add_argument("--each", action="store_true", help="price each result from the log at its position")
    ap.add_argument("--stat", choices=("mean", "median"), default="mean", help="decode-only pass price")
    ap.add_argument(
        "--ingest-ms", type=float, default=0.0, help="server time to take in each request, one at a time (replay)"
    )
    args = ap.parse_args()
    if args.each and len(args.logs) != len(args.measured):
        ap.error(f"--each pairs logs with results: {len(args.logs)} log(s), {len(args.measured)} result(s)")
    groups = [[log] for log in args.logs] if args.each else [args.logs]
    prices = []
    for logs in groups:
        try:
            passes = read_passes(logs)
        except PlannerError as exc:
            raise SystemExit(str(exc)) from None
        print(f"{', '.join(str(p) for p in logs)}:")
        print(format_table(["decoding", "prompt tok", "passes", "mean ms", "median ms"], pass_table(passes)))
        price = fit_prices(passes, args.stat)
        a, per_token, per_seq = price.mixed
        decode = ", ".join(f"{b}: {s * 1e3:.1f} ms" for b, s in sorted(price.decode_s.items()))
        print(
            f"passes with prompt tokens: {a * 1e3:.2f} ms + {per_token * 1e3:.3f} ms per prompt token"
            f" + {per_seq * 1e3:.2f} ms per decoding sequence\ndecode-only passes ({args.stat} gap): {decode}\n"
        )
        prices.append(price)
    if args.measured:
        print("replayed with these prices (measured / replayed):")
        head = ["concurrency", "TTFT p50 ms", "TPOT p50 ms", "output tok/s"]
        print(format_table(head, replay_rows(prices, args.measured, args.ingest_ms / 1e3)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
