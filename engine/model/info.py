"""`python -m engine info`: what a GGUF file holds and what each weight format would cost.

Format sizes are exact, not estimated: the model is built on the `meta`
device with each format's real modules and their buffers are summed, which
allocates nothing.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from engine.formats import WEIGHT_FORMATS
from engine.model.embedding import Embedding
from engine.model.gguf_file import GGUFModelFile
from engine.model.transformer import Transformer
from engine.quant.functions import compute_dtype
from engine.quant.linear import empty_linear, module_weight_bytes


def format_weight_bytes(config: Any, fmt: str) -> int:
    """Resident weight bytes of the whole model in `fmt` on CPU, computed on the meta device."""
    act = compute_dtype(fmt, torch.device("cpu"))
    embedding = Embedding.empty(config.vocab_size, config.hidden_size, fmt, act, device="meta")
    model = Transformer(config, embedding, lambda _n, i, o: empty_linear(fmt, i, o, device="meta"), act, "meta")
    return module_weight_bytes(model)


def describe_model(model_path: str | None = None) -> dict[str, Any]:
    """Architecture, tensor types, sizes and per-format weight memory as a JSON-ready dict."""
    mf = GGUFModelFile(model_path)
    cfg = mf.config
    types = Counter(mf.tensor_type(n) for n in mf.tensor_names)
    return {
        "path": str(mf.path),
        "name": cfg.name,
        "architecture": mf.architecture,
        "file_bytes": mf.file_bytes,
        "parameters": cfg.n_params,
        "layers": cfg.n_layers,
        "hidden_size": cfg.hidden_size,
        "heads": cfg.n_heads,
        "kv_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "ffn_size": cfg.ffn_size,
        "vocab_size": cfg.vocab_size,
        "context_length": cfg.context_length,
        "rope_theta": cfg.rope_theta,
        "tied_embeddings": cfg.tied_embeddings,
        "tensor_types": dict(sorted(types.items())),
        "kv_bytes_per_token": {"fp32": cfg.kv_bytes_per_token(4), "bf16": cfg.kv_bytes_per_token(2)},
        "formats": {fmt: {"weight_bytes": format_weight_bytes(cfg, fmt)} for fmt in WEIGHT_FORMATS},
    }


def format_model_info(info: dict[str, Any]) -> str:
    """Fixed-width console block: a label column, a value column, a rule per section."""
    rule = "-" * 52
    mib = 1024 * 1024
    lines = [
        rule,
        f"{'Model':<24}{info['name']}",
        f"{'File':<24}{info['path']}",
        f"{'File size':<24}{info['file_bytes'] / mib:.1f} MiB",
        f"{'Architecture':<24}{info['architecture']}",
        f"{'Parameters':<24}{info['parameters'] / 1e6:.1f} M",
        f"{'Layers / hidden / FFN':<24}{info['layers']} / {info['hidden_size']} / {info['ffn_size']}",
        f"{'Heads / KV heads / dim':<24}{info['heads']} / {info['kv_heads']} / {info['head_dim']}",
        f"{'Vocab / context':<24}{info['vocab_size']} / {info['context_length']}",
        f"{'RoPE theta':<24}{info['rope_theta']:g}",
        f"{'Tied embeddings':<24}{'yes' if info['tied_embeddings'] else 'no'}",
        f"{'Tensor types':<24}{', '.join(f'{k} x{v}' for k, v in info['tensor_types'].items())}",
        f"{'KV cache per token':<24}{info['kv_bytes_per_token']['bf16']} B (bf16), "
        f"{info['kv_bytes_per_token']['fp32']} B (fp32)",
        rule,
        f"{'Format':<24}Weight memory",
    ]
    for fmt, row in info["formats"].items():
        lines.append(f"{fmt:<24}{row['weight_bytes'] / mib:.1f} MiB")
    lines.append(rule)
    return "\n".join(lines)
