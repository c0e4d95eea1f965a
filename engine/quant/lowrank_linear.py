"""A linear layer stored as two thin factors, W ~= up @ down: what SVD low-rank compression serves.

At rank r an (N, K) weight costs r * (N + K) values instead of N * K, and a matmul costs the
same ratio of multiply-adds, so it saves memory and time only below r = N * K / (N + K) (half
the width of a square matrix). The factors stay dense in fp32 or bf16: the point of the format is
the rank, and a second rounding on top would blur what the rank alone costs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from engine.quant.linear import QuantLinear

FACTOR_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class LowRankLinear(QuantLinear):
    """y = (x @ down.T) @ up.T with buffers `down` (r, K) and `up` (N, r) in fp32 or bf16."""

    fmt = "lowrank"

    def __init__(self, up: torch.Tensor, down: torch.Tensor) -> None:
        super().__init__()
        if up.ndim != 2 or down.ndim != 2 or up.shape[1] != down.shape[0] or up.dtype != down.dtype:
            raise ValueError(
                f"low-rank factors {tuple(up.shape)} {up.dtype} / {tuple(down.shape)} {down.dtype} do not chain: "
                "expected up (N, r) and down (r, K) of one dtype"
            )
        if up.dtype not in FACTOR_DTYPES.values():
            raise ValueError(f"low-rank factors must be float32 or bfloat16, got {up.dtype}")
        self.out_features, self.rank = up.shape
        self.in_features = down.shape[1]
        self.register_buffer("up", up)
        self.register_buffer("down", down)
        self.kernel = f"lowrank: two dense {self.dtype_name} matmuls through rank {self.rank}"

    @property
    def dtype_name(self) -> str:
        return next(name for name, dtype in FACTOR_DTYPES.items() if dtype == self.up.dtype)

    @classmethod
    def empty(cls, in_features: int, out_features: int, *, device: Any = "meta", **fmt_options: Any) -> LowRankLinear:
        rank = fmt_options.pop("rank")
        dtype = FACTOR_DTYPES[fmt_options.pop("dtype", "fp32")]
        if fmt_options:
            raise ValueError(f"unknown lowrank option(s): {', '.join(sorted(fmt_options))}")
        return cls(
            torch.empty(out_features, rank, dtype=dtype, device=device),
            torch.empty(rank, in_features, dtype=dtype, device=device),
        )

    @classmethod
    def from_factors(cls, up: torch.Tensor, down: torch.Tensor, dtype: str = "fp32") -> LowRankLinear:
        """Adopt float factors, cast to `dtype` ("fp32" or "bf16")."""
        if dtype not in FACTOR_DTYPES:
            raise ValueError(f"low-rank factor dtype {dtype!r}: choose one of {', '.join(FACTOR_DTYPES)}")
        target = FACTOR_DTYPES[dtype]
        return cls(up.to(target).contiguous(), down.to(target).contiguous())

    def dequantized(self) -> torch.Tensor:
        return self.up.float() @ self.down.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(F.linear(x.to(self.up.dtype), self.down), self.up)
        return y if y.dtype == x.dtype else y.to(x.dtype)
