"""`python -m engine generate`: one prompt's text on stdout, a summary (or one JSON object) after it.

Plain generation streams through `Engine.stream`; `--speculative` runs the request alone through the
server's batch engine, built as `serve` builds it, so both commands speculate the same way.
Heavy modules are imported inside the functions: `--help` loads none of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from engine.cli_args import add_decode_args, add_speculative_args, add_weight_args, load_quant
from engine.errors import EngineError

if TYPE_CHECKING:
    from engine.batch.batch_engine import BatchEngine
    from engine.run.batch_generation import BatchGeneration, SpeculationFigures
    from engine.run.runtime import Engine, Generation, GenerationResult
    from engine.sampling import SamplingParams
    from engine.serving.options import ServerOptions


def add_generate_args(p: argparse.ArgumentParser) -> None:
    """Flags of `generate` after the model's: the prompt, sampling, output and speculation."""
    add_weight_args(p, "weight format")
    p.add_argument("--prompt", required=True, help="prompt text (with --chat: the user message)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", default=None, help="system message for --chat")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--logprobs", action="store_true", help="record the chosen tokens' logprobs")
    p.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-sequence")
    p.add_argument("--no-kv-cache", action="store_true", help="recompute the whole sequence every step")
    p.add_argument("--json", action="store_true", help="print one JSON object (text, token ids, timings, speculation)")
    add_speculative_args(p)
    add_decode_args(
        p,
        "compiled decode step: the default where it works (CPU with a C++ compiler; built once per machine, "
        "about a minute, seconds after); elsewhere eager, with the reason on stderr",
    )


def run_generate(args: argparse.Namespace) -> int:
    from engine.run.batch_generation import SpeculationFigures
    from engine.run.runtime import Engine, LoadOptions
    from engine.sampling import SamplingParams

    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=tuple(args.stop),
        logprobs=args.logprobs,
        ignore_eos=args.ignore_eos,
    )
    speculative = _speculative_options(args)  # checked before the weights load: a bad value fails in a moment
    engine = Engine.load(
        LoadOptions(load_quant(args), args.model, args.device, not args.no_weight_cache, weights_dir=args.weights)
    )
    if args.compile and not args.no_kv_cache:  # without the cache no step runs compiled: nothing to build
        say = lambda line: print(line, file=sys.stderr)  # noqa: E731 - notes on stderr, the text on stdout
        # With speculation the server's batch engine decodes: its step kind (the paged cache) is the one compiled.
        reason = engine.compile_by_default(serving=speculative is not None, on_build=say)
        if reason is not None:
            say(f"eager decode: {reason}")
    prompt: str | list[dict] = args.prompt
    if args.chat:
        prompt = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}
        ]
    llm: BatchEngine | None = None
    gen: Generation | BatchGeneration
    if speculative is None:
        gen = engine.stream(prompt, params, chat=args.chat, use_kv_cache=not args.no_kv_cache)
    else:
        gen, llm = _speculative_stream(engine, speculative, prompt, params, args.chat)
        if engine.loaded.model.compiled:  # the server's rule: a draft of its own compiles after the target
            _compile_draft(llm)
    for delta in gen:
        if not args.json:
            sys.stdout.write(delta)
            sys.stdout.flush()
    result = gen.result
    if result is None:
        raise EngineError("generation ended without a result")
    figures = SpeculationFigures.of(llm, speculative.speculative) if llm is not None and speculative else None
    _report(args.json, engine, result, figures)
    return 0


