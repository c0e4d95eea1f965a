"""The load generator split over Ray workers: what it sustains, and whether it measures the same.

    .venv/bin/python bench/loadgen_workers.py [--workers 1,2,4] [--levels 64,256] [--output-len 256]
        [--requests-per-stream 4] [--accuracy-requests 48] [--parts capacity,bundled,paced] [--json OUT]

Capacity: against bench/_stream_server.py (no model, no delay; the server is never the
limit), the single-process client and `--workers N` Ray actors each send the same
requests at each concurrency level; the figure is streamed output tok/s received, with
whether the merged self-check stayed valid. On a small machine the workers share the
cores with each other and with the stream server, so more workers can sustain less: the
point there is that the split is correct and costs little, and the path to many machines.

Accuracy (issue 20): the same load (64 in / 32 out tokens, seed 1), once from one process
and once from 2 Ray workers; TTFT p50, TPOT p50 and output tok/s must agree within 5%. Two
targets (`--parts`): the bundled int4 server (concurrency 4), whose own run-to-run spread is
larger than 5% on a small machine, and the stream server paced at a known 100 ms first token and
20 ms per token (concurrency 8), which decides the question: there every difference between the
two runs is the clients'.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import conditions, fmt_num, format_table  # noqa: E402
from bench.loadgen_capacity import StreamServer  # noqa: E402
from checks.load.benchmark import BenchmarkConfig, run_benchmark  # noqa: E402
from checks.load.distributed import run_distributed  # noqa: E402
from checks.load.loadgen import RunLimits, RunResult, run_load  # noqa: E402
from checks.load.metrics import summarize  # noqa: E402
from checks.load.profiles import LoadProfile  # noqa: E402
from checks.load.prompts import PromptRequest  # noqa: E402
from checks.load.targets import probe  # noqa: E402

ACCURACY_TOLERANCE = 0.05


def capacity(base_url: str, level: int, n: int, output_len: int, workers: int) -> dict:
    endpoint = asyncio.run(probe(base_url, None, None, "chat", None))
    request = PromptRequest("hi", None, output_len, 1, True, "capacity")
    profile, limits = LoadProfile("concurrency", concurrency=level), RunLimits(requests=n)
    t0 = time.perf_counter()
    run: RunResult
    if workers == 0:  # the single-process client
        run = asyncio.run(run_load(endpoint, [request], profile, limits))
    else:
        run = run_distributed(endpoint, [request] * n, profile, limits, workers)
    s = summarize(run.records)
    return {
        "output_tok_s": s.output_throughput,
        "completed": s.completed,
        "valid": run.self_check.valid,
        "reasons": run.self_check.reasons,
        "wall_s": time.perf_counter() - t0,
    }


PACED_FIRST_TOKEN_MS, PACED_TOKEN_MS = 100.0, 20.0


def accuracy(requests: int, target: str = "bundled:int4", concurrency: int = 4) -> dict:
    """One target measured twice: from one process, then from two Ray workers (a bundled server restarts)."""
    out = {}
    for workers in (1, 2):
        config = BenchmarkConfig(
            target=target,
            threads=2 if target.startswith("bundled") else None,
            profile=f"concurrency:{concurrency}",
            requests=requests,
            input_len=64,
            output_len=32,
            seed=1,
            warmup_requests=2,
            workers=workers,
        )
        result = run_benchmark(config)
        s = result.runs[0].summary
        out[workers] = {
            "ttft_p50_ms": s.p50_ttft_ms,
            "tpot_p50_ms": s.p50_tpot_ms,
            "output_tok_s": s.output_throughput,
            "valid": result.valid,
        }
        print(f"  accuracy, {workers} process(es): {out[workers]}", file=sys.stderr, flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--levels", default="64,256")
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--requests-per-stream", type=int, default=4)
    parser.add_argument("--accuracy-requests", type=int, default=48)
    parser.add_argument("--parts", default="capacity,bundled,paced", help="which of capacity, bundled, paced to run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    print("\n".join(f"{k}: {v}" for k, v in conditions().items()), flush=True)
    counts = [0, *(int(x) for x in args.workers.split(","))]  # 0: the single-process client
    levels = [int(x) for x in args.levels.split(",")] if "capacity" in parts else []
    results: dict[str, dict] = {"capacity": {}, "accuracy": {}}
    with StreamServer() as server:
        for level in levels:
            for workers in counts:
                if workers > level:
                    continue
                row = capacity(server.base_url, level, args.requests_per_stream * level, args.output_len, workers)
                results["capacity"][f"{level}/{workers}"] = row
                who = f"{workers} workers" if workers else "single"
                print(f"  {level} streams, {who}: {fmt_num(row['output_tok_s'])} tok/s", file=sys.stderr)
    rows = [
        [
            key.split("/")[0],
            "single process" if key.endswith("/0") else f"{key.split('/')[1]} Ray workers",
            fmt_num(r["output_tok_s"], 0),
            str(r["completed"]),
            "yes" if r["valid"] else "NO: " + "; ".join(r["reasons"])[:60],
        ]
        for key, r in results["capacity"].items()
    ]
    if rows:
        print(format_table(["streams", "client", "tok/s", "completed", "valid"], rows))
    if "bundled" in parts:
        results["accuracy"]["bundled"] = accuracy(args.accuracy_requests)
    if "paced" in parts:
        with StreamServer(PACED_FIRST_TOKEN_MS, PACED_TOKEN_MS) as paced:
            results["accuracy"]["paced"] = accuracy(args.accuracy_requests, f"{paced.base_url}/v1", concurrency=8)
    for name, acc in results["accuracy"].items():
        rows = []
        for metric in ("ttft_p50_ms", "tpot_p50_ms", "output_tok_s"):
            one, two = acc[1][metric], acc[2][metric]
            diff = None if not one or two is None else (two - one) / one
            ok = diff is not None and abs(diff) <= ACCURACY_TOLERANCE
            shown = "-" if diff is None else f"{diff:+.1%}"
            rows.append([metric, fmt_num(one), fmt_num(two), shown, "yes" if ok else "NO"])
        print(f"accuracy on the {name} target:")
        print(format_table(["metric", "1 process", "2 Ray workers", "difference", "within 5%"], rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
