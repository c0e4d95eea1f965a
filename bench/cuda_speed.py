"""Our engine on a CUDA GPU, against the GPU's own memory-bandwidth bound.

    python bench/cuda_speed.py [--formats fp32,bf16,int8,int4,fp8] [--tokens 128]
        [--prompt-tokens 256] [--batch-sizes 1,8,32] [--json OUT]

No peer engine runs on the GPU machines we borrow, so the yardstick is physics: a
decode step must read every weight once, so one stream cannot beat
(measured copy bandwidth) / (resident weight bytes) tokens per second. The table gives
single-stream prefill tok/s and decode tok/s per format, eager and replayed as a CUDA
graph (engine/run/cuda_graph.py), beside that bound, then continuous
batching (BatchEngine, paged KV) aggregate decode tok/s at several batch sizes, eager and
with its decode-only steps replayed from bucket graphs (engine/batch/decode_graphs.py). On a
machine without CUDA it says so and exits 0, so `make bench` runs it anywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import conditions, fmt_num, fmt_ratio, format_table  # noqa: E402
from engine.batch.batch_engine import BatchConfig, BatchEngine  # noqa: E402
from engine.run.runtime import Engine, GenerationResult, LoadOptions  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402
from engine.studies.base import eval_ids  # noqa: E402


def copy_bandwidth_bytes_s(n_bytes: int = 1 << 30, repeats: int = 10) -> float:
    """Device-to-device copy rate, counting bytes read plus bytes written (the decode bound's yardstick)."""
    src = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * n_bytes * repeats / (time.perf_counter() - t0)


def single_stream(engine: Engine, prompt: list[int], tokens: int) -> dict[str, float | None]:
    def run(ids: list[int], n: int) -> GenerationResult:
        return engine.stream_ids(ids, SamplingParams(max_tokens=n, ignore_eos=True)).drain()

    run(prompt, 8)  # warm-up at the measured shapes: CUDA loads each kernel lazily on first use
    result = run(prompt, tokens)
    return {"prefill_tok_s": result.prefill_tok_s, "decode_tok_s": result.decode_tok_s}


def batched(engine: Engine, prompt: list[int], batch: int, tokens: int, graphs: bool) -> float:
    """Aggregate generated tok/s of `batch` streams decoding together (prefill included in the window).

    One BatchEngine warms up and then is timed, so the bucket graphs the warm-up captured (graphs=True)
    are replayed, not captured again, in the timed window; the warm-up's prompts start elsewhere in the
    text, so the timed prompts find nothing in the prefix cache.
    """
    config = BatchConfig(
        max_num_seqs=batch,
        max_num_batched_tokens=max(512, batch),
        max_model_len=1024,
        decode_graphs="auto" if graphs else "off",
    )
    llm = BatchEngine(engine.loaded, config)
    _batched_once(llm, [prompt[i + 2 * batch : i + 2 * batch + 64] for i in range(batch)], tokens)  # warm-up
    return _batched_once(llm, [prompt[i : i + 64] for i in range(batch)], tokens)


def _batched_once(llm: BatchEngine, prompts: list[list[int]], tokens: int) -> float:
    params = SamplingParams(max_tokens=tokens, ignore_eos=True)
    for ids in prompts:
        llm.add_request(ids, params)  # distinct prompts: no prefix-cache shortcut
    produced = 0
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    while llm.has_unfinished:
        produced += sum(len(o.new_token_ids) for o in llm.step().outputs)
    torch.cuda.synchronize()
    return produced / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="fp32,bf16,int8,int4,fp8")
    parser.add_argument("--tokens", type=int, default=128, help="decode tokens per single-stream run")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="prompt length for prefill")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--json", help="also write every figure here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("cuda_speed: no CUDA GPU on this machine; nothing to measure (skipped)")
        return 0
    cond = {**conditions(), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    bandwidth = copy_bandwidth_bytes_s()
    cond["copy_bandwidth_gb_s"] = round(bandwidth / 1e9, 1)
    print("\n".join(f"{k}: {v}" for k, v in cond.items()))
    rows, results = [], {}
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    for fmt in args.formats.split(","):
        engine = Engine.load(LoadOptions(quant=fmt, device="cuda"))
        info = engine.load_info
        prompt = eval_ids(engine.loaded.tokenizer, args.prompt_tokens + 64)
        engine.cuda_graphs = False
        eager = single_stream(engine, prompt[: args.prompt_tokens], args.tokens)
        engine.cuda_graphs = True
        one = single_stream(engine, prompt[: args.prompt_tokens], args.tokens)
        one["eager_decode_tok_s"] = eager["decode_tok_s"]
        bound = bandwidth / info.weight_bytes
        agg_eager = {b: batched(engine, prompt, b, 64, graphs=False) for b in sizes}
        agg = {b: batched(engine, prompt, b, 64, graphs=True) for b in sizes}
        results[fmt] = {
            **one,
            "bound_tok_s": bound,
            "weight_bytes": info.weight_bytes,
            "batched_tok_s": agg,
            "batched_eager_tok_s": agg_eager,
            "kernels": list(info.kernel_notes),
        }
        rows.append(
            [
                fmt,
                fmt_num(info.weight_bytes / 2**20),
                fmt_num(one["prefill_tok_s"]),
                fmt_num(eager["decode_tok_s"]),
                fmt_num(one["decode_tok_s"]),
                fmt_ratio(one["decode_tok_s"], eager["decode_tok_s"]),
                fmt_num(bound, 0),
                fmt_ratio(one["decode_tok_s"], bound),
                *(fmt_num(agg_eager[b]) for b in sizes),
                *(fmt_num(agg[b]) for b in sizes),
                fmt_ratio(agg[sizes[-1]], agg_eager[sizes[-1]]),
            ]
        )
        del engine
        torch.cuda.empty_cache()
    batch_cols = [*(f"agg eager @{b}" for b in sizes), *(f"agg graph @{b}" for b in sizes), f"graph/eager @{sizes[-1]}"]
    header = [
        "format",
        "weights MiB",
        "prefill tok/s",
        "decode eager",
        "decode graph",
        "graph/eager",
        "bound tok/s",
        "graph/bound",
        *batch_cols,
    ]
    print()
    print(format_table(header, rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"conditions": cond, "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
