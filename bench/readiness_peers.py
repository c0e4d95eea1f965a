"""The readiness checklist against llama.cpp's server (with and without an API key) and the bundled engine.

    .venv/bin/python bench/readiness_peers.py [--threads 2] [--requests 40] [--out-dir bench/results/readiness]

Not a speed benchmark: it records what `python -m checks run` finds on a peer we did not
write, next to what it finds on ours, so docs/READINESS.md can list each verdict and every
non-PASS line with the command behind it. llama-server runs on loopback with the bundled
GGUF, `--metrics` and 4 slots; the same checklist options are used for every target.
Each report is written as JSON and Markdown into --out-dir.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import conditions, physical_cores  # noqa: E402
from bench._llama_server import LlamaServerOptions, LlamaServerProcess, server_version  # noqa: E402
from checks.readiness.config import ChecklistConfig  # noqa: E402
from checks.readiness.console import format_report  # noqa: E402
from checks.readiness.runner import run_checklist  # noqa: E402
from engine.model.gguf_file import bundled_model_path  # noqa: E402
from reports.markdown import to_markdown  # noqa: E402
from reports.readiness_report import ReadinessReport  # noqa: E402
from reports.store import save, write_text  # noqa: E402

SLOTS = 4


def _judge(name: str, config: ChecklistConfig, out_dir: Path) -> ReadinessReport:
    print(f"== {name}", file=sys.stderr, flush=True)
    report = run_checklist(config, on_status=lambda m: print(f"   {m}", file=sys.stderr, flush=True))
    save(report, out_dir / f"{name}.json", overwrite=True)
    write_text(out_dir / f"{name}.md", to_markdown(report), overwrite=True)
    print(f"\n### {name}\n")
    print(format_report(report))
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results/readiness"))
    parser.add_argument("--only-target", choices=("llama-key", "llama-open", "bundled"), default=None)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    print("\n".join(f"{k}: {v}" for k, v in {**conditions(), "threads": args.threads}.items()))
    common = {"requests": args.requests, "input_len": 128, "output_len": 64}
    results = {}
    for name, with_key in (("llama-key", True), ("llama-open", False)):
        if args.only_target not in (None, name):
            continue
        key = secrets.token_urlsafe(24) if with_key else None
        extra = ("--metrics", "--api-key", key) if key else ("--metrics",)
        run_opts = LlamaServerOptions(
            bundled_model_path(), args.threads, ctx=2048 * SLOTS, slots=SLOTS, extra_args=extra
        )
        with LlamaServerProcess(run_opts) as server:
            print(f"llama-server {server_version(server.binary)} at {server.base_url}", file=sys.stderr)
            config = ChecklistConfig(
                target=server.base_url, api_key=key, concurrency=SLOTS, context_tokens=2048, **common
            )
            results[name] = _judge(name, config, args.out_dir)
    if args.only_target in (None, "bundled"):
        config = ChecklistConfig(target="bundled:int4", threads=args.threads, **common)
        results["bundled"] = _judge("bundled", config, args.out_dir)
    print("\n| target | verdict | PASS | WARN | FAIL | SKIP | ERROR |\n|---|---|---|---|---|---|---|")
    for name, report in results.items():
        n = report.status_counts()
        print(f"| {name} | {report.verdict.value} | " + " | ".join(str(v) for v in n.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
