"""The token embedding table, which is also the output head when the model ties them.

One low-precision copy serves both jobs, so the memory figure stays true: the
table is a quant Linear (vocab x hidden) used as the head for `project`, and
`lookup` reads rows of the same module back (`QuantLinear.rows`). A row of the
table is an output channel of the head, so both directions are exact views of
one stored weight.

Formats: fp32 / bf16 keep a dense table; fp8 keeps float8_e4m3fn rows (fp8-e5m2: float8_e5m2); int8 and
int4 keep Q8_0 blocks (int8 codes, one fp16 scale per 32 values). The bundled
GGUF stores this tensor as Q8_0, and those blocks are kept as they are, so the
lookup and the head compute with exactly the file's values; a table stored in
another type is quantized to Q8_0 the way llama.cpp does. Re-quantizing it to
one scale per row (what int8 and int4 did before) added error to the largest
matmul, where greedy ties are decided. A hidden size that is not a multiple of
32 cannot be Q8_0 and falls back to per-row int8.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.quant.functions import Q8_0_BLOCK, Q80Blocks, quantize_q8_0
from engine.quant.linear import Q80Linear, QuantLinear, empty_linear, make_linear

TABLE_FORMAT = {"fp32": "fp32", "bf16": "bf16", "int8": "q8_0", "int4": "q8_0", "fp8": "fp8", "fp8-e5m2": "fp8-e5m2"}


class Embedding(nn.Module):
    """Token table with `lookup(ids)` and `project(hidden) -> logits`."""

    def __init__(self, head: QuantLinear, act_dtype: torch.dtype) -> None:
        super().__init__()
        self.head = head
        self.act_dtype = act_dtype

    @classmethod
    def empty(cls, vocab_size: int, dim: int, fmt: str, act_dtype: torch.dtype, device: str = "meta") -> Embedding:
        return cls(empty_linear(table_storage(fmt, dim), dim, vocab_size, device=device), act_dtype)

    @classmethod
    def from_source(cls, source: torch.Tensor | Q80Blocks, fmt: str, act_dtype: torch.dtype) -> Embedding:
        """The table in the format's storage, from the file's Q8_0 blocks or a float (vocab, dim) tensor."""
        dim = source.q.shape[1] if isinstance(source, Q80Blocks) else source.shape[1]
        storage = table_storage(fmt, dim)
        device = str((source.q if isinstance(source, Q80Blocks) else source).device)
        if storage == Q80Linear.fmt:
            blocks = source if isinstance(source, Q80Blocks) else quantize_q8_0(source)
            return cls(Q80Linear.from_blocks(blocks, device=device), act_dtype)
        return cls(make_linear(source, storage, device=device), act_dtype)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head.rows(ids).to(self.act_dtype)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h.to(self.act_dtype))


def table_storage(fmt: str, dim: int) -> str:
    """The storage of the table for a weight format: a format name, or "q8_0"."""
    if fmt not in TABLE_FORMAT:
        raise ValueError(f"unknown weight format {fmt!r}")
    storage = TABLE_FORMAT[fmt]
    return "int8" if storage == Q80Linear.fmt and dim % Q8_0_BLOCK else storage
