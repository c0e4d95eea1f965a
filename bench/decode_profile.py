"""Where a compiled int4 decode step's time goes, on this machine (issue 23: profile before optimizing).

    .venv/bin/python bench/decode_profile.py [--batches 1,16] [--steps 40] [--threads 2] [--json OUT]

Three measurements, each of the real bundled model in int4 with the compiled decode package (built
once per machine, about a minute, if the cache has none):

- the server's decode-only step (`BatchEngine.step`, no HTTP) at each batch size, split into the
  compiled blocks (the AOTInductor package: 30 layers), the Q8_0 output head (run outside the
  package) and the rest (scheduling, sampling, bookkeeping), medians over `--steps` steps;
- each block linear's own int4 kernel (torch's packed kernel, or `preflight::int4_mm` at one row
  where it builds) at the same row counts, all 30 layers back to back as a step runs them (so their
  weights come from memory): the share of the blocks' time that is int4 matmul, and the bandwidth
  it reaches reading the packed weights (the memory-bound floor is the triad figure printed by
  `python -m planner detect`); what the blocks spend beyond it is attention, norms, RoPE and the
  residual adds;
- the head alone at each row count.

Timings move 10%+ between runs on a shared VM: compare rows of one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench._common import conditions, format_table  # noqa: E402
from engine.batch.batch_engine import BatchConfig, BatchEngine  # noqa: E402
from engine.quant.linear import Int4Linear  # noqa: E402
from engine.run.runtime import Engine, LoadOptions  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402

PROMPT = "The quick brown fox jumps over the lazy dog. " * 14


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def step_split(engine: Engine, batch: int, steps: int) -> dict[str, float]:
    """Median decode-only step of `batch` sequences, and its blocks / head parts (the model's own calls, timed)."""
    model = engine.loaded.model
    parts: dict[str, list[float]] = {"blocks": [], "head": []}
    blocks, logits = model._blocks, model.logits

    def timed(name: str, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def call(*args: object) -> torch.Tensor:
            t0 = time.perf_counter()
            out = fn(*args)
            parts[name].append(time.perf_counter() - t0)
            return out

        return call

    model._blocks, model.logits = timed("blocks", blocks), timed("head", logits)
    try:
        llm = BatchEngine(engine.loaded, BatchConfig(max_num_seqs=max(16, batch)))
        ids = engine.loaded.tokenizer.encode(PROMPT)[:158]
        for _ in range(batch):
            llm.add_request(list(ids), SamplingParams(max_tokens=steps + 2, ignore_eos=True, temperature=0.0))
        totals = []
        while llm.has_unfinished:
            for values in parts.values():
                values.clear()
            t0 = time.perf_counter()
            r = llm.step()
            if r.num_prefill_tokens == 0 and r.num_decode_tokens == batch:
                totals.append((time.perf_counter() - t0, parts["blocks"][0], parts["head"][0]))
    finally:
        del model._blocks, model.logits  # back to the class's methods
    step = statistics.median(t for t, _, _ in totals) * 1e3
    return {
        "step_ms": step,
        "blocks_ms": statistics.median(b for _, b, _ in totals) * 1e3,
        "head_ms": statistics.median(h for _, _, h in totals) * 1e3,
        "steps": len(totals),
    }


def int4_kernels(engine: Engine, rows: int, repeats: int) -> dict[str, float]:
    """Every block linear's own int4 kernel, in the model's order and back to back, as a step runs them.

    Back to back, so that each matmul's weights come from memory as they do inside a step (timing one
    linear repeatedly would read them from cache). The kernel is the one the module runs: torch's packed
    kernel, or `preflight::int4_mm` (engine/quant/native.py) where it builds. Medians over `repeats`.
    """
    linears = []
    for name, module in engine.loaded.model.named_modules():
        if isinstance(module, Int4Linear) and module._packed_for == "cpu":
            k = module.scales_and_zeros.shape[0] * module.group_size
            linears.append((name.rsplit(".", 1)[-1], module, torch.randn(rows, k, dtype=module.scales_and_zeros.dtype)))
    weight_bytes = sum(t.numel() * t.element_size() for _, m, _ in linears for t in (m.qweight, m.scales_and_zeros))
    totals: list[float] = []
    kinds: dict[str, list[float]] = {}
    for _ in range(repeats + 1):  # the first pass warms up
        spent: dict[str, float] = {}
        for kind, m, x in linears:
            t0 = time.perf_counter()
            m._matmul(x, m.qweight, m.group_size, m.scales_and_zeros)
            spent[kind] = spent.get(kind, 0.0) + (time.perf_counter() - t0) * 1e3
        totals.append(sum(spent.values()))
        for kind, ms in spent.items():
            kinds.setdefault(kind, []).append(ms)
    total_ms = statistics.median(totals[1:])
    return {
        "int4_ms": total_ms,
        "int4_gb_s": weight_bytes / (total_ms / 1e3) / 1e9,
        **{f"{k}_ms": statistics.median(v[1:]) for k, v in kinds.items()},
    }


def table_rows(results: dict[int, dict[str, float]]) -> list[list[str]]:
    """The printed table: each batch's parts of a step, its int4 kernels' bandwidth and the head alone."""
    rows = []
    for batch, r in results.items():
        step = r["step_ms"]

        def part(what: str, ms: float, step: float = step) -> tuple[str, str, str]:
            return what, f"{ms:.2f}", f"{ms / step:.0%}"

        linears = " / ".join(f"{r.get(k + '_ms', 0.0):.2f}" for k in ("wqkv", "wo", "w13", "w2"))
        for line in (
            part("int4 matmuls (kernels back to back, 30 layers)", r["int4_ms"]),
            ("  of which wqkv / wo / w13 / w2", linears, ""),
            part("rest of the blocks (attention, norms, RoPE, adds)", r["blocks_ms"] - r["int4_ms"]),
            part("Q8_0 head (outside the package)", r["head_ms"]),
            part("scheduling, sampling, bookkeeping", step - r["blocks_ms"] - r["head_ms"]),
            part("whole step", step),
            ("int4 kernels' weight bandwidth", f"{r['int4_gb_s']:.1f} GB/s", ""),
            ("head alone (model.logits)", f"{r['head_alone_ms']:.2f}", ""),
        ):
            rows.append([str(batch), *line])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("\n".join(f"{k}: {v}" for k, v in conditions().items()), flush=True)
    engine = Engine.load(LoadOptions(quant="int4", device="cpu"))
    print(f"compiled decode ready in {engine.compile(serving=True):.1f} s", file=sys.stderr, flush=True)
    results = {}
    for batch in (int(b) for b in args.batches.split(",")):
        split = step_split(engine, batch, args.steps)
        kernels = int4_kernels(engine, batch, repeats=50)
        head_alone = median_ms(
            lambda b=batch: engine.loaded.model.logits(torch.randn(b, engine.loaded.config.hidden_size)), repeats=20
        )
        results[batch] = {**split, **kernels, "head_alone_ms": head_alone}
    rows = table_rows(results)
    print(format_table(["batch", "part of a decode-only step", "ms", "share"], rows))
    if args.json:
        args.json.write_text(json.dumps({"conditions": conditions(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
