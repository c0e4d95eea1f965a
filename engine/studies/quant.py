"""The weight-format study: size, load time, speed and quality of every format against fp32.

Quality is measured on the evaluation text the project ships: the model reads
it in windows (all positions' logits from one forward pass per window) and
each format's next-token distributions are compared with the fp32 model's:
perplexity of the real next tokens, mean KL(fp32 || format) and top-1
agreement. fp32 is the reference, so its KL is exactly 0 and its agreement 1.
"""

from __future__ import annotations

import math
import time

import torch

from engine.model.info import describe_model
from engine.run.runtime import Engine, LoadOptions
from engine.sampling import SamplingParams
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
    study_run,
)

REFERENCE = "fp32"


def eval_windows(n_tokens: int, window: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) windows; a last window shorter than 2 tokens predicts nothing and is dropped."""
    spans = [(s, min(s + window, n_tokens)) for s in range(0, n_tokens, window)]
    return [(s, e) for s, e in spans if e - s >= 2]


def next_token_logprobs(engine: Engine, ids: list[int], window: int) -> torch.Tensor:
    """Log-probabilities (scored positions, vocab) in fp32 for every position that has a next token in its window."""
    model, device = engine.loaded.model, engine.loaded.device
    parts = []
    with torch.inference_mode():
        for start, end in eval_windows(len(ids), window):
            x = torch.tensor([ids[start:end]], dtype=torch.long, device=device)
            logits = model(x, 0, None, last_only=False)[0, :-1]
            parts.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    return torch.cat(parts)


def scored_targets(ids: list[int], window: int) -> torch.Tensor:
    """The token each scored position should predict (the next token inside its window)."""
    return torch.cat([torch.tensor(ids[s + 1 : e], dtype=torch.long) for s, e in eval_windows(len(ids), window)])


def quality(
    logprobs: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor, chunk: int = 256
) -> dict[str, float]:
    """Perplexity of `targets`, mean KL(reference || logprobs) in nats, top-1 agreement with the reference.

    Computed `chunk` positions at a time so the temporaries stay small beside the (positions, vocab) inputs.
    """
    nll = kl = agree = 0.0
    for i in range(0, targets.numel(), chunk):
        lp, ref, tgt = logprobs[i : i + chunk], reference[i : i + chunk], targets[i : i + chunk]
        nll -= float(lp.gather(1, tgt[:, None]).double().sum())
        kl += float((ref.exp() * (ref - lp)).sum(-1).double().sum())
        agree += float((lp.argmax(-1) == ref.argmax(-1)).sum())
    n = targets.numel()
    return {
        "perplexity": math.exp(nll / n),
        "mean_kl_nats": max(kl / n, 0.0),  # rounding can leave -1e-9 where the distributions are equal
        "top1_agreement": agree / n,
    }


def _load(options: StudyOptions, fmt: str, use_cache: bool) -> tuple[Engine, float]:
    t0 = time.perf_counter()
    engine = Engine.load(LoadOptions(fmt, options.model_path, options.device, use_cache))
    return engine, time.perf_counter() - t0


def _cold_load_s(options: StudyOptions, fmt: str) -> float:
    engine, seconds = _load(options, fmt, use_cache=False)
    device = engine.loaded.device
    del engine
    free_memory(device)
    return seconds


def warm_engine(options: StudyOptions, fmt: str) -> tuple[Engine, float | None]:
    """Load from the weight cache; when there was no entry yet, that load wrote one, so load again."""
    engine, seconds = _load(options, fmt, use_cache=options.use_cache)
    if options.use_cache and engine.info.source != "cache":
        device = engine.loaded.device
        del engine
        free_memory(device)
        engine, seconds = _load(options, fmt, use_cache=True)
    return engine, seconds if engine.info.source == "cache" else None


def measure_speed(engine: Engine, prompt: list[int], tokens: int) -> tuple[float | None, float | None]:
    """Prefill and decode tok/s of one greedy run (`tokens` decoded after `prompt`), after a short warm-up run."""

    def run(p: list[int], n: int) -> tuple[float | None, float | None]:
        result = engine.stream_ids(p, SamplingParams(max_tokens=n, ignore_eos=True)).drain()
        return result.prefill_tok_s, result.decode_tok_s

    run(prompt[:16], 4)  # warm-up, excluded
    return run(prompt, tokens)


def _tensor_types(engine: Engine) -> str:
    """The model file's tensor types and counts, e.g. 'F32 x61, Q4_1 x210, Q8_0 x1'."""
    types = describe_model(engine.info.gguf_path)["tensor_types"]
    return ", ".join(f"{name} x{count}" for name, count in types.items())


