"""Preflight's measurement next to guidellm's, same server, same load, one after the other.

    .venv/bin/python bench/loadgen_accuracy.py [--server llama-server|ours] [--threads N]
        [--concurrency 4] [--requests 32] [--input-len 128] [--output-len 64] [--json OUT]

Both clients drive the same server (llama-server built by bench/_llama_server.py, or our
`python -m engine serve`) at the same concurrency with synthetic prompts of the same
lengths, after one untimed wave of requests warms the server up: guidellm first, then
Preflight twice, neither with a warm-up of its own. Figures are matched by definition, not by name
(DESIGN.md): guidellm's "ITL" is (last - first token) / (N - 1), our TPOT; its "TPOT"
includes TTFT, so it is not compared. The table gives median TTFT, median TPOT, output
tok/s and request rate from each, and the ratio ours/theirs. Target (issue 5): within 5%.
Two runs of one tool differ by their own noise too, so the script repeats Preflight's
run and prints that spread beside the ratio. By default the server runs on the upper half of
the CPUs and both clients on the lower half (--server-cpus / --client-cpus, 'none' to share),
so a client's own CPU use cannot slow the server it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import conditions, fmt_num, fmt_ratio, format_table, physical_cores  # noqa: E402
from bench._guidellm import GUIDELLM, GuidellmRun, export_tokenizer, run_guidellm  # noqa: E402
from checks.load.endpoint import Endpoint  # noqa: E402
from checks.load.loadgen import RunLimits, run_load  # noqa: E402
from checks.load.metrics import summarize  # noqa: E402
from checks.load.profiles import LoadProfile  # noqa: E402
from checks.load.targets import BundledOptions, BundledTarget, probe  # noqa: E402
from checks.load.tokenizer import bundled_tokenizer  # noqa: E402
from checks.load.workloads import SyntheticSpec, synthetic_requests  # noqa: E402


def preflight(endpoint: Endpoint, args: argparse.Namespace, seed: int, n: int | None = None) -> dict:
    """One Preflight run with no warm-up of its own (guidellm has none): `prime()` warms the server for both."""
    n = n or args.requests
    requests = synthetic_requests(SyntheticSpec(args.input_len, args.output_len, seed=seed), n, bundled_tokenizer())
    run = asyncio.run(
        run_load(
            endpoint,
            requests,
            LoadProfile("concurrency", concurrency=args.concurrency),
            RunLimits(requests=n, warmup_requests=0),
        )
    )
    s = summarize(run.records)
    return {
        "ttft_ms": s.median_ttft_ms,
        "tpot_ms": s.median_tpot_ms,
        "output_tok_s": s.output_throughput,
        "req_s": s.request_throughput,
        "failed": s.failed,
    }


def guidellm(endpoint: Endpoint, args: argparse.Namespace, tokenizer_dir: Path) -> dict:
    run = GuidellmRun(
        endpoint.base_url,
        endpoint.model,
        args.concurrency,
        args.requests,
        args.input_len,
        args.output_len,
        tokenizer_dir,
        endpoint.api_key,
    )
    m, ok = run_guidellm(run), "successful"
    return {
        "ttft_ms": m["time_to_first_token_ms"][ok]["median"],
        "tpot_ms": m["inter_token_latency_ms"][ok]["median"],
        "output_tok_s": m["output_tokens_per_second"][ok]["mean"],
        "req_s": m["requests_per_second"][ok]["mean"],
        "failed": m["request_totals"].get("errored"),
    }


def measure(endpoint: Endpoint, args: argparse.Namespace, tokenizer_dir: Path) -> dict:
    preflight(endpoint, args, seed=0, n=args.concurrency)  # warm the server up before either tool measures
    theirs = guidellm(endpoint, args, tokenizer_dir)
    ours = [preflight(endpoint, args, seed) for seed in (1, 2)]
    return {"theirs": theirs, "ours": ours}


def split_cpus(server: str, client: str) -> tuple[str | None, str | None]:
    """Resolve 'auto' (halves of the CPUs this process may use) and 'none' into CPU lists or None.

    Separate cores by default: on shared cores guidellm's multi-process client slows the
    server it measures (docs/BENCHMARKS.md), which is not a difference in measuring.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    half = len(cpus) // 2
    auto = {"server": ",".join(map(str, cpus[half:])), "client": ",".join(map(str, cpus[:half]))}
    if half == 0:
        auto = {"server": None, "client": None}

    def resolve(value: str, side: str) -> str | None:
        return None if value == "none" else auto[side] if value == "auto" else value

    return resolve(server, "server"), resolve(client, "client")


def pin(cpus: str | None) -> None:
    """Restrict this process (and the children it starts from now on) to a CPU list like '0' or '2,3'."""
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("llama-server", "ours"), default="llama-server")
    parser.add_argument("--threads", type=int, default=None, help="server threads (default: its CPUs' count)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--server-cpus",
        default="auto",
        help="pin the server to these CPUs, e.g. 1; 'auto' = the upper half; 'none' = no pinning",
    )
    parser.add_argument(
        "--client-cpus",
        default="auto",
        help="pin both clients to these CPUs, e.g. 0; 'auto' = the lower half; 'none' = no pinning",
    )
    args = parser.parse_args()
    args.server_cpus, args.client_cpus = split_cpus(args.server_cpus, args.client_cpus)
    if args.threads is None:
        args.threads = len(args.server_cpus.split(",")) if args.server_cpus else physical_cores()
    print("\n".join(f"{k}: {v}" for k, v in {**conditions(), **vars(args)}.items()), flush=True)
    if not GUIDELLM.exists():
        print(f"guidellm not found at {GUIDELLM}: run `make bench` (it makes .venv-guidellm)")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = export_tokenizer(Path(tmp) / "tokenizer")
        if args.server == "ours":
            opts = BundledOptions(quant="int4", threads=args.threads, max_num_seqs=args.concurrency)
            with BundledTarget(opts) as endpoint:
                result = measure(endpoint, args, tok_dir)
        else:
            from bench._llama_server import LlamaServerOptions, LlamaServerProcess
            from engine.model.gguf_file import bundled_model_path

            ctx = (args.input_len + args.output_len + 64) * args.concurrency
            opts = LlamaServerOptions(bundled_model_path(), args.threads, ctx=ctx, slots=args.concurrency)
            pin(args.server_cpus)  # the server's threads inherit this process's CPUs when it starts...
            with LlamaServerProcess(opts) as server:
                pin(args.client_cpus)  # ...then this process and guidellm (its child) move to the client's
                endpoint = asyncio.run(probe(server.base_url, None, None, "chat", None))
                result = measure(endpoint, args, tok_dir)
    theirs, ours = result["theirs"], result["ours"]
    rows = []
    for label, key, digits in (
        ("TTFT median (ms)", "ttft_ms", 1),
        ("TPOT median (ms) [guidellm: ITL]", "tpot_ms", 2),
        ("output tok/s", "output_tok_s", 1),
        ("requests/s", "req_s", 2),
    ):
        a, b = ours[0][key], ours[1][key]
        spread = fmt_ratio(b, a)
        rows.append(
            [
                label,
                fmt_num(a, digits),
                fmt_num(b, digits),
                fmt_num(theirs[key], digits),
                fmt_ratio(a, theirs[key]),
                spread,
            ]
        )
    print(format_table(["metric", "ours run 1", "ours run 2", "guidellm", "ours1/guidellm", "ours2/ours1"], rows))
    print("target: ours/guidellm within 0.95x-1.05x on each metric")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
