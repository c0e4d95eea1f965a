"""Issue 22's calibration check on this machine, measured in one run: the bundled engine's CPU path
calibrated from concurrency 1 and 8 and predicted at 2, 4 and 16, each run repeated in interleaved rounds.

    .venv/bin/python bench/planner_calibration.py [--rounds 3] [--requests 40] [--threads 2] \\
        [--results-dir DIR] [--reuse] [--json OUT]

Each round runs the five concurrencies in the order 1, 8, 2, 4, 16, each with
`python -m checks bench --target bundled:int4 --profile concurrency:C` (a fresh server per run, two
warm-up requests, 128 prompt and 64 output tokens, seed 1), so every round sees the machine at about
the same moment for every concurrency. The CPU is probed once, after the runs, and that one
measurement prices every calibration below:

- each round alone: the error one run per concurrency shows (what the issue's recipe measures);
- all rounds pooled: `planner.calibrate.pool_repeats` makes the repeats of one concurrency one point,
  each figure the median over the rounds; fitted on 1 and 8, checked on 2, 4 and 16.

A bundled target's server writes a step log per run (`checks bench --step-log`, beside the result as
rN_cC.steps.jsonl), and each calibration is made twice: from the runs' figures alone, and with the pass
prices fitted to the fit runs' step logs (`calibrate --step-log`; "step-log prices" rows). Each replays
each pass's time scattered by the sd of ln measured from its c=1 runs' inter-token gaps (calibrate's
default, `--pass-spread measured`); the row under it re-predicts the same held-out runs at exact pass
prices (`--pass-spread 0`). The last fitted figure is the server's intake time per request (ingest_ms).
With step logs the held-out runs' logged passes are priced too ("at the fitted prices" lines): a held-out
miss with those passes priced right is in how the replay arranged the passes, not in the prices.
"inside run CI" counts the held-out predictions that fall inside their run's own 95% interval of the
median (the benchmark's bootstrap over its requests; a pooled point keeps the median of its rounds'
bounds): a miss inside it is within what one run of that length can tell apart.

On a VM whose speed drifts by 10% from one minute to the next, a single round cannot check a 4% model;
the pooled row is the check. `--reuse` calibrates the results already in `--results-dir` without
running anything (to re-read a measured set). Run it on a quiet machine: no tests, no helpers.

The GPU path is calibrated the same way: `--device cuda --gpu h100-sxm` runs the bundled engine on the
GPU and names the catalog GPU it ran on; `--target URL --model M --gpu G --engine E --format F`
drives any OpenAI-compatible server and says what served it (calibrate's own flags).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO_ROOT, conditions, format_table, source_revision  # noqa: E402
from planner.calibrate import calibrate, error_row, format_inside, predictor  # noqa: E402
from planner.calibrate_cli import ServedBy, load_runs  # noqa: E402
from planner.calibration import CalibrationDoc, ErrorRow  # noqa: E402
from planner.catalog import load_catalog  # noqa: E402
from planner.hardware import detect  # noqa: E402

FIT = (1, 8)
HELD_OUT = (2, 4, 16)
ORDER = (1, 8, 2, 4, 16)  # the order earlier single sets ran in, so a round is comparable to them
TARGETS = {"ttft_ms": 10.0, "tpot_ms": 4.0, "output_tok_s": 5.0}  # issue 22, held out, after calibrating


def result_path(folder: Path, round_no: int, concurrency: int) -> Path:
    return folder / f"r{round_no}_c{concurrency}.json"


def step_log_path(result: Path) -> Path:
    """The bundled server's step log of the run whose result is `result` (`checks bench --step-log`)."""
    return result.with_suffix(".steps.jsonl")


def measure_run(path: Path, concurrency: int, args: argparse.Namespace) -> None:
    """One benchmark run of the target (the bundled int4 engine by default), as the issue's recipe states it."""
    bundled = args.target.startswith("bundled")
    where = ["--threads", str(args.threads)] if bundled and args.device in (None, "cpu") else []
    if bundled and args.device:
        where += ["--device", args.device]
    if bundled:
        log = step_log_path(path)
        log.unlink(missing_ok=True)  # the server appends: one run per log
        where += ["--step-log", str(log)]
    cmd = [
        sys.executable,
        "-m",
        "checks",
        "bench",
        "--target",
        args.target,
        *where,
        "--profile",
        f"concurrency:{concurrency}",
        "--requests",
        str(args.requests),
        "--input-len",
        "128",
        "--output-len",
        "64",
        "--seed",
        "1",
        "--out",
        str(path),
        "--no-history",
        "--quiet",
    ]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0 or not path.exists():
        tail = (done.stdout + done.stderr)[-2000:]
        raise SystemExit(f"run c={concurrency} failed (exit {done.returncode}):\n{tail}")


def fit(folder: Path, rounds: list[int], measure: object, served: ServedBy, logged: bool = False) -> CalibrationDoc:
    """Calibrate on concurrency 1 and 8 of `rounds`, check on 2, 4 and 16 of the same rounds; `logged`: with
    the pass prices fitted to the fit runs' step logs, and checked on the held-out runs' (held_out_passes)."""
    fit_paths = [str(result_path(folder, r, c)) for r in rounds for c in FIT]
    held_paths = [str(result_path(folder, r, c)) for r in rounds for c in HELD_OUT]
    fitted, held = load_runs(fit_paths, served), load_runs(held_paths, served)
    logs = [str(step_log_path(Path(p))) for p in fit_paths] if logged else []
    held_logs = [str(step_log_path(Path(p))) for p in held_paths if logged and step_log_path(Path(p)).exists()]
    return calibrate(
        fitted,
        held,
        load_catalog(),
        detect(),
        measure,  # type: ignore[arg-type]
        step_logs=logs,
        held_out_step_logs=held_logs,
    )


