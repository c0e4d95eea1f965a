"""The precision study: every linear layer of the real model in FP8 E4M3, FP8 E5M2, INT8 and INT4 g32 / g128.

The reference is the fp32 model (the GGUF's weights dequantized). For each linear weight and each
scheme (engine/quant/roundtrip.py) the study measures

- the weight reconstruction error: relative Frobenius norm and largest absolute element error;
- the output error ||x Wq^T - x W^T|| / ||x W^T|| on the layer's real inputs, captured with forward
  hooks while the fp32 model reads the first `precision_act_tokens` tokens of engine/data/eval.txt;
- end to end, the whole model with every linear in that scheme, scored over the evaluation text by
  the quant study's own scoring (perplexity, KL(fp32 || scheme), top-1 agreement).

End to end is weight-only simulation: each linear's fp32 weight is swapped for its round trip while
activations stay fp32, so the figures isolate what the weight scheme loses (the served int8/int4/fp8
formats also round activations to bf16, which the quant study measures). The fused projections are
one layer each (wqkv = q, k, v; w13 = gate, up): every scheme scales per output row or per group along
the input, so fusing rows changes no quantized value. The tied embedding / head is treated as the served
formats treat it: fp8 schemes store it in that fp8 dtype (per row), int8 and int4 keep the file's Q8_0
table, which the fp32 reference already holds exactly; its per-layer row is measured for every scheme.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from engine.quant.linear import QuantLinear
from engine.quant.roundtrip import output_error, roundtrip, weight_errors
from engine.run.runtime import Engine, LoadOptions
from engine.studies.base import (
    Progress,
    StudyOptions,
    StudyResult,
    eval_ids,
    free_memory,
    machine_conditions,
    options_dict,
    report,
    study_run,
)
from engine.studies.quant import REFERENCE, eval_windows, next_token_logprobs, quality, scored_targets

HEAD = "embedding.head"
TOP_LAYERS = 5  # layers named as most sensitive per scheme
FP8_SCHEMES = ("fp8-e4m3", "fp8-e5m2")  # the schemes whose served format stores the tied table in that format


def linear_layers(model: nn.Module) -> dict[str, QuantLinear]:
    """Every linear weight of the model by module name, blocks in order, the tied head last (the model registers
    it first, as the embedding; last it closes the heatmap as it closes the forward pass)."""
    found = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    return {name: m for name, m in found.items() if name != HEAD} | ({HEAD: found[HEAD]} if HEAD in found else {})


def layer_label(name: str) -> str:
    """'layers.3.feed_forward.w2' -> 'L3.w2'; the head keeps a plain name."""
    parts = name.split(".")
    return f"L{parts[1]}.{parts[-1]}" if parts[0] == "layers" else "head"


def capture_inputs(engine: Engine, layers: dict[str, QuantLinear], ids: list[int]) -> dict[str, torch.Tensor]:
    """Each layer's input rows (tokens, in_features) in fp32 while the model reads `ids` in one forward pass."""
    captured: dict[str, torch.Tensor] = {}

    def hook(name: str):  # noqa: ANN202 - a forward hook's signature is torch's
        def keep(_module: nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            captured[name] = args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu()

        return keep

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    try:
        with torch.inference_mode():
            x = torch.tensor([ids], dtype=torch.long, device=engine.loaded.device)
            engine.loaded.model(x, 0, None, last_only=False)
    finally:
        for h in handles:
            h.remove()
    return captured


@contextmanager
def weights_in(layers: dict[str, QuantLinear], scheme: str) -> Iterator[None]:
    """Every linear's fp32 weight swapped for its `scheme` round trip (the head only for fp8 schemes), then restored."""
    originals: dict[str, nn.Parameter] = {}
    try:
        for name, m in layers.items():
            if name == HEAD and scheme not in FP8_SCHEMES:
                continue
            originals[name] = m.weight  # type: ignore[assignment]
            wq = roundtrip(m.weight.detach().float().cpu(), scheme).to(m.weight.device, m.weight.dtype)
            m.weight = nn.Parameter(wq, requires_grad=False)
        yield
    finally:
        for name, weight in originals.items():
            layers[name].weight = weight


def most_sensitive(rows: list[dict[str, object]], scheme: str, k: int = TOP_LAYERS) -> list[str]:
    """The `k` layers with the largest output error under `scheme`, largest first; a layer that lost nothing is none."""
    mine = [r for r in rows if r["scheme"] == scheme and float(r["output_rel_err"]) > 0]  # type: ignore[arg-type]
    return [str(r["layer"]) for r in sorted(mine, key=lambda r: -float(r["output_rel_err"]))[:k]]  # type: ignore[arg-type]


def quantized_end_to_end(row: dict[str, object]) -> bool:
    """Whether the end-to-end run put this layer row's weight in its scheme (the head: fp8 schemes only)."""
    return row["kind"] != "head" or row["scheme"] in FP8_SCHEMES


def _layer_rows(
    layers: dict[str, QuantLinear], inputs: dict[str, torch.Tensor], schemes: tuple[str, ...], progress: Progress | None
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for i, (name, m) in enumerate(layers.items()):
        w = m.weight.detach().float().cpu()
        block = int(name.split(".")[1]) if name.startswith("layers.") else None
        if i % 20 == 0:
            report(progress, f"precision: layer {i + 1} of {len(layers)} ({layer_label(name)})")
        for scheme in schemes:
            wq = roundtrip(w, scheme)
            rows.append(
                {
                    "scope": "layer",
                    "scheme": scheme,
                    "layer": layer_label(name),
                    "block": block,
                    "kind": name.rsplit(".", 1)[-1],
                }
                | weight_errors(w, wq)
                | {"output_rel_err": output_error(w, wq, inputs[name])}
            )
    return rows


@study_run
def run_precision_study(options: StudyOptions, progress: Progress | None = None) -> StudyResult:
    schemes = options.precision_schemes
    report(progress, "precision: loading the fp32 reference")
    engine = Engine.load(LoadOptions(REFERENCE, options.model_path, options.device, options.use_cache))
    device = engine.loaded.device
    ids = eval_ids(engine.loaded.tokenizer, max(options.precision_act_tokens, options.eval_max_tokens))
    act_ids, ids = ids[: options.precision_act_tokens], ids[: options.eval_max_tokens]
    conditions = machine_conditions(engine, "precision") | options_dict(
        options, "precision_schemes", "precision_act_tokens", "eval_window"
    )
    del conditions["format"]  # one row per scheme instead
    layers = linear_layers(engine.loaded.model)
    conditions |= {"reference": REFERENCE, "eval_tokens": len(ids), "linear_layers": len(layers)}

    report(progress, f"precision: capturing every layer's inputs over {len(act_ids)} tokens")
    inputs = capture_inputs(engine, layers, act_ids)
    layer_rows = _layer_rows(layers, inputs, schemes, progress)
    del inputs

    targets = scored_targets(ids, options.eval_window)
    report(progress, f"precision: fp32 reference over {len(ids)} tokens of the evaluation text")
    reference = next_token_logprobs(engine, ids, options.eval_window)
    summary = [
        {"scope": "model", "scheme": REFERENCE, "layer": "all"}
        | quality(reference, reference, targets)
        | {"scored_tokens": int(targets.numel())}
    ]
    for scheme in schemes:
        report(progress, f"precision: {scheme}: every linear in {scheme}, quality over the evaluation text")
        with weights_in(layers, scheme):
            logprobs = next_token_logprobs(engine, ids, options.eval_window)
        scores = quality(logprobs, reference, targets)
        del logprobs
        mine = [r for r in layer_rows if r["scheme"] == scheme and quantized_end_to_end(r)]
        summary.append(
            {"scope": "model", "scheme": scheme, "layer": "all"}
            | {
                "weight_rel_fro": sum(float(r["weight_rel_fro"]) for r in mine) / len(mine),  # type: ignore[arg-type]
                "weight_max_abs": max(float(r["weight_max_abs"]) for r in mine),  # type: ignore[arg-type]
                "output_rel_err": sum(float(r["output_rel_err"]) for r in mine) / len(mine),  # type: ignore[arg-type]
            }
            | scores
            | {
                "scored_tokens": int(targets.numel()),
                "most_sensitive": ", ".join(most_sensitive(layer_rows, scheme)) or "none (no layer lost anything)",
            }
        )
        report(
            progress,
            f"precision: {scheme}: perplexity {scores['perplexity']:.3f}, KL {scores['mean_kl_nats']:.4f}, "
            f"top-1 {scores['top1_agreement']:.3f}",
        )
    del engine
    free_memory(device)
    return StudyResult("precision", conditions, summary + layer_rows, _notes(options, layer_rows, len(ids)))


def _notes(options: StudyOptions, layer_rows: list[dict[str, object]], n_ids: int) -> list[str]:
    n_windows = len(eval_windows(n_ids, options.eval_window))
    schemes = options.precision_schemes
    tops = {s: most_sensitive(layer_rows, s) for s in schemes}
    lossy = [t for t in tops.values() if len(t) == TOP_LAYERS]  # a scheme that lost on fewer layers ranks nothing
    shared = [layer for layer in lossy[0] if all(layer in t for t in lossy)] if len(lossy) > 1 else []
    notes = [
        f"Reference: {REFERENCE} (the GGUF's weights dequantized). Per layer: relative Frobenius and max absolute "
        f"weight error, and the output error ||x Wq^T - x W^T|| / ||x W^T|| on each layer's real inputs over the "
        f"first {options.precision_act_tokens} tokens of engine/data/eval.txt. Model rows average the layers the "
        "end-to-end run quantized (max absolute: the largest over them).",
        f"End to end: every linear's weight in the scheme, activations fp32 (weight-only); quality over {n_ids} "
        f"tokens in {n_windows} window(s) of up to {options.eval_window}, scored as the quant study scores.",
        "The tied embedding / head ('head') is quantized end to end only by the fp8 schemes, as the served fp8 "
        "format stores it; int8 and int4 keep the file's Q8_0 table, which the reference holds exactly.",
        "The file stores every block linear as Q4_1 (4-bit codes, min/max per 32 values), so int4-g32 re-finds "
        "the file's own grid and loses nothing on them against this reference; int4-g128 does not. The head (a Q8_0 "
        "table) is off that grid, so its row shows what int4-g32 costs on a weight the file did not pre-round.",
    ]
    notes += [
        f"Most sensitive under {s} (output error): {', '.join(t) or 'none, no layer lost anything'}."
        for s, t in tops.items()
    ]
    if shared:
        notes.append(f"Among the most sensitive under every scheme: {', '.join(shared)}.")
    return notes
