"""Fidelity to the model file: our formats and llama.cpp against our fp32 model, on the same tokens.

    .venv/bin/python bench/engine_fidelity.py [--formats int4,int8] [--threads N] [--peer llama-cpp|none]
        [--window 512] [--max-tokens 1536] [--json OUT]

Quality over the evaluation text the project ships (engine/data/eval.txt), read in
windows of `--window` tokens with every position's logits from one forward pass
per window (no context carried across windows), exactly as the quant study does:
mean KL(fp32 || X) in nats, top-1 agreement with fp32 and perplexity of the real
next tokens. llama.cpp (llama-cpp-python, `logits_all=True`) reads the same token
ids, window by window, in a worker process of its own.

Greedy text: 4 plain prompts, 32 tokens each, EOS ignored, ours (each format) and
llama.cpp's; agreement is the share of the 128 positions before the first token
where the two continuations part, and the number of continuations identical to
the end.

llama.cpp's AMX build can crash in its first prefill (docs/BENCHMARKS.md): when the
worker dies, it is run again with repacking off (the model params' `use_extra_bufts`),
and the table says which configuration gave the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import conditions, emit_result, format_table, physical_cores, run_worker  # noqa: E402

PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "To make a cup of tea, first",
)
GREEDY_TOKENS = 32
REFERENCE = "fp32"


def _eval_ids(max_tokens: int) -> list[int]:
    from engine.model.gguf_file import GGUFModelFile
    from engine.model.tokenizer import Tokenizer
    from engine.studies.base import eval_text

    return Tokenizer.from_gguf(GGUFModelFile(None)).encode(eval_text())[:max_tokens]


def _prompt_ids() -> list[list[int]]:
    from engine.model.gguf_file import GGUFModelFile
    from engine.model.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(GGUFModelFile(None))
    return [tok.encode(p) for p in PROMPTS]


# ---------------------------------------------------------------- llama.cpp worker


def _no_repack(llama_cpp: object) -> None:
    """Make every model load with llama.cpp's extra (repacked, AMX) buffer types off."""
    low = llama_cpp.llama_cpp  # type: ignore[attr-defined]
    default = low.llama_model_default_params

    def params() -> object:
        p = default()
        if not hasattr(p, "use_extra_bufts"):
            raise RuntimeError("this llama-cpp-python has no use_extra_bufts model param to turn repacking off")
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params


