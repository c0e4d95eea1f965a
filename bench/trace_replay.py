"""Ten minutes of a public LLM trace, replayed against our server and llama-server on the same GGUF.

    .venv/bin/python bench/trace_replay.py [--minutes 10] [--trace-sample 0.03] [--trace-speed 1] [--seed 0]
        [--threads N] [--max-num-seqs 16] [--warmup 1] [--eager] [--peer llama-server|none]
        [--turns 4] [--sessions 3] [--session-concurrency 2] [--think-time-ms 500]
        [--session-input-len 128] [--session-output-len 32] [--json OUT]

    smoke test:  .venv/bin/python bench/trace_replay.py --minutes 1 --trace-sample 0.02 --peer none

The trace is the first ten minutes of Azure's 2023 conversation trace, stored in
bench/data (bench/data/TRACES.md: source, licence, rows). At about 4.8 requests a
second of ~1,150-token prompts it is far more than a 2-core CPU serves, and slowing it
down to what the machine serves would take hours, so the replay is thinned instead:
each row is kept with probability --trace-sample from a generator seeded by --seed
(checks.load.traces.sample_draws), and the kept rows are sent at their recorded times
(--trace-speed 1). The bursts and the mix of lengths stay; both servers get the same
rows, prompts and schedule. The default 0.03 keeps 94 of the 2,867 rows (seed 0): 0.16
requests and about 184 prompt and 41 answer tokens a second, 4 to 14 arrivals a minute,
well inside what the bundled int4 server prefills on 2 cores (572 tok/s at 512 tokens,
docs/BENCHMARKS.md) and inside llama.cpp's 287. At 0.05 (154 rows) the prompts alone
ask 311 tok/s, more than llama.cpp prefills on that machine, so its queue would grow.

Our server (`python -m engine serve`, int4, compiled decode as `engine serve` runs it
unless --eager) and then llama-server (bench/_llama_server.py finds or builds it), one
after the other, never together, each driven by Preflight's own load generator through
`checks.load.benchmark` (`BenchmarkConfig` with --trace/--trace-sample, greedy decoding,
EOS ignored so every answer has its recorded length, the first --warmup rows sent alone
first and left out). The tables: per minute of trace time, the requests that arrived and
their TTFT p50/p90 and TPOT p50, and the output tokens per second streamed during that
minute of replay, both servers side by side; the whole run's summary with ratios
ours/theirs; then a short multi-turn part (`turns` in BenchmarkConfig: --sessions
conversations of --turns turns, each resending the history, --session-concurrency at
once, --think-time-ms between turns) with TTFT per turn, turn 1 against turns 2+.
Without llama-server (not built, or --peer none) the tables show ours alone and say why.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO_ROOT, conditions, fmt_num, fmt_ratio, format_table, physical_cores, ratio_row  # noqa: E402
from bench._llama_server import LlamaServerError  # noqa: E402
from checks.load.benchmark import BenchmarkConfig, make_target, measure  # noqa: E402
from checks.load.targets import TargetError  # noqa: E402
from checks.load.traces import TraceRow, check_sample, load_trace  # noqa: E402
from reports.benchmark_result import BenchmarkResult  # noqa: E402
from reports.records import RequestRecord  # noqa: E402
from reports.stats import percentile  # noqa: E402
from reports.throughput import chunks_of, rate_bins  # noqa: E402

TRACE = REPO_ROOT / "bench" / "data" / "azure-llm-conv-2023-first-10min.csv"
TRACE_MINUTES = 10  # what the stored file holds
CHAT_OVERHEAD_TOKENS = 64  # chat template around a prompt, for sizing llama-server's context
SIDES = ("ours", "llama")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _shared(target: str, args: argparse.Namespace) -> dict[str, object]:
    """What both parts run with: the server, its limits and greedy decoding (every answer of its recorded length)."""
    return {
        "target": target,
        "seed": args.seed,
        "temperature": 0.0,
        "threads": args.threads,
        "max_num_seqs": args.max_num_seqs,
        "eager": args.eager,
        "scrape_metrics": False,
    }


def replay_config(target: str, args: argparse.Namespace, rows: int) -> BenchmarkConfig:
    """The trace replay: every sampled row of the window, the first --warmup of them sent alone and left out."""
    return BenchmarkConfig(
        trace=str(TRACE),
        trace_window_s=args.minutes * 60.0,
        trace_sample=args.trace_sample,
        trace_speed=args.trace_speed,
        requests=rows - args.warmup,
        warmup_requests=args.warmup,
        **_shared(target, args),
    )


def session_config(target: str, args: argparse.Namespace) -> BenchmarkConfig:
    """Multi-turn: --sessions synthetic conversations of --turns turns at --session-concurrency."""
    return BenchmarkConfig(
        profile=f"concurrency:{args.session_concurrency}",
        turns=args.turns,
        think_time_ms=args.think_time_ms,
        requests=args.sessions * args.turns,
        warmup_requests=1,
        input_len=args.session_input_len,
        output_len=args.session_output_len,
        **_shared(target, args),
    )


def measure_all(configs: list[BenchmarkConfig]) -> list[BenchmarkResult]:
    """Start (or probe) the first config's target once and measure every config on it in turn."""
    target = make_target(configs[0], _say)
    with target as endpoint:
        return [measure(config, endpoint, target, on_status=_say) for config in configs]


