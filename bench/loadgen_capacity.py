"""How much streamed load our client sustains, next to guidellm's, against a server that is never the limit.

    .venv/bin/python bench/loadgen_capacity.py [--levels 16,64,256] [--output-len 256]
        [--requests-per-stream 4] [--peer guidellm|none] [--json OUT]

bench/_stream_server.py (its own process) streams `max_tokens` one-token chunks with no
model and no delay. At each concurrency level both clients send the same number of
requests; the figure is streamed output tokens per second received, and for ours
whether the run's self-check stayed valid (event-loop lag p99 under 25 ms: the
timestamps still mean something). guidellm runs from its own virtualenv
(.venv-guidellm, made by `make bench`: its pins conflict with ours) as a CLI, with its
synthetic data sized by the bundled model's tokenizer exported to a local folder.
Target (issue 5): our sustained tok/s >= 2x guidellm's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO_ROOT, conditions, fmt_num, fmt_ratio, format_table  # noqa: E402
from bench._guidellm import GUIDELLM, GuidellmRun, export_tokenizer, run_guidellm  # noqa: E402
from checks.load.loadgen import RunLimits, run_load  # noqa: E402
from checks.load.metrics import summarize  # noqa: E402
from checks.load.profiles import LoadProfile  # noqa: E402
from checks.load.prompts import PromptRequest  # noqa: E402
from checks.load.targets import free_port, probe, wait_healthy  # noqa: E402


class StreamServer:
    """bench/_stream_server.py in a child process for the length of a `with` block."""

    def __init__(self, first_token_ms: float = 0.0, token_ms: float = 0.0) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pacing = ["--first-token-ms", str(first_token_ms), "--token-ms", str(token_ms)]

    def __enter__(self) -> StreamServer:
        script = Path(__file__).with_name("_stream_server.py")
        command = [sys.executable, str(script), "--port", str(self.port), *self.pacing]
        self.proc = subprocess.Popen(command, cwd=REPO_ROOT)
        no_log = lambda: "(its output is on this console)"  # noqa: E731
        wait_healthy(self.base_url, self.proc.poll, 30.0, "the stream server", no_log)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def ours(base_url: str, level: int, n: int, output_len: int) -> dict:
    endpoint = asyncio.run(probe(base_url, None, None, "chat", None))
    request = PromptRequest("hi", None, output_len, 1, True, "capacity")
    run = asyncio.run(
        run_load(
            endpoint, [request], LoadProfile("concurrency", concurrency=level), RunLimits(requests=n, warmup_requests=0)
        )
    )
    s = summarize(run.records)
    return {
        "output_tok_s": s.output_throughput,
        "completed": s.completed,
        "failed": s.failed,
        "valid": run.self_check.valid,
        "loop_lag_p99_ms": run.self_check.loop_lag_p99_ms,
    }


def theirs(base_url: str, level: int, n: int, output_len: int, tokenizer_dir: Path) -> dict:
    """guidellm at `level` concurrent streams; its own mean output tok/s over the run."""
    metrics = run_guidellm(GuidellmRun(base_url, "stream-server", level, n, 8, output_len, tokenizer_dir))
    return {
        "output_tok_s": metrics["output_tokens_per_second"]["successful"]["mean"],
        "completed": metrics["request_totals"]["successful"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="16,64,256")
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--requests-per-stream", type=int, default=4)
    parser.add_argument("--peer", choices=("guidellm", "none"), default="guidellm")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print("\n".join(f"{k}: {v}" for k, v in conditions().items()), flush=True)
    if args.peer == "guidellm" and not GUIDELLM.exists():
        print(f"guidellm not found at {GUIDELLM}: run `make bench` (it makes .venv-guidellm) or pass --peer none")
        return 1
    levels = [int(x) for x in args.levels.split(",")]
    results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, StreamServer() as server:
        tok_dir = export_tokenizer(Path(tmp) / "tokenizer") if args.peer == "guidellm" else None
        for level in levels:
            n = args.requests_per_stream * level
            row = {"ours": ours(server.base_url, level, n, args.output_len)}
            if tok_dir is not None:
                row["theirs"] = theirs(server.base_url, level, n, args.output_len, tok_dir)
            results[level] = row
            print(
                f"  {level}: ours {fmt_num(row['ours']['output_tok_s'])} tok/s"
                f" theirs {fmt_num(row.get('theirs', {}).get('output_tok_s'))}",
                file=sys.stderr,
            )
    rows = [
        [
            str(level),
            fmt_num(r["ours"]["output_tok_s"], 0),
            "yes" if r["ours"]["valid"] else "NO",
            fmt_num(r["ours"]["loop_lag_p99_ms"]),
            fmt_num(r.get("theirs", {}).get("output_tok_s"), 0),
            fmt_ratio(r["ours"]["output_tok_s"], r.get("theirs", {}).get("output_tok_s")),
        ]
        for level, r in results.items()
    ]
    print(format_table(["streams", "ours tok/s", "ours valid", "loop lag p99 ms", "guidellm tok/s", "ratio"], rows))
    print("target: ours >= 2.00x guidellm at the level each sustains best")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
