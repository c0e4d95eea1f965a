"""The token embedding table, which is also the output head when the model ties them.

One low-precision copy serves both jobs, so the memory figure stays true: the
table is a quant Linear (vocab x hidden) used as the head for `project`, and
`lookup` gathers its rows and applies the same per-row scale. A row of the
table is an output channel of the head, so per-channel scales make both
directions exact views of one quantization.

Formats: fp32 / bf16 keep a dense table; int8 and int4 keep int8 rows (the
GGUF itself stores this tensor as Q8_0, and 4-bit rows would cost quality on
the largest matmul for little memory); fp8 keeps float8_e4m3fn rows.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.quant.linear import empty_linear, make_linear

TABLE_FORMAT = {"fp32": "fp32", "bf16": "bf16", "int8": "int8", "int4": "int8", "fp8": "fp8"}


class Embedding(nn.Module):
    """Token table with `lookup(ids)` and `project(hidden) -> logits`."""

    def __init__(self, head: nn.Module, act_dtype: torch.dtype) -> None:
        super().__init__()
        self.head = head
        self.act_dtype = act_dtype

    @classmethod
    def empty(cls, vocab_size: int, dim: int, fmt: str, act_dtype: torch.dtype, device: str = "meta") -> Embedding:
        return cls(empty_linear(_table_format(fmt), dim, vocab_size, device=device), act_dtype)

    @classmethod
    def from_float(cls, weight: torch.Tensor, fmt: str, act_dtype: torch.dtype) -> Embedding:
        """Quantize an fp32 (vocab, dim) table into the format's storage."""
        return cls(make_linear(weight, _table_format(fmt), device=str(weight.device)), act_dtype)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.head.weight[ids].to(self.act_dtype)
        scale = getattr(self.head, "scale", None)
        if scale is not None:
            rows = rows * scale[ids].unsqueeze(-1).to(self.act_dtype)
        return rows

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h.to(self.act_dtype))


def _table_format(fmt: str) -> str:
    if fmt not in TABLE_FORMAT:
        raise ValueError(f"unknown weight format {fmt!r}")
    return TABLE_FORMAT[fmt]
