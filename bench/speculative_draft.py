"""Draft-model speculative decoding against target-only decoding and n-gram speculation.

    .venv/bin/python bench/speculative_draft.py [--target fp32] [--draft int4] [--ks 2,4,8]
        [--prompts 4] [--prompt-tokens 48] [--tokens 96] [--threads N] [--device cpu] [--compile] [--json OUT]

Every prompt is the opening of a paragraph of the shipped evaluation text
(engine/data/eval.txt), continued greedily with EOS ignored, one request at a time
through the server's engine (BatchEngine). Each method runs on a fresh engine after a
short warm-up: the target alone, n-gram (prompt lookup) speculation and the draft model
(`--speculative draft:FORMAT`) at each k. Decode tok/s counts the tokens after the first
(which comes with the prompt's step) over the time since that first token, so the
draft model's one-off prefill of the prompt is in it. The acceptance rate is accepted
over proposed drafts; tokens per step is what one target forward produced on average.
Greedy speculation reproduces the target's tokens exactly when the target's forward
rounds the same way for 1 and k + 1 rows, as fp32 does on the CPU: `same tokens` checks
it on every run (the share of the target's tokens matched before the first difference).
A bf16 target's multi-row matmuls round differently, so a near-tie can flip there, for
n-gram and draft speculation alike; the exit code is 1 only when an fp32 target differs.
With --compile both models' decode-only steps run compiled, as the server runs them by
default (engine/serving/state.py): the target alone then decodes compiled, while with
speculation the target's k + 1-token verification stays eager and only the draft's
single-token forwards are compiled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import conditions, fmt_num, fmt_ratio, format_table  # noqa: E402
from engine.batch.batch_engine import BatchConfig, BatchEngine  # noqa: E402
from engine.batch.speculative_method import parse_speculative  # noqa: E402
from engine.formats import WEIGHT_FORMATS  # noqa: E402
from engine.model.loader import LoadedModel, load_model  # noqa: E402
from engine.run.runtime import Engine  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402
from engine.studies.base import eval_text  # noqa: E402

WARMUP_TOKENS = 8
MIN_PARAGRAPH_CHARS = 200


@dataclass(frozen=True, slots=True)
class Method:
    name: str  # "target", "ngram" or "draft:FORMAT"
    k: int  # drafts per step; 0 for the target alone


@dataclass(slots=True)
class RunResult:
    method: str
    k: int
    decode_tok_s: float | None
    acceptance_rate: float | None
    tokens_per_step: float | None
    draft_share: float | None  # fraction of the decode time spent in the draft model's forwards
    same_tokens: float | None  # share of the target's tokens matched before the first difference; None: reference
    outputs: list[list[int]]


def eval_prompts(loaded: LoadedModel, count: int, prompt_tokens: int) -> list[list[int]]:
    """The first `prompt_tokens` tokens of the first `count` long paragraphs of the evaluation text."""
    paragraphs = [p.strip() for p in eval_text().split("\n\n") if len(p.strip()) >= MIN_PARAGRAPH_CHARS]
    if len(paragraphs) < count:
        raise ValueError(f"engine/data/eval.txt has {len(paragraphs)} long paragraphs; ask for at most that many")
    return [loaded.tokenizer.encode(p)[:prompt_tokens] for p in paragraphs[:count]]


def _engine(target: LoadedModel, draft: LoadedModel | None, method: Method, max_len: int) -> BatchEngine:
    config = BatchConfig(max_num_seqs=1, max_model_len=max_len, speculative_tokens=method.k)
    return BatchEngine(target, config, draft if method.name.startswith("draft:") else None)


def _generate(llm: BatchEngine, prompt: list[int], tokens: int) -> tuple[list[int], float | None, float]:
    """One request alone: its tokens, seconds from the first token to the last, and draft seconds in between."""
    seq_id = llm.add_request(prompt, SamplingParams(max_tokens=tokens, ignore_eos=True))
    out: list[int] = []
    first_at: float | None = None
    draft_s = 0.0
    while llm.has_unfinished:
        step = llm.step()
        for o in step.outputs:
            if o.seq_id == seq_id:
                out.extend(o.new_token_ids)
        if first_at is None and out:
            first_at = time.perf_counter()
        elif first_at is not None:
            draft_s += step.draft_s
    decode_s = time.perf_counter() - first_at if first_at is not None and len(out) > 1 else None
    return out, decode_s, draft_s


def run_method(
    target: LoadedModel,
    draft: LoadedModel | None,
    method: Method,
    prompts: list[list[int]],
    tokens: int,
    reference: list[list[int]] | None,
) -> RunResult:
    max_len = max(len(p) for p in prompts) + tokens + 1
    _generate(_engine(target, draft, method, max_len), prompts[0], WARMUP_TOKENS)
    llm = _engine(target, draft, method, max_len)  # fresh: no statistics or prefix cache from the warm-up
    outputs, decode_s, draft_s = [], 0.0, 0.0
    for prompt in prompts:
        out, seconds, drafted = _generate(llm, prompt, tokens)
        outputs.append(out)
        decode_s += seconds or 0.0
        draft_s += drafted
    decoded = sum(len(o) - 1 for o in outputs)
    stats = llm.scheduler.spec_stats
    return RunResult(
        method=method.name,
        k=method.k,
        decode_tok_s=decoded / decode_s if decode_s > 0 else None,
        acceptance_rate=stats.acceptance_rate,
        tokens_per_step=stats.tokens_per_target_step,
        draft_share=draft_s / decode_s if method.name.startswith("draft:") and decode_s > 0 else None,
        same_tokens=None if reference is None else matched_share(outputs, reference),
        outputs=outputs,
    )


def matched_share(outputs: list[list[int]], reference: list[list[int]]) -> float:
    """Tokens equal to the reference before each run's first difference, over all reference tokens."""
    matched = 0
    for out, ref in zip(outputs, reference, strict=True):
        n = 0
        while n < min(len(out), len(ref)) and out[n] == ref[n]:
            n += 1
        matched += n
    return matched / sum(len(r) for r in reference)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def format_results(results: list[RunResult]) -> str:
    base = next(r for r in results if r.method == "target")
    ngram = {r.k: r for r in results if r.method == "ngram"}
    rows = []
    for r in results:
        vs_ngram = fmt_ratio(r.decode_tok_s, ngram[r.k].decode_tok_s) if r.method.startswith("draft:") else "-"
        rows.append(
            [
                r.method if r.k == 0 else f"{r.method}, k={r.k}",
                _pct(r.acceptance_rate),
                fmt_num(r.tokens_per_step, 2),
                fmt_num(r.decode_tok_s),
                fmt_ratio(r.decode_tok_s, base.decode_tok_s),
                vs_ngram,
                _pct(r.draft_share),
                "-" if r.same_tokens is None else "all" if r.same_tokens == 1.0 else f"{r.same_tokens:.1%}",
            ]
        )
    header = ["method", "accepted", "tok/step", "decode tok/s", "vs target", "vs ngram", "in draft", "same tokens"]
    return format_table(header, rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=WEIGHT_FORMATS, default="fp32", help="the served format (default: fp32)")
    ap.add_argument("--draft", choices=WEIGHT_FORMATS, default="int4", help="the draft's format (default: int4)")
    ap.add_argument("--ks", default="2,4,8", help="drafts per step to compare (default: 2,4,8)")
    ap.add_argument("--prompts", type=int, default=4, help="evaluation-text paragraphs used as prompts")
    ap.add_argument("--prompt-tokens", type=int, default=48, help="tokens of each paragraph in its prompt")
    ap.add_argument("--tokens", type=int, default=96, help="greedy tokens generated per prompt")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    ap.add_argument("--compile", action="store_true", help="compiled decode-only steps for target and draft")
    ap.add_argument("--json", metavar="OUT", type=Path, default=None, help="also write conditions and every result")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    if not ks or min(ks) < 1:
        ap.error("--ks needs drafts per step >= 1, e.g. 2,4,8")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    spec = parse_speculative(f"draft:{args.draft}")
    target = load_model(None, args.target, args.device)
    draft = target if args.draft == args.target else load_model(None, args.draft, args.device)
    if args.compile:
        for model in {id(target): target, id(draft): draft}.values():
            reason = Engine(model).compile_by_default(serving=True)
            if reason is not None:
                ap.error(f"--compile: {model.fmt} cannot run compiled here: {reason}")
    prompts = eval_prompts(target, args.prompts, args.prompt_tokens)
    methods = [Method("target", 0)] + [Method(name, k) for k in ks for name in ("ngram", str(spec))]
    results: list[RunResult] = []
    for method in methods:
        reference = results[0].outputs if results else None
        results.append(run_method(target, draft, method, prompts, args.tokens, reference))
        r = results[-1]
        print(f"  {method.name} k={method.k}: {fmt_num(r.decode_tok_s)} tok/s", file=sys.stderr, flush=True)
    cond = conditions() | {
        "torch_threads": torch.get_num_threads(),
        "device": str(target.device),
        "target": args.target,
        "draft": args.draft,
        "decode": "compiled" if args.compile else "eager",
        "prompts": len(prompts),
        "prompt_tokens": statistics.mean(len(p) for p in prompts),
        "tokens_per_prompt": args.tokens,
    }
    print("\n".join(f"{k}: {v}" for k, v in cond.items()))
    print()
    print(format_results(results))
    if args.json:
        runs = [{k: v for k, v in asdict(r).items() if k != "outputs"} for r in results]
        args.json.write_text(json.dumps({"conditions": cond, "runs": runs}, indent=2))
    exact = all(r.same_tokens in (None, 1.0) for r in results)
    return 0 if exact or args.target != "fp32" else 1


if __name__ == "__main__":
    sys.exit(main())
