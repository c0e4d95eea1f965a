"""Model hyper-parameters read from a GGUF file's metadata.

One frozen dataclass is passed down every constructor (gpt-fast's ModelArgs
habit), so the model code never looks at the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Shape of a Llama-architecture transformer."""

    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    ffn_size: int
    vocab_size: int
    context_length: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    tied_embeddings: bool = True
    name: str = "llama"
    head_dim: int = field(init=False)

    def __post_init__(self) -> None:
        if self.hidden_size % self.n_heads:
            raise ValueError(f"hidden size {self.hidden_size} is not divisible by {self.n_heads} heads")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"{self.n_heads} query heads are not a multiple of {self.n_kv_heads} KV heads")
        object.__setattr__(self, "head_dim", self.hidden_size // self.n_heads)

    @property
    def n_params(self) -> int:
        """Parameter count, embedding counted once when tied."""
        h, f, kv = self.hidden_size, self.ffn_size, self.n_kv_heads * self.head_dim
        per_layer = h * h * 2 + h * kv * 2 + 3 * h * f + 2 * h
        head = 0 if self.tied_embeddings else self.vocab_size * h
        return self.n_layers * per_layer + self.vocab_size * h + head + h

    def kv_bytes_per_token(self, bytes_per_element: int) -> int:
        """K and V for one token across all layers: 2 x layers x KV heads x head dim x bytes."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * bytes_per_element
