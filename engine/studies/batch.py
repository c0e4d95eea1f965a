"""The batch study: aggregate decode throughput, per-token latency and memory for batch sizes 1..32.

B distinct prompts of equal length (slices of the evaluation text at
different offsets) are prefilled in one forward pass, then decoded greedily
together for n steps over one `KVCache` with batch_size=B, calling the loaded
Transformer directly. Equal lengths mean one shared position per step, so no
padding or masks are needed.
"""

from __future__ import annotations

import time

import torch

from engine.model.transformer import Transformer
from engine.run.kv_cache import KVCache
from engine.run.runtime import Engine, LoadOptions
from engine.studies.base import (
    Progress,
    StudyOptions,
    StudyResult,
    elapsed_since,
    eval_ids,
    free_memory,
    machine_conditions,
    options_dict,
    rate_text,
    report,
    sample_memory,
    study_run,
)


def batch_prompts(ids: list[int], batch_size: int, length: int) -> list[list[int]]:
    """`batch_size` slices of `length` tokens starting at evenly spread, distinct offsets."""
    spare = len(ids) - length
    if spare < batch_size - 1:
        raise ValueError(
            f"engine/data/eval.txt holds {len(ids)} tokens: too few for {batch_size} distinct prompts of "
            f"{length} tokens; use a shorter prompt or smaller batches"
        )
    step = spare // max(batch_size - 1, 1)
    return [ids[i * step : i * step + length] for i in range(batch_size)]


def prefill(model: Transformer, prompts: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One forward pass over (B, T) prompts; returns the greedy next token of each, shape (B, 1)."""
    logits = model(prompts, cache.length, cache)
    cache.advance(prompts.shape[1])
    return logits[:, -1].argmax(-1, keepdim=True)


def decode_step(model: Transformer, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One greedy step for every sequence of the batch: (B, 1) tokens in, (B, 1) next tokens out."""
    logits = model(tokens, cache.length, cache)
    cache.advance(1)
    return logits[:, -1].argmax(-1, keepdim=True)


def _run_point(model: Transformer, prompts: list[list[int]], steps: int, device: torch.device) -> dict[str, object]:
    batch, length = len(prompts), len(prompts[0])
    with sample_memory(device) as memory, torch.inference_mode():
        cache = KVCache(model.config, batch, length + steps, model.act_dtype, device)
        x = torch.tensor(prompts, dtype=torch.long, device=device)
        t0 = time.perf_counter()
        tokens = prefill(model, x, cache)
        prefill_s = elapsed_since(t0, device)
        t0 = time.perf_counter()
        for _ in range(steps):
            tokens = decode_step(model, tokens, cache)
            memory.sample()
        decode_s = elapsed_since(t0, device)
        kv_bytes = cache.nbytes
        del cache
    return {
        "batch_size": batch,
        "prompt_tokens": length,
        "decode_steps": steps,
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "aggregate_tok_s": batch * steps / decode_s if decode_s > 0 else None,
        "per_token_latency_ms": decode_s / steps * 1000,
        "kv_cache_bytes": kv_bytes,
        "rss_peak_bytes": memory.rss_peak_bytes,
        "rss_peak_delta_bytes": memory.rss_peak_delta_bytes,
        "cuda_peak_bytes": memory.cuda_peak_bytes,
        "rss_method": memory.method,
    }


def _rss_method_text(result: StudyResult) -> str:
    methods = {r["rss_method"] for r in result.rows}
    if methods == {"VmHWM"}:
        return "the kernel's VmHWM, reset when the point starts"
    return "psutil RSS read at the start, after every decode step and at the end"


@study_run
def run_batch_study(options: StudyOptions, progress: Progress | None = None) -> StudyResult:
    length, steps = options.batch_prompt_tokens, options.batch_steps
    report(progress, f"batch: loading {options.quant}")
    engine = Engine.load(LoadOptions(options.quant, options.model_path, options.device, options.use_cache))
    model, device = engine.loaded.model, engine.loaded.device
    ids = eval_ids(engine.loaded.tokenizer, length + max(options.batch_sizes) - 1)
    for size in options.batch_sizes:  # fail before measuring anything if the text cannot supply a batch
        batch_prompts(ids, size, length)
    conditions = machine_conditions(engine, "batch") | options_dict(
        options, "batch_sizes", "batch_prompt_tokens", "batch_steps"
    )
    conditions["sampling"] = "greedy"
    result = StudyResult("batch", conditions)
    _run_point(model, batch_prompts(ids, 1, min(length, 16)), 2, device)  # warm-up, excluded
    for size in options.batch_sizes:
        row = _run_point(model, batch_prompts(ids, size, length), steps, device)
        result.rows.append(row)
        report(
            progress,
            f"batch: {size}: {rate_text(row['aggregate_tok_s'])} tok/s aggregate, "
            f"{row['per_token_latency_ms']:.1f} ms per step",
        )
    del engine, model
    free_memory(device)
    result.notes += [
        f"Each batch: {length}-token prompts taken from engine/data/eval.txt at evenly spread offsets, one "
        f"batched prefill, then {steps} batched greedy decode steps over one KV cache.",
        "aggregate_tok_s = batch_size x decode_steps / decode_s; per_token_latency_ms = decode_s / decode_steps "
        "(every sequence gets one token per step).",
        f"rss_peak_bytes: this process's peak resident set size during the point ({_rss_method_text(result)}); "
        "the delta is over the RSS just before it, so memory freed by an earlier point and reused does not "
        "show in it. kv_cache_bytes: the allocated K/V buffers.",
        "A warm-up point (batch 1, 2 steps) is excluded.",
    ]
    return result
