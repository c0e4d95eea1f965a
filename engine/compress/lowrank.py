"""SVD low-rank factorization: W (N, K) ~= up (N, r) @ down (r, K), at a chosen rank or an energy threshold.

The truncated SVD W ~= U_r S_r V_r^T is the best rank-r approximation in Frobenius norm
(Eckart-Young). The singular values are split evenly, up = U_r sqrt(S_r) and down = sqrt(S_r) V_r^T,
so both factors have the same scale (a bf16 factor then loses the same precision on either side).
"Energy" is the share of the squared singular values kept: sum_{i<r} s_i^2 / sum s_i^2, which is
1 - (relative Frobenius error)^2 of the truncation.

Activation-aware (`scales`): the error that matters is the layer's output on real inputs, ||X W^T - X W_r^T||,
not ||W - W_r||, and the inputs have a few channels far larger than the rest. With s_k the root mean square
of input channel k over calibration tokens (the square root of the diagonal of X^T X / tokens, which the
GPTQ calibration already gathers), the truncated SVD of W diag(s) is taken and diag(1/s) folded back into
the right factor: W_r = up @ (down diag(1/s)). If the channels were uncorrelated (X^T X diagonal) this is
exactly the best rank-r fit of the output error; with correlated channels it is the diagonal approximation
of that, a weighting that costs one division per column and leaves the stored form unchanged. The energy kept
is then that of W diag(s): the share of the scaled weight's squared singular values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SCALE_FLOOR = 1e-3
"""The smallest channel scale, as a fraction of the mean scale. A channel the calibration text never (or hardly)
exercised has s_k ~ 0: the SVD of W diag(s) then all but ignores its column, and folding 1/s_k back would divide by
zero, or blow up whatever the truncation left in that column. The column's weight error is the scaled problem's
error divided by s_k, so at the floor it stays finite: at most 1 / SCALE_FLOOR times what the same scaled error
costs a typical channel, on a channel whose inputs were that much smaller on the calibration text."""


@dataclass(frozen=True, slots=True)
class Factors:
    """up (N, r), down (r, K) in float32, and the share of the weight's energy they keep."""

    up: torch.Tensor
    down: torch.Tensor
    energy_kept: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]


def rank_for_fraction(w: torch.Tensor, fraction: float) -> int:
    """round(fraction * full rank), at least 1; the full rank of an (N, K) weight is min(N, K)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"rank fraction must be above 0 and at most 1, got {fraction}")
    return max(1, round(fraction * min(w.shape)))


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values `s` (descending) keep at least `energy` of the squared sum."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be above 0 and at most 1, got {energy}")
    share = torch.cumsum(s.double() ** 2, 0) / float((s.double() ** 2).sum())
    return min(int((share < energy - 1e-12).sum()) + 1, s.numel())


def activation_scales(mean_square: torch.Tensor) -> torch.Tensor:
    """Per-input-channel scales s_k = sqrt(mean of x_k^2) in float32, from the mean squares (the diagonal of
    X^T X / tokens), floored at SCALE_FLOOR of their mean so that 1 / s stays finite."""
    if mean_square.ndim != 1 or not bool(torch.isfinite(mean_square).all()) or bool((mean_square < 0).any()):
        raise ValueError("channel mean squares must be one finite, non-negative value per input channel")
    s = mean_square.double().sqrt()
    mean = float(s.mean())
    if mean <= 0:
        raise ValueError("every input channel is zero on the calibration data: no activation scale to weight by")
    return s.clamp(min=SCALE_FLOOR * mean).float()


def svd_factors(
    w: torch.Tensor, rank: int | None = None, energy: float | None = None, scales: torch.Tensor | None = None
) -> Factors:
    """The truncated SVD of `w` (computed in float32) as two float32 factors, at `rank` or at the smallest rank
    that keeps `energy` (exactly one of them). With `scales` (one per input channel, `activation_scales`), the
    SVD of w diag(scales) is truncated and diag(1 / scales) folded into `down`: the activation-aware variant."""
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of a rank or an energy threshold")
    w = w.detach().float()
    if scales is not None:
        if scales.shape != (w.shape[1],) or not bool((scales > 0).all()):
            raise ValueError(f"expected {w.shape[1]} positive channel scales, got shape {tuple(scales.shape)}")
        scales = scales.to(w.device, torch.float32)
        w = w * scales
    wide = w.shape[0] <= w.shape[1]  # LAPACK is several times faster on the wide orientation: factor W^T if tall
    u, s, vh = torch.linalg.svd(w if wide else w.T, full_matrices=False)
    if not wide:
        u, vh = vh.T, u.T
    rank = rank if energy is None else rank_for_energy(s, energy)
    if rank is None or not 1 <= rank <= min(w.shape):
        raise ValueError(
            f"rank must be between 1 and {min(w.shape)} for a {w.shape[0]}x{w.shape[1]} weight, got {rank}"
        )
    root = s[:rank].sqrt()
    total = float((s.double() ** 2).sum())
    kept = float((s[:rank].double() ** 2).sum()) / total if total > 0 else 1.0
    down = root[:, None] * vh[:rank]
    if scales is not None:
        down = down / scales
    return Factors((u[:, :rank] * root).contiguous(), down.contiguous(), kept)
