"""A ModelSpec from a file: a Hugging Face `config.json`, or a GGUF file's metadata.

The GGUF path reads metadata and tensor shapes with the `gguf` package (llama.cpp's
reader, memory-mapped), so the parameter count is exact and nothing is dequantized.
The planner does not import the bundled engine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from planner.errors import ModelFileError
from planner.model_spec import ModelSpec, MoeSpec, build_model_spec

QKV_BIAS_TYPES = ("qwen2", "qwen2_moe")


def _need(cfg: dict, *keys: str) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    raise ModelFileError(f"config.json lacks {' or '.join(keys)}")


def _hf_moe(cfg: dict, n_layers: int) -> MoeSpec | None:
    n_experts = cfg.get("num_local_experts") or cfg.get("n_routed_experts") or cfg.get("num_experts")
    if not n_experts:
        return None
    dense = int(cfg.get("first_k_dense_replace", 0))
    return MoeSpec(
        n_experts=int(n_experts),
        experts_per_token=int(_need(cfg, "num_experts_per_tok")),
        expert_intermediate_size=int(cfg.get("moe_intermediate_size") or _need(cfg, "intermediate_size")),
        moe_layers=n_layers - dense,
        shared_experts=int(cfg.get("n_shared_experts") or 0),
    )


def _hf_sliding(cfg: dict, n_layers: int) -> tuple[int | None, int | None]:
    window = cfg.get("sliding_window")
    if not window or cfg.get("use_sliding_window") is False:
        return None, None
    layer_types = cfg.get("layer_types")
    if layer_types:
        return int(window), sum(1 for t in layer_types if t == "sliding_attention")
    return int(window), None


def model_from_hf_config(path: str | os.PathLike[str], model_id: str | None = None) -> ModelSpec:
    """Read a transformers `config.json` (Llama, Mistral, Qwen2, Mixtral, DeepSeek-V3 style)."""
    p = Path(path).expanduser()
    try:
        cfg = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"cannot read {p} as a config.json: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ModelFileError(f"{p} is not a JSON object")
    cfg = cfg.get("text_config", cfg)  # multimodal wrappers keep the decoder here
    n_layers = int(_need(cfg, "num_hidden_layers", "n_layer"))
    hidden = int(_need(cfg, "hidden_size", "n_embd"))
    n_heads = int(_need(cfg, "num_attention_heads", "n_head"))
    window, swa_layers = _hf_sliding(cfg, n_layers)
    fields: dict[str, Any] = {
        "id": model_id or p.parent.name or "custom",
        "name": cfg.get("_name_or_path") or p.parent.name or "custom model",
        "architecture": str(cfg.get("model_type", "unknown")),
        "n_layers": n_layers,
        "hidden_size": hidden,
        "n_heads": n_heads,
        "n_kv_heads": int(cfg.get("num_key_value_heads") or n_heads),
        "head_dim": int(cfg.get("head_dim") or hidden // n_heads),
        "intermediate_size": int(_need(cfg, "intermediate_size")),
        "vocab_size": int(_need(cfg, "vocab_size")),
        "max_context": int(_need(cfg, "max_position_embeddings")),
        "tied_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "qkv_bias": bool(cfg.get("attention_bias", cfg.get("model_type") in QKV_BIAS_TYPES)),
        "sliding_window": window,
        "sliding_window_layers": swa_layers,
        "moe": _hf_moe(cfg, n_layers),
        "source": str(p),
    }
    if cfg.get("kv_lora_rank"):
        fields["kv_lora_rank"] = int(cfg["kv_lora_rank"])
        fields["qk_rope_head_dim"] = int(_need(cfg, "qk_rope_head_dim"))
    try:
        return build_model_spec(fields)
    except ValueError as exc:
        raise ModelFileError(f"{p}: {exc}") from exc


def _gguf_reader(p: Path) -> Any:
    try:
        with p.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelFileError(f"cannot open {p}: {exc.strerror}") from exc
    if magic != b"GGUF":
        raise ModelFileError(f"{p} is not a GGUF file (magic {magic!r})")
    from gguf import GGUFReader

    try:
        return GGUFReader(p, "r")
    except (ValueError, IndexError, OSError, KeyError, TypeError) as exc:
        raise ModelFileError(f"cannot read GGUF file {p}: truncated or corrupt ({exc})") from exc


def model_from_gguf(path: str | os.PathLike[str], model_id: str | None = None) -> ModelSpec:
    """Read shape and exact parameter count from GGUF metadata and tensor shapes."""
    p = Path(path).expanduser()
    reader = _gguf_reader(p)

    def meta(key: str, default: Any = None) -> Any:
        field = reader.fields.get(key)
        return default if field is None else field.contents()

    arch = str(meta("general.architecture", ""))
    if not arch:
        raise ModelFileError(f"{p}: GGUF metadata lacks general.architecture")

    def arch_key(suffix: str, default: Any = None, required: bool = False) -> Any:
        value = meta(f"{arch}.{suffix}", default)
        if value is None and required:
            raise ModelFileError(f"{p}: GGUF metadata lacks {arch}.{suffix}")
        return value

    n_layers = int(arch_key("block_count", required=True))
    hidden = int(arch_key("embedding_length", required=True))
    n_heads = int(arch_key("attention.head_count", required=True))
    n_experts = int(arch_key("expert_count", 0) or 0)
    tensors = {t.name for t in reader.tensors}
    vocab = arch_key("vocab_size") or len(meta("tokenizer.ggml.tokens", []) or [])
    fields: dict[str, Any] = {
        "id": model_id or p.stem.lower(),
        "name": str(meta("general.name", p.stem)),
        "architecture": arch,
        "n_layers": n_layers,
        "hidden_size": hidden,
        "n_heads": n_heads,
        "n_kv_heads": int(arch_key("attention.head_count_kv", n_heads)),
        "head_dim": int(arch_key("attention.key_length", hidden // n_heads)),
        "intermediate_size": int(arch_key("feed_forward_length", required=True)),
        "vocab_size": int(vocab),
        "max_context": int(arch_key("context_length", required=True)),
        "tied_embeddings": "output.weight" not in tensors,
        "qkv_bias": "blk.0.attn_q.bias" in tensors,
        "sliding_window": arch_key("attention.sliding_window"),
        "moe": MoeSpec(
            n_experts, int(arch_key("expert_used_count", required=True)),
            int(arch_key("expert_feed_forward_length", 0) or arch_key("feed_forward_length")), n_layers,
        ) if n_experts else None,
        "source": str(p),
    }
    if arch_key("attention.kv_lora_rank"):
        fields["kv_lora_rank"] = int(arch_key("attention.kv_lora_rank"))
        fields["qk_rope_head_dim"] = int(arch_key("rope.dimension_count", required=True))
    counted = sum(int(t.n_elements) for t in reader.tensors)
    try:
        return build_model_spec(fields, params_total=counted)
    except ValueError as exc:
        raise ModelFileError(f"{p}: {exc}") from exc


def model_from_file(path: str | os.PathLike[str]) -> ModelSpec:
    """GGUF by magic, else a config.json."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelFileError(f"model file not found: {p}")
    with p.open("rb") as fh:
        is_gguf = fh.read(4) == b"GGUF"
    return model_from_gguf(p) if is_gguf else model_from_hf_config(p)
