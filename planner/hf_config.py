"""The schema of the Hugging Face `config.json` fields the planner reads, and the spec fields they give.

HF configs carry dozens of fields we never use, so unknown fields are ignored here (unlike our own
boundaries). Every field we do use is typed: sizes are strict positive integers (`model_spec.Size`), so
0, -1, 4.5, "32", true, 1e400 (inf) and NaN are each refused with the field's name instead of dividing
by zero or overflowing later.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationInfo, model_validator

from planner.model_spec import Count, MoeSpec, Size

QKV_BIAS_TYPES = ("qwen2", "qwen2_moe")

# Keys with older spellings (GPT-2 style); the first is the one a missing-key error names first.
ALIASES = {
    "num_hidden_layers": ("num_hidden_layers", "n_layer"),
    "hidden_size": ("hidden_size", "n_embd"),
    "num_attention_heads": ("num_attention_heads", "n_head"),
}
MISSING_WORDS = {choice: " or ".join(names) for names in ALIASES.values() for choice in names}


def _either(key: str) -> Any:
    return Field(validation_alias=AliasChoices(*ALIASES[key]))


class HfWrapper(BaseModel):
    """Multimodal configs keep the decoder under `text_config`; null or absent means the top level is it."""

    model_config = ConfigDict(extra="ignore")

    text_config: dict[str, Any] | None = None


class HfConfig(BaseModel):
    """The decoder fields sizing needs (Llama, Mistral, Qwen2, Mixtral, DeepSeek-V3 style)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=False)

    num_hidden_layers: Size = _either("num_hidden_layers")
    hidden_size: Size = _either("hidden_size")
    num_attention_heads: Size = _either("num_attention_heads")
    num_key_value_heads: Size | None = None
    head_dim: Size | None = None
    intermediate_size: Size
    vocab_size: Size
    max_position_embeddings: Size
    model_type: StrictStr | None = None
    name_or_path: StrictStr | None = Field(None, validation_alias="_name_or_path")
    tie_word_embeddings: StrictBool | None = None
    attention_bias: StrictBool | None = None
    sliding_window: Count | None = None  # 0 or null: no window
    use_sliding_window: StrictBool | None = None
    layer_types: list[StrictStr] | None = None
    num_local_experts: Count | None = None
    n_routed_experts: Count | None = None
    num_experts: Count | None = None
    num_experts_per_tok: Size | None = None
    moe_intermediate_size: Size | None = None
    first_k_dense_replace: Count = 0
    n_shared_experts: Count | None = None
    kv_lora_rank: Count | None = None  # 0 or null: no MLA
    qk_rope_head_dim: Size | None = None

    @property
    def n_experts(self) -> int:
        return self.num_local_experts or self.n_routed_experts or self.num_experts or 0

    @model_validator(mode="after")
    def _pairs_present(self, info: ValidationInfo) -> HfConfig:
        at = (info.context or {}).get("prefix", "")  # "text_config." when the decoder is nested
        if self.n_experts and self.num_experts_per_tok is None:
            raise ValueError(f"{at}num_experts_per_tok is needed with {self.n_experts} experts")
        if self.kv_lora_rank and self.qk_rope_head_dim is None:
            raise ValueError(f"{at}qk_rope_head_dim is needed with {at}kv_lora_rank")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{at}hidden_size {self.hidden_size} is not a multiple of {at}num_attention_heads "
                f"{self.num_attention_heads}, and {at}head_dim is not given"
            )
        return self

    def spec_fields(self) -> dict[str, Any]:
        """The ModelSpec fields (shape only; id, name and source are the caller's)."""
        n_layers, n_heads = self.num_hidden_layers, self.num_attention_heads
        fields: dict[str, Any] = {
            "architecture": self.model_type or "unknown",
            "n_layers": n_layers,
            "hidden_size": self.hidden_size,
            "n_heads": n_heads,
            "n_kv_heads": self.num_key_value_heads or n_heads,
            "head_dim": self.head_dim or self.hidden_size // n_heads,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "max_context": self.max_position_embeddings,
            "tied_embeddings": bool(self.tie_word_embeddings),
            "qkv_bias": self.model_type in QKV_BIAS_TYPES if self.attention_bias is None else self.attention_bias,
            "moe": self._moe(),
        }
        fields["sliding_window"], fields["sliding_window_layers"] = self._sliding()
        if self.kv_lora_rank:
            fields["kv_lora_rank"], fields["qk_rope_head_dim"] = self.kv_lora_rank, self.qk_rope_head_dim
        return fields

    def _moe(self) -> MoeSpec | None:
        if not self.n_experts:
            return None
        return MoeSpec(
            n_experts=self.n_experts,
            experts_per_token=self.num_experts_per_tok or 0,
            expert_intermediate_size=self.moe_intermediate_size or self.intermediate_size,
            moe_layers=self.num_hidden_layers - self.first_k_dense_replace,
            shared_experts=self.n_shared_experts or 0,
        )

    def _sliding(self) -> tuple[int | None, int | None]:
        if not self.sliding_window or self.use_sliding_window is False:
            return None, None
        if self.layer_types:
            return self.sliding_window, sum(1 for t in self.layer_types if t == "sliding_attention")
        return self.sliding_window, None