def run_side(target: str, args: argparse.Namespace, rows: int) -> dict[str, BenchmarkResult]:
    configs = [replay_config(target, args, rows)]
    if args.turns > 1:
        configs.append(session_config(target, args))
    results = measure_all(configs)
    return {"trace": results[0], **({"sessions": results[1]} if len(results) > 1 else {})}


def run_llama(args: argparse.Namespace, binary: Path, rows: tuple[TraceRow, ...]) -> tuple[dict, str]:
    """llama-server on the bundled GGUF, one slot per sequence our server batches, each holding the longest request."""
    from bench._llama_server import LlamaServerOptions, LlamaServerProcess, server_version
    from engine.model.gguf_file import bundled_model_path

    longest = max(r.input_len + r.output_len for r in rows)
    if args.turns > 1:
        longest = max(longest, args.turns * (args.session_input_len + args.session_output_len + CHAT_OVERHEAD_TOKENS))
    per_slot = longest + CHAT_OVERHEAD_TOKENS
    opts = LlamaServerOptions(
        bundled_model_path(), args.threads, ctx=per_slot * args.max_num_seqs, slots=args.max_num_seqs, binary=binary
    )
    with LlamaServerProcess(opts) as server:
        return run_side(server.base_url, args, len(rows)), server_version(binary)