def _pct(row: ErrorRow | None, metric: str) -> str:
    value = getattr(row, metric) if row is not None else None
    return "-" if value is None else f"{value:.1f}%"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--threads", type=int, default=2, help="CPU threads of a bundled target on the CPU")
    p.add_argument("--target", default="bundled:int4", help="what checks bench drives: bundled:QUANT or a URL")
    p.add_argument("--device", help="a bundled target's device (cpu, cuda): a GPU calibration needs --gpu too")
    p.add_argument("--gpu", help="catalog GPU id the runs served on (a bundled target on a GPU, or a URL)")
    p.add_argument("--model", help="a URL target: the model served (catalog id, config.json or .gguf)")
    p.add_argument("--engine", help="a URL target: the engine that served (vllm, sglang, ...)")
    p.add_argument("--format", help="a URL target: the weight format served")
    p.add_argument("--engine-version", help="a URL target on vLLM: its release")
    p.add_argument("--results-dir", type=Path, default=Path("/tmp/preflight-calibration"))
    p.add_argument("--reuse", action="store_true", help="calibrate the results already in --results-dir")
    p.add_argument("--json", type=Path, help="write the tables' figures here")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    folder: Path = args.results_dir
    folder.mkdir(parents=True, exist_ok=True)
    rounds = list(range(1, args.rounds + 1))
    if not args.reuse:
        for r in rounds:
            for c in ORDER:
                measure_run(result_path(folder, r, c), c, args)
                print(f"round {r} c={c} measured", flush=True)
    missing = [str(result_path(folder, r, c)) for r in rounds for c in ORDER if not result_path(folder, r, c).exists()]
    if missing:
        raise SystemExit(f"missing results: {', '.join(missing)}")

    served = ServedBy(args.model, args.gpu, args.engine, args.format, args.engine_version)
    measured_cpu = None
    if load_runs([str(result_path(folder, 1, 1))], served)[0].gpu == "cpu":
        from planner.cpu_probe import measure as probe

        cpu = probe(args.threads)
        measured_cpu = lambda: cpu  # noqa: E731 - one probe prices every calibration below
    logged = all(step_log_path(result_path(folder, r, c)).exists() for r in rounds for c in FIT)
    docs: dict[str, CalibrationDoc] = {}
    for name, which in [*((f"round {r} alone", [r]) for r in rounds), (f"{args.rounds} rounds pooled", rounds)]:
        docs[name] = fit(folder, which, measured_cpu, served)
        if logged:
            docs[f"{name}, step-log prices"] = fit(folder, which, measured_cpu, served, logged=True)

    print(f"revision {source_revision(('planner', 'engine'))}; {json.dumps(conditions())}")
    per_run = []
    for name, doc in docs.items():
        for kind, group in (("fit", doc.runs), ("held out", doc.held_out)):
            for run in group:
                m, q = run.measured, run.predicted_after
                per_run.append(
                    [
                        name,
                        kind,
                        str(run.concurrency),
                        f"{m.ttft_ms:.1f} / {q.ttft_ms:.1f}" if q and m.ttft_ms and q.ttft_ms else "-",
                        f"{m.tpot_ms:.2f} / {q.tpot_ms:.2f}" if q and m.tpot_ms and q.tpot_ms else "-",
                        f"{m.output_tok_s:.1f} / {q.output_tok_s:.1f}"
                        if q and m.output_tok_s and q.output_tok_s
                        else "-",
                    ]
                )
    print("\nmeasured / calibrated prediction")
    print(format_table(["calibration", "set", "c", "TTFT ms", "TPOT ms", "output tok/s"], per_run))
    predict = predictor(load_catalog(), detect(), measured_cpu)  # type: ignore[arg-type]
    rows = []
    for name, doc in docs.items():
        v = doc.values
        fitted = (
            f"{v.decode_bandwidth:.3g}, {v.prefill_flops:.3g}, {v.step_overhead_ms:.3g}, {v.seq_overhead_us:.4g}, "
            f"{v.ingest_ms:.3g}"
        )
        after = doc.error.held_out_after
        inside = format_inside(after.inside_ci95 if after else None)
        rows.append([name, *(_pct(after, k) for k in TARGETS), inside, fitted, f"{v.pass_spread:.3g}"])
        if v.pass_spread:  # the same values, each pass at exactly its price
            exact = v.model_copy(update={"pass_spread": 0.0})
            row = error_row(doc.held_out, [predict(r, exact) for r in doc.held_out])
            inside = format_inside(row.inside_ci95)
            rows.append(["  same, passes exact", *(_pct(row, k) for k in TARGETS), inside, "", "0"])
    rows.append(["target", *(f"<= {v:g}%" for v in TARGETS.values()), "", "", ""])
    print("\nheld-out median absolute error after calibrating on concurrency 1 and 8")
    head = ["calibration", "TTFT", "TPOT", "output tok/s", "inside run CI: TTFT, TPOT"]
    head += ["decode_bw, prefill_flops, step_ms, seq_us, ingest_ms", "pass spread"]
    print(format_table(head, rows))
    for name, doc in docs.items():
        if (p := doc.held_out_passes) is not None and p.bias is not None:
            print(
                f"{name}: the held-out runs' {p.passes} logged passes at the fitted prices: "
                f"{p.bias * 100:+.1f}% overall, RMS ln residual {p.rms_log_residual:.3f}"
            )
    if args.json:
        args.json.write_text(
            json.dumps({name: json.loads(doc.model_dump_json()) for name, doc in docs.items()}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