def theirs_worker(spec: dict) -> dict:
    """llama.cpp's log-probabilities over the windows (saved as .npy) and its greedy continuations."""
    import llama_cpp
    import numpy as np

    if spec["no_repack"]:
        _no_repack(llama_cpp)
    n = spec["threads"]
    llm = llama_cpp.Llama(
        model_path=spec["model_path"],
        n_ctx=max(1024, spec["window"] + 16),
        n_batch=512,
        n_ubatch=512,
        n_threads=n,
        n_threads_batch=n,
        logits_all=True,
        verbose=False,
    )
    ids, window = spec["ids"], spec["window"]
    parts = []
    for start, end in _windows(len(ids), window):
        llm.reset()
        llm.eval(ids[start:end])
        logits = np.array(llm.scores[: end - start - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        parts.append((logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32))
    np.save(spec["out"], np.concatenate(parts))
    greedy = []
    for prompt in spec["prompts"]:
        llm.reset()
        llm.eval(prompt)
        toks = [int(np.argmax(llm.scores[llm.n_tokens - 1]))]
        for _ in range(GREEDY_TOKENS - 1):
            llm.eval([toks[-1]])
            toks.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        greedy.append(toks)
    from importlib import metadata

    return {"greedy": greedy, "version": metadata.version("llama_cpp_python")}


def _windows(n_tokens: int, window: int) -> list[tuple[int, int]]:
    from engine.studies.quant import eval_windows

    return eval_windows(n_tokens, window)


def _run_theirs(spec: dict, tmp: Path) -> tuple[dict | None, str]:
    """llama.cpp's figures and the configuration that produced them (or why there are none)."""
    for no_repack in (False, True):
        spec_path = tmp / f"theirs-{int(no_repack)}.json"
        spec_path.write_text(json.dumps(spec | {"no_repack": no_repack}))
        try:
            result = run_worker([str(Path(__file__).resolve()), "--worker", str(spec_path)])
        except RuntimeError as exc:
            if no_repack:
                return None, f"llama.cpp failed with repacking on and off: {str(exc)[-300:]}"
            continue
        return result, "repacking off (use_extra_bufts = False)" if no_repack else "default (repacking on)"
    return None, "unreachable"


# ---------------------------------------------------------------- ours and the table


def _ours(fmt: str, ids: list[int], window: int, prompts: list[list[int]], threads: int) -> tuple[object, list]:
    import torch

    from engine.run.runtime import Engine, LoadOptions
    from engine.sampling import SamplingParams
    from engine.studies.quant import next_token_logprobs

    torch.set_num_threads(threads)
    engine = Engine.load(LoadOptions(fmt, None, "cpu", True))
    logprobs = next_token_logprobs(engine, ids, window)
    greedy = [
        engine.stream_ids(p, SamplingParams(max_tokens=GREEDY_TOKENS, ignore_eos=True)).drain().token_ids
        for p in prompts
    ]
    return logprobs, greedy


def _agreement(a: list[list[int]], b: list[list[int]]) -> tuple[float, int]:
    """Share of positions before the first divergence, and continuations identical to the end."""
    same = [
        next((i for i, (x, y) in enumerate(zip(p, q, strict=False)) if x != y), len(p))
        for p, q in zip(a, b, strict=True)
    ]
    return sum(same) / sum(len(p) for p in a), sum(s == len(p) for s, p in zip(same, a, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--formats", default="int4,int8")
    ap.add_argument("--threads", type=int, default=physical_cores())
    ap.add_argument("--peer", choices=("llama-cpp", "none"), default="llama-cpp")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=1536)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        emit_result(theirs_worker(json.loads(args.worker.read_text())))
        return

    import numpy as np
    import torch

    from engine.model.gguf_file import bundled_model_path
    from engine.studies.quant import quality, scored_targets

    ids, prompts = _eval_ids(args.max_tokens), _prompt_ids()
    targets = scored_targets(ids, args.window)
    formats = [f for f in args.formats.split(",") if f and f != REFERENCE]
    reference, ref_greedy = _ours(REFERENCE, ids, args.window, prompts, args.threads)
    rows: dict[str, dict] = {REFERENCE: quality(reference, reference, targets) | {"greedy": ref_greedy}}  # type: ignore[arg-type]
    for fmt in formats:
        logprobs, greedy = _ours(fmt, ids, args.window, prompts, args.threads)
        rows[fmt] = quality(logprobs, reference, targets) | {"greedy": greedy}  # type: ignore[arg-type]
    peer_note = "llama.cpp not run (--peer none)"
    if args.peer == "llama-cpp":
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "theirs.npy"
            spec = {
                "model_path": str(bundled_model_path()),
                "threads": args.threads,
                "window": args.window,
                "ids": ids,
                "prompts": prompts,
                "out": str(out),
            }
            theirs, peer_note = _run_theirs(spec, Path(tmp))
            if theirs is not None:
                lp = torch.from_numpy(np.load(out))
                rows["llama.cpp"] = quality(lp, reference, targets) | {"greedy": theirs["greedy"]}  # type: ignore[arg-type]
                peer_note = f"llama.cpp via llama-cpp-python {theirs['version']}, {peer_note}"
    print(json.dumps(conditions(), indent=1))
    print(f"{len(ids)} eval tokens, windows of {args.window}, {targets.numel()} scored; {peer_note}")
    peer = rows.get("llama.cpp")
    header = ["model", "KL(fp32||X) nats", "top-1 vs fp32", "perplexity", "greedy = fp32", "greedy = llama.cpp"]
    table = []
    for name, r in rows.items():
        fp32_share, fp32_full = _agreement(r["greedy"], ref_greedy)
        peer_cell = "-"
        if peer is not None:
            share, full = _agreement(r["greedy"], peer["greedy"])
            peer_cell = f"{share:.0%} ({full}/{len(PROMPTS)})"
        table.append(
            [
                name,
                f"{r['mean_kl_nats']:.5f}",
                f"{r['top1_agreement']:.3f}",
                f"{r['perplexity']:.3f}" if math.isfinite(r["perplexity"]) else "-",
                f"{fp32_share:.0%} ({fp32_full}/{len(PROMPTS)})",
                peer_cell,
            ]
        )
    print(format_table(header, table))
    if args.json:
        args.json.write_text(json.dumps({"conditions": conditions(), "note": peer_note, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
