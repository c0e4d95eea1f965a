"""The calibration text and the layer statistics taken from the real model while it reads it.

GPTQ needs, for every linear layer, H = sum over tokens of x x^T: the Gram matrix of the inputs that
layer really sees. Those inputs are captured with forward pre-hooks on the linear modules while the
model runs over engine/data/calibration.txt, a text kept apart from the evaluation text
(engine/data/eval.txt) so that no quality figure is scored on the data a method was fitted to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from importlib import resources

import torch
from torch import nn

CALIBRATION_FILE = "engine/data/calibration.txt"
CALIBRATION_WINDOW = 512  # tokens per forward pass: the sequence lengths the model serves most


@cache
def calibration_text() -> str:
    """The calibration text the project ships; never the evaluation text."""
    return resources.files("engine").joinpath("data", "calibration.txt").read_text(encoding="utf-8")


def calibration_sha256() -> str:
    return hashlib.sha256(calibration_text().encode("utf-8")).hexdigest()


def calibration_ids(tokenizer: object, max_tokens: int | None = None) -> list[int]:
    """The calibration text's token ids, the first `max_tokens` of them when given."""
    ids: list[int] = tokenizer.encode(calibration_text())  # type: ignore[attr-defined]
    if max_tokens is not None and max_tokens > len(ids):
        raise ValueError(f"calibration needs {max_tokens} tokens but {CALIBRATION_FILE} holds {len(ids)}")
    return ids if max_tokens is None else ids[:max_tokens]


def calibration_windows(ids: list[int], window: int = CALIBRATION_WINDOW) -> list[list[int]]:
    """Consecutive windows of at most `window` tokens; a last window of one token carries no context and is dropped."""
    windows = [ids[s : s + window] for s in range(0, len(ids), window)]
    return [w for w in windows if len(w) >= 2]


class Hessians:
    """Running sums of x^T x (float64) and token counts per named linear layer, filled by forward pre-hooks."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}

    def add(self, name: str, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        gram = (rows.T @ rows).double()
        if name in self.sums:
            self.sums[name] += gram
        else:
            self.sums[name] = gram
        self.tokens[name] = self.tokens.get(name, 0) + rows.shape[0]

    def mean(self, name: str) -> torch.Tensor:
        """H / tokens: the same matrix at any calibration length (GPTQ is invariant to its scale)."""
        return self.sums[name] / max(self.tokens[name], 1)


@contextmanager
def capturing(layers: Mapping[str, nn.Module], hessians: Hessians) -> Iterator[Hessians]:
    """While the block runs, every named layer adds its input to `hessians`."""

    def hook(name: str):  # noqa: ANN202 - a forward pre-hook's signature is torch's
        def keep(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            hessians.add(name, args[0])

        return keep

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    try:
        yield hessians
    finally:
        for h in handles:
            h.remove()


def hessian_output_error(w: torch.Tensor, wq: torch.Tensor, hessian: torch.Tensor) -> float:
    """||X wq^T - X w^T|| / ||X w^T|| from H = X^T X alone (no activations kept): sqrt(tr(D H D^T) / tr(W H W^T)).

    The same figure as `engine.quant.roundtrip.output_error` on the activations H was summed from.
    """
    h = hessian.double()
    w64, d = w.double(), wq.double() - w.double()
    num = float(((d @ h) * d).sum())
    den = float(((w64 @ h) * w64).sum())
    return (max(num, 0.0) / den) ** 0.5 if den > 0 else max(num, 0.0) ** 0.5