def find_peer(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The llama-server binary, or None and why not (the run goes on with ours alone)."""
    if args.peer == "none":
        return None, "skipped (--peer none)"
    from bench._llama_server import find_or_build_llama_server

    try:
        return find_or_build_llama_server(), ""
    except LlamaServerError as exc:
        return None, f"not available: {exc}"


def measured(result: BenchmarkResult) -> list[RequestRecord]:
    return [r for r in result.runs[0].records if not r.warmup]


def replay_start(records: list[RequestRecord], rows: tuple[TraceRow, ...], speed: float) -> float | None:
    """The run-clock time at which trace second 0 would have been sent, None without a scheduled request.

    A record's request id is its row in the sampled trace (the load generator sends them
    in order), and the first measured one was sent on schedule at its row's arrival, so
    trace second t maps to that send + (t - the row's arrival) / speed.
    """
    scheduled = [(r.request_id, r.scheduled_s) for r in records if r.scheduled_s is not None]
    if not scheduled:
        return None
    rid, sent = min(scheduled)
    return sent - rows[rid].arrival_s / speed


def minute_rows(result: BenchmarkResult, rows: tuple[TraceRow, ...], speed: float, minutes: int) -> list[dict]:
    """Per minute of trace time: the requests that arrived in it, their TTFT p50/p90 and TPOT p50 (ms), and the
    output tokens per second streamed during that minute of the replay (`reports.throughput`'s binning)."""
    records = measured(result)
    start, width = replay_start(records, rows, speed), 60.0 / speed
    rates: list[float | None] = [None] * minutes
    if start is not None:
        inside = [(t, n) for t, n in chunks_of(records) if start <= t < start + minutes * width]
        rates = list(rate_bins(inside, start, width, minutes))
    out = []
    for minute in range(minutes):
        mine = [r for r in records if int(rows[r.request_id].arrival_s // 60) == minute]
        ok = [r for r in mine if r.ok]
        ttft = [r.ttft_s * 1000 for r in ok if r.ttft_s is not None]
        tpot = [r.tpot_s * 1000 for r in ok if r.tpot_s is not None]
        out.append(
            {
                "minute": minute,
                "arrived": len(mine),
                "failed": len(mine) - len(ok),
                "ttft_p50_ms": percentile(ttft, 50),
                "ttft_p90_ms": percentile(ttft, 90),
                "tpot_p50_ms": percentile(tpot, 50),
                "output_tok_s": rates[minute],
            }
        )
    return out


def backlog(result: BenchmarkResult, rows: tuple[TraceRow, ...], speed: float, minutes: int) -> dict:
    """What was still streaming after the replayed window closed: tokens, and seconds until the last one."""
    records = measured(result)
    start = replay_start(records, rows, speed)
    if start is None:
        return {"tokens": None, "seconds": None}
    end = start + minutes * 60.0 / speed
    after = [(t, n) for t, n in chunks_of(records) if t >= end]
    return {"tokens": sum(n for _, n in after), "seconds": max((t for t, _ in after), default=end) - end}


def minute_table(per_side: dict[str, list[dict]]) -> str:
    sides = [s for s in SIDES if s in per_side]
    header = ["min", "arrived"]
    for side in sides:
        header += [f"{side} TTFT p50", "p90", "TPOT p50", "tok/s", "failed"]
    table = []
    for i, row in enumerate(per_side["ours"]):
        cells = [str(row["minute"]), str(row["arrived"])]
        for side in sides:
            m = per_side[side][i]
            cells += [
                fmt_num(m["ttft_p50_ms"], 0),
                fmt_num(m["ttft_p90_ms"], 0),
                fmt_num(m["tpot_p50_ms"], 1),
                fmt_num(m["output_tok_s"]),
                str(m["failed"]),
            ]
        table.append(cells)
    return format_table(header, table)


def summary_table(ours: BenchmarkResult, theirs: BenchmarkResult | None) -> str:
    a = ours.runs[0].summary
    b = theirs.runs[0].summary if theirs is not None else None

    def row(label: str, key: str, digits: int = 1) -> list[str]:
        return ratio_row(label, getattr(a, key), getattr(b, key) if b else None, digits)[:4]

    rows = [
        ["completed / failed", f"{a.completed} / {a.failed}", f"{b.completed} / {b.failed}" if b else "-", "-"],
        row("output tok/s", "output_throughput"),
        row("requests/s", "request_throughput", 3),
        row("TTFT p50 ms", "p50_ttft_ms", 0),
        row("TTFT p90 ms", "p90_ttft_ms", 0),
        row("TTFT p99 ms", "p99_ttft_ms", 0),
        row("TPOT p50 ms", "p50_tpot_ms"),
        row("TPOT p90 ms", "p90_tpot_ms"),
        row("E2E p50 ms", "p50_e2el_ms", 0),
        row("E2E p90 ms", "p90_e2el_ms", 0),
    ]
    return format_table(["whole run", "ours", "llama-server", "ours/theirs"], rows)


def turn_table(ours: BenchmarkResult, theirs: BenchmarkResult | None) -> str:
    mine = {t.turn: t for t in ours.runs[0].summary.ttft_by_turn}
    peer = {t.turn: t for t in theirs.runs[0].summary.ttft_by_turn} if theirs is not None else {}
    rows = []
    for turn, t in mine.items():
        p = peer.get(turn)
        rows.append(
            [
                turn,
                str(t.requests),
                fmt_num(t.mean_input_tokens, 0),
                fmt_num(t.median_ttft_ms, 0),
                fmt_num(t.p90_ttft_ms, 0),
                fmt_num(p.median_ttft_ms if p else None, 0),
                fmt_num(p.p90_ttft_ms if p else None, 0),
                fmt_ratio(t.median_ttft_ms, p.median_ttft_ms if p else None),
            ]
        )
    header = ["turn", "requests", "mean in tok", "ours TTFT p50", "p90", "llama TTFT p50", "p90", "p50 ratio"]
    return format_table(header, rows)


def validity(name: str, result: BenchmarkResult) -> str | None:
    """A line when the client could not keep its schedule: then the latencies are not the server's alone."""
    check = result.runs[0].self_check
    return None if check.valid else f"{name}: client self-check FAILED ({'; '.join(check.reasons)})"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=TRACE_MINUTES, help="replay this many minutes (1-10)")
    parser.add_argument("--trace-sample", type=float, default=0.03, help="keep each row with this probability")
    parser.add_argument("--trace-speed", type=float, default=1.0, help="replay this many times faster")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample and the prompts")
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--max-num-seqs", type=int, default=16, help="our batch; llama-server gets as many slots")
    parser.add_argument("--warmup", type=int, default=1, help="first sampled rows sent alone and left out")
    parser.add_argument("--eager", action="store_true", help="our server without the compiled decode step")
    parser.add_argument("--peer", choices=("llama-server", "none"), default="llama-server")
    parser.add_argument("--turns", type=int, default=4, help="multi-turn part: turns per conversation (1 skips it)")
    parser.add_argument("--sessions", type=int, default=3, help="multi-turn part: measured conversations")
    parser.add_argument("--session-concurrency", type=int, default=2)
    parser.add_argument("--think-time-ms", type=float, default=500.0)
    parser.add_argument("--session-input-len", type=int, default=128, help="new user tokens per turn")
    parser.add_argument("--session-output-len", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None, help="also write the tables' figures and summaries here")
    args = parser.parse_args()
    if not 1 <= args.minutes <= TRACE_MINUTES:
        parser.error(f"--minutes {args.minutes}: the stored trace holds 1 to {TRACE_MINUTES} minutes")
    try:
        check_sample(args.trace_sample)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.trace_speed > 0 or math.isinf(args.trace_speed):
        parser.error("--trace-speed: give a finite factor above 0")
    return args


def main() -> int:
    args = parse_args()
    rows = load_trace(TRACE, window_s=args.minutes * 60.0, sample=args.trace_sample, seed=args.seed).rows
    if len(rows) <= args.warmup:
        _say(f"error: the sample kept {len(rows)} rows, not more than --warmup {args.warmup}: raise --trace-sample")
        return 2
    binary, peer_note = find_peer(args)
    if binary is None:
        _say(f"llama-server {peer_note}; measuring ours alone")
    cond = {
        **conditions(),
        "trace": f"{TRACE.name}: first {args.minutes} min, {len(rows)} rows kept at --trace-sample "
        f"{args.trace_sample:g} (seed {args.seed}), speed x{args.trace_speed:g}, first {args.warmup} as warm-up",
        "threads": args.threads,
        "max_num_seqs / slots": args.max_num_seqs,
        "ours": "int4, " + ("eager decode (--eager)" if args.eager else "compiled decode"),
        "decoding": "greedy (temperature 0), EOS ignored: every answer has its recorded length",
    }
    print("\n".join(f"{k}: {v}" for k, v in cond.items()), flush=True)
    t0 = time.perf_counter()
    _say("ours (python -m engine serve, int4):")
    results = {"ours": run_side("bundled:int4", args, len(rows))}
    peer_version = "-"
    if binary is not None:
        _say(f"theirs (llama-server {binary}):")
        try:
            results["llama"], peer_version = run_llama(args, binary, rows)
        except (LlamaServerError, TargetError) as exc:  # ours is measured already: keep it, say why theirs is not
            _say(f"llama-server failed: {exc}")
            binary, peer_note = None, f"failed: {str(exc).splitlines()[0]}"
    print(f"peer: llama-server {peer_version if binary else peer_note}; wall {time.perf_counter() - t0:.0f} s\n")
    per_minute = {s: minute_rows(r["trace"], rows, args.trace_speed, args.minutes) for s, r in results.items()}
    print(f"Per minute of trace time ({'both servers' if binary else 'ours only'}):")
    print(minute_table(per_minute))
    drains = {s: backlog(r["trace"], rows, args.trace_speed, args.minutes) for s, r in results.items()}
    for side, d in drains.items():
        print(f"after the window, {side}: {d['tokens']} tokens still streamed, for {fmt_num(d['seconds'])} s")
    print()
    theirs = results.get("llama")
    print(summary_table(results["ours"]["trace"], theirs["trace"] if theirs else None))
    if "sessions" in results["ours"]:
        print()
        print(
            f"Multi-turn: {args.sessions} conversations x {args.turns} turns, {args.session_input_len} new tokens "
            f"in / {args.session_output_len} out per turn, concurrency {args.session_concurrency}, "
            f"think time {args.think_time_ms:g} ms; TTFT by turn (turn 1 sends no history):"
        )
        print(turn_table(results["ours"]["sessions"], theirs["sessions"] if theirs else None))
    problems = [validity(f"{s} {part}", r) for s, parts in results.items() for part, r in parts.items()]
    for line in filter(None, problems):
        print(line)
    if args.json:
        doc = {
            "conditions": cond,
            "peer_version": peer_version if binary else peer_note,
            "per_minute": per_minute,
            "after_window": drains,
            "summary": {
                s: {p: r.runs[0].summary.model_dump(mode="json") for p, r in parts.items()}
                for s, parts in results.items()
            },
        }
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
