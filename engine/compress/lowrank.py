"""SVD low-rank factorization: W (N, K) ~= up (N, r) @ down (r, K), at a chosen rank or an energy threshold.

The truncated SVD W ~= U_r S_r V_r^T is the best rank-r approximation in Frobenius norm
(Eckart-Young). The singular values are split evenly, up = U_r sqrt(S_r) and down = sqrt(S_r) V_r^T,
so both factors have the same scale (a bf16 factor then loses the same precision on either side).
"Energy" is the share of the squared singular values kept: sum_{i<r} s_i^2 / sum s_i^2, which is
1 - (relative Frobenius error)^2 of the truncation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


def svd_factors(w: torch.Tensor, rank: int | None = None, energy: float | None = None) -> Factors:
    """The truncated SVD of `w` (computed in float32) as two float32 factors, at `rank` or at the smallest rank
    that keeps `energy` (exactly one of them)."""
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of a rank or an energy threshold")
    wide = w.shape[0] <= w.shape[1]  # LAPACK is several times faster on the wide orientation: factor W^T if tall
    u, s, vh = torch.linalg.svd(w.detach().float() if wide else w.detach().float().T, full_matrices=False)
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
    return Factors((u[:, :rank] * root).contiguous(), (root[:, None] * vh[:rank]).contiguous(), kept)
