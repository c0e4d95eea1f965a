"""GPTQ int4: quantize a weight column by column, pushing each column's rounding error onto the columns not yet
quantized so that the layer's output on real inputs moves as little as possible (Frantar et al., 2022).

For a weight W (N, K) and H = X^T X over calibration inputs X (engine/compress/calibration.py), the
output error ||X (Q - W)^T|| is what GPTQ minimizes. With the inverse Hessian's upper Cholesky factor
U (H^-1 = U^T U), quantizing column j and spreading its error e_j = (w_j - q_j) / U_jj over the later
columns by -e_j U_j,j+1: is the optimal update for the columns left. Columns are processed in blocks,
and the later blocks receive each block's errors in one matmul ("lazy batch" updates).

The output is the engine's own int4 form (engine/quant/functions.py): codes 0..15 with a scale and zero
per group of `group_size` along K, w ~= (q - 8) * scale + zero, so it runs on the existing packed int4
kernels (`Int4Linear.from_codes`). Scales and zeros are rounded to bf16 (the format's buffer dtype)
*before* codes are chosen, so the compensation accounts for the grid the kernel really uses.

Groups: without act-order each group's grid (min/max, as round-to-nearest makes it) is fitted when
GPTQ reaches the group's first column, over the group's columns as they stand after the earlier
updates. Act-order quantizes columns by decreasing Hessian diagonal (the inputs with the most energy
first); its groups then mix columns from all over K, which the contiguous int4 layout cannot hold, so
with act-order the grids are fitted up front on the original groups ("static groups") and each column
is quantized on its own group's grid, whatever order it comes in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.quant.functions import check_group_size, dequantize_int4, int4_codes, quantize_int4

DAMP_FRACTION = 0.01  # of the mean Hessian diagonal, added to the diagonal (the paper's default)
BLOCK_SIZE = 128  # columns per lazy-batch block
PARAM_DTYPE = torch.bfloat16  # the int4 format stores its scales and zeros in bf16


@dataclass(frozen=True, slots=True)
class Int4Codes:
    """int4 in the engine's form: q uint8 (N, K) in 0..15, scale and zero float32 (N, ceil(K / group_size)).

    `dequantized()` is the weight `Int4Linear.from_codes` multiplies by, bit for bit, without asking the
    packed kernel to read its layout back.
    """

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    group_size: int

    def dequantized(self) -> torch.Tensor:
        return dequantize_int4(self.q, self.scale, self.zero, self.group_size)


def rtn_codes(w: torch.Tensor, group_size: int) -> Int4Codes:
    """Round-to-nearest int4 as the served format stores it (`make_linear(w, "int4")`): codes on the min/max grid,
    scales and zeros then rounded to bf16. The baseline GPTQ is measured against."""
    q, scale, zero = quantize_int4(w.detach().float(), group_size)
    return Int4Codes(q, scale.to(PARAM_DTYPE).float(), zero.to(PARAM_DTYPE).float(), group_size)


def _grid(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest's min/max grid for the groups of `w`, rounded to the stored dtype: scale, zero (N, G)."""
    _, scale, zero = quantize_int4(w, group_size)
    return scale.to(PARAM_DTYPE).float(), zero.to(PARAM_DTYPE).float()


def _inverse_hessian_factor(hessian: torch.Tensor, damp_fraction: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp I)^-1 in float32; the dampening keeps a rank-deficient H invertible."""
    h = hessian.double().clone()
    h.diagonal().add_(damp_fraction * float(h.diagonal().mean()))
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True).float()


def gptq_quantize(
    w: torch.Tensor,
    hessian: torch.Tensor,
    group_size: int,
    *,
    act_order: bool = False,
    damp_fraction: float = DAMP_FRACTION,
    block_size: int = BLOCK_SIZE,
) -> Int4Codes:
    """GPTQ int4 codes for `w` (N, K) given the Hessian `hessian` (K, K) of its calibration inputs."""
    check_group_size(group_size)
    n, k = w.shape
    if hessian.shape != (k, k):
        raise ValueError(f"the Hessian is {tuple(hessian.shape)}, the weight {n}x{k}: expected ({k}, {k})")
    if not 0 < damp_fraction < 1:
        raise ValueError(f"dampening must be between 0 and 1 (a fraction of the mean diagonal), got {damp_fraction}")
    w = w.detach().float().clone()
    h = hessian.detach().to(w.device, torch.float64).clone()
    dead = h.diagonal() == 0  # inputs the calibration never exercised: no information, quantize them as zero
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    groups = -(-k // group_size)
    scale = w.new_zeros(n, groups)
    zero = w.new_zeros(n, groups)
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(k, device=w.device)
    if act_order:
        scale, zero = _grid(w, group_size)  # static groups, fitted on the original columns
        w, h = w[:, perm], h[perm][:, perm]
    u = _inverse_hessian_factor(h, damp_fraction)
    q = torch.zeros(n, k, dtype=torch.uint8, device=w.device)
    block = max(block_size, group_size)  # both powers of two: a group never straddles two blocks
    if block % group_size:
        raise ValueError(f"block size {block_size} must be a multiple of the group size {group_size}")
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        wb, errors, ub = w[:, b0:b1].clone(), w.new_zeros(n, b1 - b0), u[b0:b1, b0:b1]
        for j in range(b1 - b0):
            col = b0 + j
            g = int(perm[col]) // group_size
            if not act_order and col % group_size == 0:
                s, z = _grid(wb[:, j : j + group_size], group_size)
                scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
            codes = int4_codes(wb[:, j], scale[:, g], zero[:, g])
            err = (wb[:, j] - ((codes.float() - 8) * scale[:, g] + zero[:, g])) / ub[j, j]
            wb[:, j:] -= err[:, None] * ub[j, j:][None, :]
            errors[:, j] = err
            q[:, col] = codes
        w[:, b1:] -= errors @ u[b0:b1, b1:]
    if act_order:
        q = q[:, torch.argsort(perm)]
    return Int4Codes(q, scale, zero, group_size)
