"""Our engine against llama.cpp (llama-cpp-python or llama-bench) on the same GGUF file with the same threads.

    .venv/bin/python bench/engine_speed.py [--threads N] [--tokens 128] [--repeats 3]
        [--formats int4,int8,bf16] [--peer llama-cpp|llama-bench|none] [--json OUT] [--profile]

Prints the conditions, then one table: single-stream decode tok/s, prefill tok/s on a
512-token prompt, load time (cold and warm) and resident memory, each beside llama.cpp's
figure and the ratio ours/theirs, with the targets of the engine-speed issue.

Every measurement runs in its own fresh worker process (this file with `--worker`):
load times and resident memory then say what a new process pays. Resident memory is
RSS after the load minus RSS with torch/engine (or llama_cpp) imported and no model.
Both sides decode greedily with EOS ignored, count the tokens really produced and
exclude the first token (it comes with prefill); each figure is the median of
`--repeats` runs after one warm-up run. `--profile` adds a torch.profiler breakdown
of our int4 decode step and 512-token prefill.

`--peer llama-bench` times llama.cpp with its own tool (built beside llama-server by
bench/_llama_server.py; no llama-cpp-python needed) in both weight layouts, repacking on
(the default) and off, with a crash in either recorded, not fatal (bench/_llama_bench.py).
The decode target, 1.3x, is against repacking off; the stretch, 1.0x, against the default.
llama-bench decodes from an empty context and gives no load, memory or token figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    conditions,
    emit_result,
    format_profile,
    format_table,
    median,
    physical_cores,
    ratio_row,
    rss_bytes,
    rss_file_bytes,
    run_worker,
    summarise_profile,
    verdict,
)
from bench._llama_server import DEFAULT_LAYOUT, NO_REPACK_LAYOUT  # noqa: E402

DECODE_PROMPT = "The capital of France is"
PREFILL_TEXT = (
    "Preflight checks a language model before it ships: it loads the weights, measures how fast "
    "tokens come out, and compares the numbers with a well-known peer on the same machine. "
)
WARMUP_TOKENS = 16
PROFILE_STEPS = 30
MIB = 2**20
COMPILED = "+compile"  # a format name with this suffix runs with LoadOptions(compile=True)
BUSY_PERCENT = 25.0  # background CPU above this while measuring: say the numbers are noisy


def _mem() -> dict[str, int | None]:
    return {"rss": rss_bytes(), "file": rss_file_bytes()}


# ---------------------------------------------------------------- workers (one process each)


def _ours_worker(spec: dict, fmt: str, phase: str) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from engine.run.runtime import Engine, LoadOptions
    from engine.sampling import SamplingParams

    quant, compiled = fmt.removesuffix(COMPILED), fmt.endswith(COMPILED)
    base = _mem()
    t0 = time.perf_counter()
    eng = Engine.load(LoadOptions(quant=quant, model_path=spec["model_path"], device="cpu", use_cache=True))
    load_s = time.perf_counter() - t0
    compile_s = eng.compile() if compiled else None
    out = {
        "load_s": load_s,
        "compile_s": compile_s,
        "engine_load_s": eng.info.load_s,
        "source": eng.info.source,
        "weight_bytes": eng.info.weight_bytes,
        "gguf_bytes": eng.info.gguf_bytes,
        "mem_base": base,
        "mem_load": _mem(),
        "threads": torch.get_num_threads(),
        "kernels": eng.info.kernel_notes,  # which kernels ran: torch's, or the native ones (engine/quant/native.py)
    }
    if phase == "load":
        return out

    def run(ids: list[int], max_tokens: int):
        return eng.stream_ids(ids, SamplingParams(max_tokens=max_tokens, ignore_eos=True)).drain()

    run(spec["decode_ids"], WARMUP_TOKENS)
    run(spec["prefill_ids"], 1)
    decode, produced, tokens = [], [], []
    for _ in range(spec["repeats"]):
        r = run(spec["decode_ids"], spec["tokens"])
        decode.append(r.decode_tok_s)
        produced.append(r.completion_tokens)
        tokens = r.token_ids
    prefill = []
    for _ in range(spec["repeats"]):
        r = run(spec["prefill_ids"], 1)
        prefill.append(r.prompt_tokens / r.prefill_s)
    out.update(decode_tok_s=decode, produced=produced, token_ids=tokens, prefill_tok_s=prefill, mem_run=_mem())
    return out


def _theirs_worker(spec: dict, phase: str) -> dict:
    import llama_cpp
    import numpy as np

    n = spec["threads"]
    n_ctx = max(1024, len(spec["prefill_ids"]) + 16, len(spec["decode_ids"]) + spec["tokens"] + 16)
    base = _mem()
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=spec["model_path"],
        n_ctx=n_ctx,
        n_batch=512,
        n_ubatch=512,
        n_threads=n,
        n_threads_batch=n,
        verbose=False,
    )
    load_s = time.perf_counter() - t0
    out = {"load_s": load_s, "mem_base": base, "mem_load": _mem(), "n_ctx": n_ctx, "threads": n}
    if phase == "load":
        return out
    n_vocab = llm.n_vocab()

    def greedy() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(logits.argmax())

    def decode(ids: list[int], max_tokens: int) -> tuple[list[int], float]:
        """Greedy tokens (EOS never stops it) and seconds for all but the first."""
        llm.reset()
        llm.eval(ids)
        toks = [greedy()]
        t = time.perf_counter()
        for _ in range(max_tokens - 1):
            llm.eval([toks[-1]])
            toks.append(greedy())
        return toks, time.perf_counter() - t

    def prefill(ids: list[int]) -> float:
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        greedy()
        return time.perf_counter() - t

    decode(spec["decode_ids"], WARMUP_TOKENS)
    prefill(spec["prefill_ids"])
    rates, produced, tokens = [], [], []
    for _ in range(spec["repeats"]):
        tokens, secs = decode(spec["decode_ids"], spec["tokens"])
        rates.append((len(tokens) - 1) / secs)
        produced.append(len(tokens))
    pre = [len(spec["prefill_ids"]) / prefill(spec["prefill_ids"]) for _ in range(spec["repeats"])]
    out.update(decode_tok_s=rates, produced=produced, token_ids=tokens, prefill_tok_s=pre, mem_run=_mem())
    return out


def _profile_worker(spec: dict) -> dict:
    """torch.profiler over PROFILE_STEPS decode steps and one prefill of our int4 engine."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(spec["threads"])
    from engine.run.runtime import Engine, LoadOptions
    from engine.sampling import SamplingParams

    eng = Engine.load(LoadOptions(quant="int4", model_path=spec["model_path"], device="cpu", use_cache=True))
    one = spec["decode_ids"][:1]  # a 1-token prompt: every forward is then a decode-shaped step

    def run(ids: list[int], max_tokens: int) -> None:
        eng.stream_ids(ids, SamplingParams(max_tokens=max_tokens, ignore_eos=True)).drain()

    run(one, WARMUP_TOKENS)
    run(spec["prefill_ids"], 1)
    t = time.perf_counter()
    run(one, PROFILE_STEPS)
    plain_step = (time.perf_counter() - t) / PROFILE_STEPS
    out = {"decode_step_ms_unprofiled": plain_step * 1e3}
    for name, ids, steps in (("decode", one, PROFILE_STEPS), ("prefill", spec["prefill_ids"], 1)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            run(ids, steps)
            wall = time.perf_counter() - t
        out[name] = summarise_profile(prof, wall, steps)
    return out


def worker_main(args: argparse.Namespace) -> None:
    spec = json.loads(Path(args.spec).read_text())
    if args.worker == "ours":
        emit_result(_ours_worker(spec, args.fmt, args.phase))
    elif args.worker == "theirs":
        emit_result(_theirs_worker(spec, args.phase))
    else:
        emit_result(_profile_worker(spec))


# ---------------------------------------------------------------- orchestration and table


def _build_spec(args: argparse.Namespace, threads: int) -> dict:
    from engine.model.gguf_file import GGUFModelFile, bundled_model_path
    from engine.model.tokenizer import Tokenizer

    path = bundled_model_path()
    tok = Tokenizer.from_gguf(GGUFModelFile(path))
    decode_ids = tok.encode(DECODE_PROMPT)
    text = PREFILL_TEXT
    while len(tok.encode(text)) < args.prefill_tokens:
        text += PREFILL_TEXT
    return {
        "model_path": str(path),
        "threads": threads,
        "tokens": args.tokens,
        "repeats": args.repeats,
        "decode_ids": decode_ids,
        "prefill_ids": tok.encode(text)[: args.prefill_tokens],
    }


TARGETED = ("int4", "int4" + COMPILED)  # the formats the speed targets are about; the others are context


Pair = tuple[float | None, float | None]  # (decode, prefill)


def _pair_rows(
    ours: dict, spec: dict, ref: Pair, needs: tuple[float, float], tail: str, targeted: bool
) -> list[list[str]]:
    """Decode and prefill rows of one of our formats against one peer figure each, with the targets when `targeted`."""
    rows = []
    for what, mine, theirs, need in (
        (f"decode tok/s, {spec['tokens']} tokens", median(ours["decode_tok_s"]), ref[0], needs[0]),
        (f"prefill tok/s, {len(spec['prefill_ids'])} tokens", median(ours["prefill_tok_s"]), ref[1], needs[1]),
    ):
        r = mine / theirs if mine and theirs else None
        ok = None if not targeted or r is None else r >= need
        met = verdict(ok, f"{r:.2f}x, {100 * (1 - r / need):.0f}% short" if r else "")
        target = f">= {need:.1f}x" if targeted else "context"
        rows.append(ratio_row(f"{what}, {tail}", mine, theirs, 1, target, met))
    return rows


def _speed_rows(res: dict, spec: dict, formats: list[str]) -> list[list[str]]:
    """Every format against llama-cpp-python (when it ran; llama-bench's rows carry their own targets)."""
    theirs = res.get("theirs")
    ref = (median(theirs["decode_tok_s"]), median(theirs["prefill_tok_s"])) if theirs else (None, None)
    rows = []
    for fmt in formats:
        rows += _pair_rows(res[fmt]["warm"], spec, ref, (1.0, 1.5), fmt, fmt in TARGETED and theirs is not None)
    return rows


def _llama_bench_peer(spec: dict, args: argparse.Namespace) -> list[dict]:
    """llama-bench in both layouts (bench/_llama_bench.py), as plain dicts for the table and --json."""
    from dataclasses import asdict

    from bench._llama_bench import measure_layouts
    from bench._llama_server import find_or_build_llama_bench

    binary = find_or_build_llama_bench()
    runs = measure_layouts(
        binary, Path(spec["model_path"]), args.threads, args.tokens, args.prefill_tokens, args.repeats
    )
    return [asdict(r) | {"decode": r.decode, "prefill": r.prefill, "binary": str(binary)} for r in runs]


# The single-stream targets against llama-bench: decode 1.3x with repacking off, 1.0x (stretch) with the
# default layout; prefill 1.5x against either.
LLAMA_BENCH_NEEDS = {DEFAULT_LAYOUT: (1.0, 1.5), NO_REPACK_LAYOUT: (1.3, 1.5)}


def _llama_bench_rows(runs: list[dict] | None, res: dict, spec: dict, formats: list[str]) -> list[list[str]]:
    """Our int4 decode and prefill against each llama-bench layout; a crashed layout is a row saying so."""
    rows = []
    for run in runs or []:
        layout = run["layout"]
        if run["crash"]:
            rows.append([f"llama-bench, {layout}", "-", "crashed", "-", "-", run["crash"].splitlines()[0][:80]])
            continue
        ref, needs = (run["decode"], run["prefill"]), LLAMA_BENCH_NEEDS[layout]
        for fmt in (f for f in formats if f in TARGETED):
            rows += _pair_rows(res[fmt]["warm"], spec, ref, needs, f"{fmt} vs llama-bench {layout}", True)
    return rows


def _mib(worker: dict | None, stage: str, part: str = "rss", minus_base: bool = True) -> float | None:
    if worker is None or worker[f"mem_{stage}"][part] is None:
        return None
    base = worker["mem_base"][part] if minus_base else 0
    return (worker[f"mem_{stage}"][part] - base) / MIB


def _load_mem_rows(res: dict) -> list[list[str]]:
    """Load time and resident memory rows for int4 (the format the targets are about)."""
    cold, warm, theirs = res["int4"]["cold"], res["int4"]["warm"], res.get("theirs")
    t1, t2 = (res["theirs_first"]["load_s"], theirs["load_s"]) if theirs else (None, None)
    w = warm["load_s"]
    rows = [
        ratio_row("load s, cold, int4 (ours: GGUF convert + cache write)", cold["load_s"], t1, 2),
        ratio_row(
            "load s, warm, int4 (ours: weight cache)", w, t2, 2, "<= 1 s", verdict(w <= 1.0, f"{w - 1:.2f} s over")
        ),
    ]
    for label, stage, part, minus in (
        ("resident MiB after load, int4 (RSS - base)", "load", "rss", True),
        ("  of which file-backed (mmap) MiB", "load", "file", True),
        ("resident MiB after decode+prefill, int4", "run", "rss", True),
        ("total RSS MiB after run, int4", "run", "rss", False),
    ):
        rows.append(ratio_row(label, _mib(warm, stage, part, minus), _mib(theirs, stage, part, minus)))
    compiled = res.get("int4" + COMPILED)
    if compiled:
        for label, stage in (("cold: package built", "cold"), ("warm: package loaded", "warm")):
            rows.append(ratio_row(f"compile s, int4 --compile, {label}", compiled[stage]["compile_s"], None, 1))
        start = compiled["warm"]["load_s"] + compiled["warm"]["compile_s"]
        met = verdict(start <= 5.0, f"{start - 5:.1f} s over")
        rows.append(ratio_row("warm start s, int4 --compile (load + compile)", start, None, 2, "<= 5 s", met))
    gguf_mib = warm["gguf_bytes"] / MIB
    wr = warm["weight_bytes"] / warm["gguf_bytes"]
    rows.append(
        ["int4 weight tensor bytes / GGUF bytes", f"{wr:.2f}", "-", "-", "<= 1.3", verdict(wr <= 1.3, f"{wr:.2f}")]
    )
    rr, tr = _mib(warm, "load") / gguf_mib, (_mib(theirs, "load") / gguf_mib if theirs else None)
    met = verdict(rr <= 1.3, f"{rr:.2f}, {rr / 1.3:.1f}x the cap")
    rows.append(ratio_row("int4 resident after load / GGUF bytes", rr, tr, 2, "<= 1.3", met))
    return rows


def _agreement(res: dict, formats: list[str]) -> str:
    theirs = res.get("theirs")
    if not theirs:
        return ""
    parts = []
    for fmt in formats:
        a, b = res[fmt]["warm"]["token_ids"], theirs["token_ids"]
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        parts.append(f"{fmt} {same}/{len(b)}")
    return "greedy tokens identical to llama.cpp's for the first: " + ", ".join(parts)


def _print_profile(prof: dict) -> None:
    plain = prof["decode_step_ms_unprofiled"]
    print(f"\nProfile of our int4 engine (torch.profiler; decode step unprofiled: {plain:.2f} ms)")
    for name in ("decode", "prefill"):
        print()
        print(format_profile(name, prof[name]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--threads", type=int, default=physical_cores(), help="threads for both sides (default: physical cores)"
    )
    ap.add_argument("--tokens", type=int, default=128, help="decode tokens per run")
    ap.add_argument("--prefill-tokens", type=int, default=512, help="prompt length for the prefill measurement")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median reported)")
    ap.add_argument(
        "--formats",
        default="int4,int4+compile,int8,bf16",
        help="our weight formats; '+compile' adds the compiled decode step (int4 and int4+compile carry the targets)",
    )
    ap.add_argument(
        "--peer", choices=("llama-cpp", "llama-bench", "none"), default="llama-cpp", help="the peer to run beside ours"
    )
    ap.add_argument("--json", metavar="OUT", help="also write conditions and every raw result here")
    ap.add_argument("--profile", action="store_true", help="add a torch.profiler breakdown of our int4 engine")
    ap.add_argument("--worker", choices=("ours", "theirs", "profile"), help=argparse.SUPPRESS)
    ap.add_argument("--fmt", help=argparse.SUPPRESS)
    ap.add_argument("--phase", choices=("load", "measure"), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(args)
        return

    import torch

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats:
        ap.error("--formats names no weight format")
    spec = _build_spec(args, args.threads)
    cond = conditions()
    model = Path(spec["model_path"])
    cond.update(
        threads=args.threads,
        torch=torch.__version__,
        llama_cpp_python=metadata.version("llama_cpp_python") if args.peer == "llama-cpp" else "not run",
        peer={"llama-cpp": "llama-cpp-python in-process", "llama-bench": "llama-bench (both layouts)"}.get(
            args.peer, "none"
        ),
        model=f"{model.name} ({model.stat().st_size / 1e6:.1f} MB)",
        decode=f"{len(spec['decode_ids'])}-token prompt, {args.tokens} tokens greedy, EOS ignored, batch 1",
        prefill=f"{len(spec['prefill_ids'])}-token prompt to first token, batch 1 (llama.cpp n_batch = n_ubatch = 512)",
        repeats=f"median of {args.repeats} after 1 warm-up, each side in fresh processes",
    )
    tmp = Path(tempfile.mkdtemp(prefix="preflight-bench-"))
    spec_file = tmp / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = {"PREFLIGHT_CACHE_DIR": str(tmp / "cache")}  # empty: the first load of each format is cold
    me = [str(Path(__file__).resolve()), "--spec", str(spec_file)]
    res: dict = {}
    busy: list[tuple[str, float]] = []  # other processes' share of the CPUs while each worker ran
    jobs = []
    for fmt in formats:
        jobs += [
            ((fmt, "cold"), ["--worker", "ours", "--fmt", fmt, "--phase", "load"]),
            ((fmt, "warm"), ["--worker", "ours", "--fmt", fmt, "--phase", "measure"]),
        ]
        if fmt == formats[0] and args.peer == "llama-cpp":
            jobs += [
                (("theirs_first",), ["--worker", "theirs", "--phase", "load"]),
                (("theirs",), ["--worker", "theirs", "--phase", "measure"]),
            ]
    if args.profile:
        jobs.append((("profile",), ["--worker", "profile"]))
    try:
        for i, (key, extra) in enumerate(jobs, 1):
            print(f"[{i}/{len(jobs)}] {' '.join(key)} ...", file=sys.stderr, flush=True)
            out = run_worker(me + extra, env=env)
            busy.append((" ".join(key), out["background_cpu_pct"]))
            if len(key) == 2:
                res.setdefault(key[0], {})[key[1]] = out
            else:
                res[key[0]] = out
        if args.peer == "llama-bench":
            print(f"[{len(jobs) + 1}/{len(jobs) + 1}] llama-bench, both layouts ...", file=sys.stderr, flush=True)
            res["llama_bench"] = _llama_bench_peer(spec, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    cond["background_cpu"] = "other processes' share of the CPUs while each worker ran: " + ", ".join(
        f"{k.replace('theirs_first', 'llama.cpp 1st').replace('theirs', 'llama.cpp')} {v:.0f}%" for k, v in busy
    )
    worst = max(v for _, v in busy)
    for fmt in formats:  # the kernels each of our formats ran with, so the table says what it measured
        notes = res.get(fmt, {}).get("warm", {}).get("kernels")
        if notes:
            cond[f"kernels {fmt}"] = "; ".join(notes)
    print("Engine speed: ours (engine/) vs llama.cpp (llama-cpp-python) on the same GGUF")
    for k, v in cond.items():
        print(f"  {k:<17} {v}")
    print(
        "  note              llama.cpp loads are both with the file in the page cache (no cold-disk drop "
        "without root); ours 'cold' converts the GGUF, 'warm' reads the weight cache"
    )
    if worst > BUSY_PERCENT:
        print(
            f"  WARNING           other processes used up to {worst:.0f}% of the CPUs during a measurement: "
            "figures are noisy, re-run on a quiet machine"
        )
    print()
    rows = _speed_rows(res, spec, formats) + (_load_mem_rows(res) if "int4" in res else [])
    rows += _llama_bench_rows(res.get("llama_bench"), res, spec, formats)
    print(format_table(["metric", "ours", "llama.cpp", "ours/theirs", "target", "met?"], rows))
    agree = _agreement(res, formats)
    if agree:
        print(f"\n{agree}")
    if "profile" in res:
        _print_profile(res["profile"])
    if args.json:
        Path(args.json).write_text(json.dumps({"conditions": cond, "results": res}, indent=1))


if __name__ == "__main__":
    main()