def _report(as_json: bool, engine: Engine, result: GenerationResult, figures: SpeculationFigures | None) -> None:
    """After the text: one JSON object (--json), or a summary line (and one for speculation) on stderr."""
    if as_json:
        out = result.to_dict() | {"load": _load_dict(engine)}
        out["speculative"] = figures.to_dict() if figures is not None else None
        print(json.dumps(out, ensure_ascii=False))
        return
    sys.stdout.write("\n")
    rate = lambda v: f"{v:.1f}" if v is not None else "n/a"  # noqa: E731
    print(
        f"[{engine.info.weights_label} on {engine.info.device}, "
        f"load {engine.info.load_s:.2f}s ({engine.info.source}), "
        + (f"compile {engine.info.compile_s:.1f}s, " if engine.info.compile_s is not None else "")
        + f"prompt {result.prompt_tokens} tok at {rate(result.prefill_tok_s)} tok/s, "
        f"output {result.completion_tokens} tok at {rate(result.decode_tok_s)} tok/s, "
        f"finish {result.finish_reason}]",
        file=sys.stderr,
    )
    if figures is not None:
        print(_speculation_line(figures), file=sys.stderr)


def _speculative_options(args: argparse.Namespace) -> ServerOptions | None:
    """`generate --speculative` runs the server's batch engine, so the server's options say how (None: no speculation).

    ServerOptions checks the method, the format of a draft and k by the rules, and with the messages,
    of `serve`; one sequence at a time, nothing queued behind it.
    """
    from pydantic import ValidationError

    from engine.serving.options import ServerOptions, describe_options_error

    try:
        options = ServerOptions(
            model=args.model,
            device=args.device,
            use_weight_cache=not args.no_weight_cache,
            **({"quant": args.quant} if args.quant is not None else {}),
            weights=args.weights,
            max_num_seqs=1,
            max_queue=1,
            compile=args.compile,
            speculative=args.speculative,
            num_speculative_tokens=args.num_speculative_tokens,
        )
    except ValidationError as exc:
        raise ValueError(describe_options_error(exc)) from None
    if options.speculative_method.kind == "none":
        return None
    if args.no_kv_cache:
        raise ValueError(
            "--no-kv-cache cannot go with --speculative: drafts are verified against the KV cache; drop one of them"
        )
    return options


def _speculative_stream(
    engine: Engine, options: ServerOptions, prompt: str | list[dict], params: SamplingParams, chat: bool
) -> tuple[BatchGeneration, BatchEngine]:
    """The request alone in a batch engine built as the server builds one, its KV pool sized for this request."""
    from engine.run.batch_generation import BatchGeneration
    from engine.serving.state import build_batch_engine

    ids = engine.encode_prompt(prompt, chat)
    engine.check_fits(len(ids), params.max_tokens)
    llm = build_batch_engine(options.model_copy(update={"max_model_len": len(ids) + params.max_tokens}), engine.loaded)
    return BatchGeneration(llm, ids, params), llm


def _compile_draft(llm: BatchEngine) -> None:
    """The draft model's compiled step, as the server builds it; why it drafts eagerly on stderr when it cannot."""
    from engine.serving.state import compile_draft

    reason = compile_draft(llm, on_build=lambda note: print(f"draft model: {note}", file=sys.stderr))
    if reason is not None:
        print(f"draft model: eager decode: {reason}", file=sys.stderr)


def _speculation_line(figures: SpeculationFigures) -> str:
    """'speculative draft:int4 k=4: acceptance 97%, 3.9 tokens per target step' (stderr, after the text)."""
    head = f"speculative {figures.method} k={figures.num_speculative_tokens}"
    if figures.acceptance_rate is None or figures.tokens_per_target_step is None:
        return f"{head}: no drafts proposed"
    rate, per_step = figures.acceptance_rate, figures.tokens_per_target_step
    return f"{head}: acceptance {rate:.0%}, {per_step:.1f} tokens per target step"


def _load_dict(engine: Engine) -> dict[str, object]:
    info = engine.info
    return {
        "quant": info.quant,
        "weights_dir": info.weights_dir,
        "recipe": info.recipe,
        "device": info.device,
        "source": info.source,
        "load_s": info.load_s,
        "decode": info.decode,
        "compile_s": info.compile_s,
        "eager_reason": info.eager_reason,
        "weight_bytes": info.weight_bytes,
        "gguf_bytes": info.gguf_bytes,
        "kernel_notes": list(info.kernel_notes),
    }
