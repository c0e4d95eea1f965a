"""The shape of a transformer as the sizing math needs it, and its parameter count.

A `ModelSpec` comes from the catalog (planner/data/models.json), a Hugging Face
`config.json`, or a GGUF file's metadata (planner.model_files). Parameters are
counted from the shape unless a published count is given (DeepSeek-V3's MLA and
shared experts are not worth re-deriving).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

# One home for "a size in a model's shape": a true integer (no float, bool or string), at least 1,
# and small enough that the sizing math stays in float range. Catalog entries and model files use it.
MAX_SIZE = 2**31 - 1
Size = Annotated[int, Field(strict=True, gt=0, le=MAX_SIZE)]
Count = Annotated[int, Field(strict=True, ge=0, le=MAX_SIZE)]  # a size where 0 means "none"


@dataclass(frozen=True, slots=True)
class MoeSpec:
    """Routed experts: `n_experts` per MoE layer, `experts_per_token` active."""

    n_experts: int
    experts_per_token: int
    expert_intermediate_size: int
    moe_layers: int
    shared_experts: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.experts_per_token <= self.n_experts:
            raise ValueError(f"experts_per_token {self.experts_per_token} must be in 1..{self.n_experts}")
        if self.moe_layers <= 0:
            raise ValueError(f"moe_layers must be positive, got {self.moe_layers} (dense layers cover the model)")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything sizing needs; `params_total`/`params_active` are filled by `build_model_spec`."""

    id: str
    name: str
    architecture: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_context: int
    tied_embeddings: bool
    params_total: int
    params_active: int
    hf_repo: str | None = None
    qkv_bias: bool = False
    sliding_window: int | None = None
    sliding_window_layers: int | None = None  # None with a window: every layer slides
    kv_lora_rank: int | None = None  # MLA (DeepSeek): the cache holds this latent ...
    qk_rope_head_dim: int | None = None  # ... plus the shared RoPE key, per layer
    moe: MoeSpec | None = None
    source: str = ""
    notes: tuple[str, ...] = ()  # how the shape was read, when it is an approximation (shown with the plan)

    def __post_init__(self) -> None:
        for name in ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim", "vocab_size", "max_context"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model {self.id}: {name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"model {self.id}: {self.n_heads} heads are not a multiple of {self.n_kv_heads} KV heads")
        if (self.kv_lora_rank is None) != (self.qk_rope_head_dim is None):
            raise ValueError(f"model {self.id}: MLA needs both kv_lora_rank and qk_rope_head_dim")
        if self.moe is not None and self.moe.moe_layers > self.n_layers:
            raise ValueError(f"model {self.id}: {self.moe.moe_layers} MoE layers but {self.n_layers} layers")
        if (self.sliding_window_layers or 0) > self.n_layers:
            raise ValueError(f"model {self.id}: {self.sliding_window_layers} sliding layers but {self.n_layers} layers")

    @property
    def uses_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def embedding_params(self) -> int:
        """Token table plus the output head when untied."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    @property
    def head_params(self) -> int:
        """The output projection (the table itself when tied)."""
        return self.vocab_size * self.hidden_size

    @property
    def attention_params(self) -> int:
        """Q, K, V, O projections (and QKV bias) over all layers; MLA's latent projections are not counted here."""
        return _attention_params(
            self.n_layers, self.hidden_size, self.n_heads, self.n_kv_heads, self.head_dim, self.qkv_bias
        )

    @property
    def dense_mlp_params_per_layer(self) -> int:
        """Gate, up and down projections of one dense layer."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def norm_params(self) -> int:
        return (2 * self.n_layers + 1) * self.hidden_size

    @property
    def expert_params(self) -> int:
        """All routed-expert weights (0 for a dense model)."""
        if self.moe is None:
            return 0
        m = self.moe
        return m.moe_layers * m.n_experts * 3 * self.hidden_size * m.expert_intermediate_size

    @property
    def matmul_params_active(self) -> int:
        """Weights one token multiplies through: active params less the input lookup table and norms."""
        lookup = 0 if self.tied_embeddings else self.vocab_size * self.hidden_size
        return self.params_active - lookup - self.norm_params

    @property
    def swa_layers(self) -> int:
        if self.sliding_window is None:
            return 0
        return self.n_layers if self.sliding_window_layers is None else self.sliding_window_layers


def _attention_params(n_layers: int, hidden: int, n_heads: int, n_kv: int, head_dim: int, bias: bool) -> int:
    q, kv = n_heads * head_dim, n_kv * head_dim
    per_layer = hidden * q + 2 * hidden * kv + q * hidden + ((q + 2 * kv) if bias else 0)
    return n_layers * per_layer


def estimate_params(
    *,
    n_layers: int,
    hidden_size: int,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    intermediate_size: int,
    vocab_size: int,
    tied_embeddings: bool,
    qkv_bias: bool = False,
    moe: MoeSpec | None = None,
) -> tuple[int, int]:
    """(total, active) parameters of a Llama/Mistral/Qwen2/Mixtral-style decoder.

    Attention: Q, K, V, O projections (+ QKV bias). MLP: gate, up, down (3 x hidden x ffn)
    on dense layers; on MoE layers each expert is such an MLP plus a router (hidden x experts).
    Two RMSNorm vectors per layer and a final one. Embedding once, head again when untied.
    """
    h = hidden_size
    attn = _attention_params(n_layers, h, n_heads, n_kv_heads, head_dim, qkv_bias)
    mlp_one = 3 * h * intermediate_size
    if moe is None:
        mlp_total = mlp_active = n_layers * mlp_one
    else:
        expert = 3 * h * moe.expert_intermediate_size
        dense_layers = n_layers - moe.moe_layers
        per_moe_fixed = h * moe.n_experts + moe.shared_experts * expert
        mlp_total = dense_layers * mlp_one + moe.moe_layers * (moe.n_experts * expert + per_moe_fixed)
        mlp_active = dense_layers * mlp_one + moe.moe_layers * (moe.experts_per_token * expert + per_moe_fixed)
    norms = (2 * n_layers + 1) * h
    emb = vocab_size * h * (1 if tied_embeddings else 2)
    return attn + mlp_total + norms + emb, attn + mlp_active + norms + emb


def build_model_spec(fields: dict, params_total: int | None = None, params_active: int | None = None) -> ModelSpec:
    """A ModelSpec from shape fields; params counted from the shape unless given."""
    shape_keys = (
        "n_layers",
        "hidden_size",
        "n_heads",
        "n_kv_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
        "tied_embeddings",
    )
    total, active = estimate_params(
        **{k: fields[k] for k in shape_keys}, qkv_bias=fields.get("qkv_bias", False), moe=fields.get("moe")
    )
    if params_total is not None and params_active is None:
        # a counted total (GGUF tensors) with an estimated split of the routed experts
        params_active = params_total if fields.get("moe") is None else params_total - (total - active)
    return ModelSpec(**fields, params_total=params_total or total, params_active=params_active or active)
