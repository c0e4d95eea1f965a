"""The KV cache study: decode speed and total time with and without the cache as the sequence grows.

At each sequence length L the prompt is the first L - n tokens of the
evaluation text and the engine generates n tokens greedily (ignoring
end-of-sequence), once reading K/V from the cache and once recomputing the
whole sequence every step. Both runs go through `Engine.stream_ids`, the path
every caller uses.
"""

from __future__ import annotations

from engine.run.runtime import Engine, GenerationResult, LoadOptions
from engine.sampling import SamplingParams
from engine.studies.base import (
    Progress,
    StudyOptions,
    StudyResult,
    eval_ids,
    machine_conditions,
    options_dict,
    rate_text,
    report,
    study_run,
)

WARMUP_TOKENS = 4


def _generate(engine: Engine, prompt: list[int], tokens: int, use_kv_cache: bool) -> GenerationResult:
    params = SamplingParams(max_tokens=tokens, ignore_eos=True)
    return engine.stream_ids(prompt, params, use_kv_cache=use_kv_cache).drain()


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


@study_run
def run_kv_study(options: StudyOptions, progress: Progress | None = None) -> StudyResult:
    n = options.kv_tokens
    report(progress, f"kv: loading {options.quant}")
    engine = Engine.load(LoadOptions(options.quant, options.model_path, options.device, options.use_cache))
    ids = eval_ids(engine.loaded.tokenizer, max(options.kv_lengths))
    conditions = machine_conditions(engine, "kv") | options_dict(options, "kv_lengths", "kv_tokens")
    conditions["sampling"] = "greedy, ignore_eos"
    result = StudyResult("kv", conditions)

    for use_kv in (True, False):  # warm-up, excluded: first calls pay one-off allocation and dispatch costs
        _generate(engine, ids[: min(options.kv_lengths) - n], WARMUP_TOKENS, use_kv)
    for length in options.kv_lengths:
        prompt = ids[: length - n]
        cached = _generate(engine, prompt, n, True)
        report(progress, f"kv: length {length}, cache on: {rate_text(cached.decode_tok_s)} decode tok/s")
        uncached = _generate(engine, prompt, n, False)
        report(progress, f"kv: length {length}, cache off: {rate_text(uncached.decode_tok_s)} decode tok/s")
        cached_total = cached.prefill_s + cached.decode_s
        uncached_total = uncached.prefill_s + uncached.decode_s
        result.rows.append(
            {
                "seq_len": length,
                "prompt_tokens": cached.prompt_tokens,
                "output_tokens": cached.completion_tokens,
                "cached_decode_tok_s": cached.decode_tok_s,
                "uncached_decode_tok_s": uncached.decode_tok_s,
                "decode_speedup": _ratio(cached.decode_tok_s, uncached.decode_tok_s),
                "cached_prefill_s": cached.prefill_s,
                "uncached_prefill_s": uncached.prefill_s,
                "cached_total_s": cached_total,
                "uncached_total_s": uncached_total,
                "total_speedup": _ratio(uncached_total, cached_total),
                "same_tokens": cached.token_ids == uncached.token_ids,
            }
        )
    result.notes += [
        f"Prompt = the first (seq_len - {n}) tokens of engine/data/eval.txt; {n} tokens generated greedily.",
        "Decode tok/s counts the tokens after the first (the first comes with prefill) over the time after "
        "prefill; total = prefill + decode. Speedups are cache on / cache off.",
        f"A warm-up run at the shortest length ({WARMUP_TOKENS} tokens, both modes) is excluded.",
    ]
    if not all(r["same_tokens"] for r in result.rows):
        result.notes.append(
            "same_tokens is false where the two paths picked different tokens at a near-tie "
            "(reduced-precision kernels round differently for one row than for many)."
        )
    return result