def _measure(engine: Engine, options: StudyOptions, prompt: list[int], ids: list[int]) -> dict[str, object]:
    """Speed on the fixed prompt, then the log-probabilities over the evaluation text (kept for scoring)."""
    prefill_tok_s, decode_tok_s = measure_speed(engine, prompt, options.quant_decode_tokens)
    t0 = time.perf_counter()
    logprobs = next_token_logprobs(engine, ids, options.eval_window)
    return {
        "weight_bytes": engine.info.weight_bytes,
        "prefill_tok_s": prefill_tok_s,
        "decode_tok_s": decode_tok_s,
        "eval_s": elapsed_since(t0, engine.loaded.device),
        "logprobs": logprobs,
    }


@study_run
def run_quant_study(options: StudyOptions, progress: Progress | None = None) -> StudyResult:
    formats = (REFERENCE, *[f for f in options.quant_formats if f != REFERENCE])
    conditions: dict[str, object] = {}
    rows: list[dict[str, object]] = []
    prompt: list[int] = []
    ids: list[int] = []
    reference: torch.Tensor | None = None
    for fmt in formats:
        cold_s = None
        if options.quant_cold_load:
            report(progress, f"quant: {fmt}: cold load (converting from the GGUF, no cache)")
            cold_s = _cold_load_s(options, fmt)
        report(progress, f"quant: {fmt}: warm load")
        engine, warm_s = warm_engine(options, fmt)
        device = engine.loaded.device
        if not conditions:
            all_ids = eval_ids(engine.loaded.tokenizer, options.quant_prompt_tokens)
            prompt, ids = all_ids[: options.quant_prompt_tokens], all_ids[: options.eval_max_tokens]
            conditions = machine_conditions(engine, "quant") | options_dict(
                options, "quant_formats", "quant_prompt_tokens", "quant_decode_tokens", "eval_window"
            )
            del conditions["format"]  # one row per format instead
            conditions |= {
                "reference": REFERENCE,
                "eval_tokens": len(ids),
                "file_tensor_types": _tensor_types(engine),
            }
        report(progress, f"quant: {fmt}: speed, then quality over {len(ids)} tokens of the evaluation text")
        measured = _measure(engine, options, prompt, ids)
        del engine
        logprobs = measured.pop("logprobs")
        if reference is None:
            reference = logprobs
        targets = scored_targets(ids, options.eval_window)
        scores = quality(logprobs, reference, targets)
        del logprobs
        free_memory(device)
        rows.append(
            {"format": fmt, "cold_load_s": cold_s, "warm_load_s": warm_s}
            | measured
            | scores
            | {"scored_tokens": int(targets.numel())}
        )
        report(
            progress,
            f"quant: {fmt}: decode {rate_text(measured['decode_tok_s'])} tok/s, perplexity "
            f"{scores['perplexity']:.3f}, KL {scores['mean_kl_nats']:.4f}, top-1 {scores['top1_agreement']:.3f}",
        )
    n_windows = len(eval_windows(len(ids), options.eval_window))
    notes = [
        f"Reference: {REFERENCE}. Quality over {len(ids)} tokens of engine/data/eval.txt in {n_windows} "
        f"window(s) of up to {options.eval_window} tokens ({len(ids) - n_windows} scored next tokens; no "
        "context carried across windows); KL(fp32 || format) in nats, averaged over scored positions.",
        "Cold load: converted from the GGUF with the weight cache off. Warm load: from the converted-weights "
        "cache (a first load that had to write the entry is not counted).",
        f"Speed: prompt of the first {options.quant_prompt_tokens} eval tokens, {options.quant_decode_tokens} "
        "tokens decoded greedily (ignore_eos); a short warm-up run is excluded.",
    ]
    if "Q4_1" in str(conditions["file_tensor_types"]):
        notes.append(
            "The model file already stores its linear weights as Q4_1, so the fp32 reference is those 4-bit "
            "weights dequantized: the figures measure loss against this file, not against the original "
            "checkpoint. int4 keeps the file's own Q4_1 codes (only its scales and the activations entering its "
            "matmuls are rounded to bf16), while int8 and fp8 re-quantize the dequantized weights. int8 and int4 "
            "both keep the Q8_0 embedding table and tied head exactly as the file stores it."
        )
    if not options.quant_cold_load:
        notes.append("Cold loads were not measured (quant_cold_load off): cold_load_s is null.")
    if not options.use_cache:
        notes.append("The weight cache was off: warm_load_s is null.")
    return StudyResult("quant", conditions, rows, notes)
