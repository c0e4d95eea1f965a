"""The schema of the GGUF metadata the planner reads, and the spec fields it gives.

Keys are read without the `{architecture}.` prefix and validated like a config.json: sizes are strict
positive integers (`model_spec.Size`). Some GGUFs (OpenELM, hybrid models) store
`attention.head_count`, `attention.head_count_kv` or `feed_forward_length` as an array with one value
per layer, as llama.cpp allows. The planner sizes every layer by the largest value, so memory and
attention figures are upper bounds, and the plan says so in a note. Any other key given as an array
is refused, and so is a per-layer array whose length is not the block count.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from planner.model_spec import Count, MoeSpec, Size

# Longer than any model's block count; a bigger array is refused before it is decoded.
MAX_PER_LAYER = 1 << 16
_ONE = TypeAdapter(Size)
_LAYERS = TypeAdapter(Annotated[list[Count], Field(min_length=1, max_length=MAX_PER_LAYER)])


def _one_or_per_layer(value: Any) -> int | list[int]:
    """A size, or one count per layer (0 allowed: a layer without attention). One message either way,
    where a plain union would report both alternatives."""
    try:
        return _LAYERS.validate_python(value) if isinstance(value, list) else _ONE.validate_python(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        at = f"per-layer value {err['loc'][0]}: " if err["loc"] else ""
        raise ValueError(f"{at}{err['msg']}") from None


PerLayer = Annotated[int | list[int], PlainValidator(_one_or_per_layer)]
# Each key llama.cpp lets vary by layer, and what taking its largest value overstates.
PER_LAYER_KEYS = {
    "attention.head_count": "attention FLOPs",
    "attention.head_count_kv": "KV-cache memory",
    "feed_forward_length": "MLP FLOPs",
}


def _key(suffix: str, default: Any = ...) -> Any:
    return Field(default, alias=suffix)


class GgufShape(BaseModel):
    """`{arch}.*` metadata keys that sizing needs, by their suffix."""

    model_config = ConfigDict(extra="forbid")

    block_count: Size = _key("block_count")
    embedding_length: Size = _key("embedding_length")
    head_count: PerLayer = _key("attention.head_count")
    head_count_kv: PerLayer | None = _key("attention.head_count_kv", None)
    key_length: Size | None = _key("attention.key_length", None)
    feed_forward_length: PerLayer = _key("feed_forward_length")
    context_length: Size = _key("context_length")
    vocab_size: Size | None = _key("vocab_size", None)
    sliding_window: Count | None = _key("attention.sliding_window", None)
    expert_count: Count | None = _key("expert_count", None)
    expert_used_count: Size | None = _key("expert_used_count", None)
    expert_feed_forward_length: Size | None = _key("expert_feed_forward_length", None)
    kv_lora_rank: Count | None = _key("attention.kv_lora_rank", None)
    rope_dimension_count: Size | None = _key("rope.dimension_count", None)

    @field_validator("head_count", "head_count_kv", "feed_forward_length")
    @classmethod
    def _one_per_block(cls, value: int | list[int], info: ValidationInfo) -> int | list[int]:
        blocks = info.data.get("block_count")  # absent when block_count itself was refused
        if isinstance(value, list):
            if blocks is not None and len(value) != blocks:
                raise ValueError(f"{len(value)} per-layer values for {blocks} blocks")
            if max(value) == 0:
                raise ValueError("0 on every layer")
        return value

    @model_validator(mode="after")
    def _pairs_present(self, info: ValidationInfo) -> GgufShape:
        arch = (info.context or {}).get("arch", "{arch}")  # names keys as the file spells them
        if self.expert_count and self.expert_used_count is None:
            raise ValueError(f"{arch}.expert_used_count is needed with {self.expert_count} experts")
        if self.kv_lora_rank and self.rope_dimension_count is None:
            raise ValueError(f"{arch}.rope.dimension_count is needed with {arch}.attention.kv_lora_rank")
        if self.key_length is None and self.embedding_length % self.largest("attention.head_count"):
            raise ValueError(
                f"{arch}.embedding_length {self.embedding_length} is not a multiple of {arch}.attention.head_count "
                f"{self.largest('attention.head_count')}, and {arch}.attention.key_length is not given"
            )
        return self

    @staticmethod
    def field_for(suffix: str) -> str:
        return next(name for name, f in GgufShape.model_fields.items() if f.alias == suffix)

    def largest(self, suffix: str) -> int:
        """A per-layer key's value: the number itself, or the largest of its per-layer values."""
        value = getattr(self, GgufShape.field_for(suffix))
        return max(value) if isinstance(value, list) else value

    def per_layer_notes(self, arch: str) -> tuple[str, ...]:
        notes = []
        for suffix, overstated in PER_LAYER_KEYS.items():
            value = getattr(self, GgufShape.field_for(suffix))
            if isinstance(value, list) and min(value) != max(value):
                notes.append(
                    f"{arch}.{suffix} varies by layer ({min(value)} to {max(value)}): every layer is sized by the "
                    f"largest, so {overstated} is an upper bound (weights are counted exactly from the tensors)"
                )
        return tuple(notes)

    def spec_fields(self, arch: str, tensors: set[str], token_count: int) -> dict[str, Any]:
        """The ModelSpec fields (shape only; id, name, source and the parameter count are the caller's)."""
        n_heads = self.largest("attention.head_count")
        ffn = self.largest("feed_forward_length")
        fields: dict[str, Any] = {
            "architecture": arch,
            "n_layers": self.block_count,
            "hidden_size": self.embedding_length,
            "n_heads": n_heads,
            "n_kv_heads": n_heads if self.head_count_kv is None else self.largest("attention.head_count_kv"),
            "head_dim": self.key_length or self.embedding_length // n_heads,
            "intermediate_size": ffn,
            "vocab_size": self.vocab_size or token_count,
            "max_context": self.context_length,
            "tied_embeddings": "output.weight" not in tensors,
            "qkv_bias": "blk.0.attn_q.bias" in tensors,
            "sliding_window": self.sliding_window or None,
            "moe": self._moe(ffn),
            "notes": self.per_layer_notes(arch),
        }
        if self.kv_lora_rank:
            fields["kv_lora_rank"], fields["qk_rope_head_dim"] = self.kv_lora_rank, self.rope_dimension_count
        return fields

    def _moe(self, ffn: int) -> MoeSpec | None:
        if not self.expert_count:
            return None
        experts_ffn = self.expert_feed_forward_length or ffn
        return MoeSpec(self.expert_count, self.expert_used_count or 0, experts_ffn, self.block_count)
