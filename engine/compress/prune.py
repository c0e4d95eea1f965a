"""Magnitude pruning: set the smallest weights to zero, unstructured at a per-layer sparsity or 2:4 semi-structured.

Unstructured: each layer loses exactly round(sparsity * N * K) weights, its smallest by magnitude
(ties at the threshold broken by position, so the count is exact however many weights share a value). 2:4: in every
run of four consecutive weights along the input dimension, the two smallest are zeroed, the pattern
sparse tensor cores accelerate. Both keep the weight dense: the zeros are stored, and on a CPU
without sparse kernels a pruned layer costs what the dense one does (the quality cost is the point).
"""

from __future__ import annotations

import torch

SEMI_STRUCTURED = (2, 4)  # keep 2 of every 4


def magnitude_prune(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A copy of `w` with exactly round(sparsity * numel) of its smallest-magnitude weights set to zero."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be at least 0 and below 1, got {sparsity}")
    pruned = w.detach().clone()
    count = round(sparsity * pruned.numel())
    if count == 0:
        return pruned
    flat = pruned.view(-1)
    magnitude = flat.abs()
    threshold = magnitude.kthvalue(count).values  # the count-th smallest magnitude (a selection, not a sort)
    below = magnitude < threshold
    ties = (magnitude == threshold).nonzero().squeeze(1)[: count - int(below.sum())]  # the first ones, by position
    flat[below] = 0
    flat[ties] = 0
    return pruned


def prune_2_4(w: torch.Tensor) -> torch.Tensor:
    """A copy of `w` (N, K) with the two smallest-magnitude weights of every four along K set to zero."""
    keep, run = SEMI_STRUCTURED
    n, k = w.shape
    if k % run:
        raise ValueError(f"2:4 pruning needs the input size to be a multiple of {run}, got {k}")
    runs = w.detach().reshape(n, k // run, run)
    order = torch.argsort(runs.abs(), dim=-1, stable=True)
    mask = torch.ones_like(runs, dtype=torch.bool).scatter_(-1, order[..., : run - keep], False)
    return (runs * mask).reshape(n, k)


def sparsity_of(w: torch.Tensor) -> float:
    """The fraction of weights that are exactly zero."""
    return float((w == 0).sum()) / w.numel()


def follows_2_4(w: torch.Tensor) -> bool:
    """Whether every run of four along K holds at most two non-zero weights."""
    keep, run = SEMI_STRUCTURED
    n, k = w.shape
    return k % run == 0 and bool(((w.reshape(n, k // run, run) != 0).sum(-1) <= keep).all())
