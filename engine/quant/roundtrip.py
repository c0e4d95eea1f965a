"""Precision schemes as weight round trips: quantize a float weight, read it back, measure what was lost.

The precision study (engine/studies/precision.py) compares schemes layer by layer, so each scheme
here is one function from a float32 (N, K) weight to the float32 weight the scheme stands for,
built from the engine's own quantizers in `engine.quant.functions` (no second implementation):

- fp8-e4m3: float8_e4m3fn, per-row scale max|w| / 448 (what the served `fp8` format stores).
- fp8-e5m2: float8_e5m2, per-row scale max|w| / 57344 (same layout, two mantissa bits instead of three).
- int8: per-output-channel symmetric int8 (what the served `int8` format does to a float weight).
- int4-g32 / int4-g128: asymmetric min/max int4 in groups of 32 or 128 along K.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.quant.functions import (
    dequantize_fp8,
    dequantize_int4,
    dequantize_int8,
    quantize_fp8,
    quantize_int4,
    quantize_int8,
)

RoundTrip = Callable[[torch.Tensor], torch.Tensor]


def _fp8(dtype: torch.dtype) -> RoundTrip:
    return lambda w: dequantize_fp8(*quantize_fp8(w, dtype=dtype))


def _int4(group_size: int) -> RoundTrip:
    return lambda w: dequantize_int4(*quantize_int4(w, group_size), group_size)


SCHEMES: dict[str, RoundTrip] = {
    "fp8-e4m3": _fp8(torch.float8_e4m3fn),
    "fp8-e5m2": _fp8(torch.float8_e5m2),
    "int8": lambda w: dequantize_int8(*quantize_int8(w)),
    "int4-g32": _int4(32),
    "int4-g128": _int4(128),
}
PRECISION_SCHEMES: tuple[str, ...] = tuple(SCHEMES)


def roundtrip(w: torch.Tensor, scheme: str) -> torch.Tensor:
    """`w` quantized in `scheme` and dequantized back to float32 (N, K)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown precision scheme {scheme!r}: choose one of {', '.join(PRECISION_SCHEMES)}")
    return SCHEMES[scheme](w)


def weight_errors(w: torch.Tensor, wq: torch.Tensor) -> dict[str, float]:
    """Relative Frobenius error ||wq - w|| / ||w|| and the largest absolute element error."""
    diff = wq.double() - w.double()
    norm = float(w.double().norm())
    return {
        "weight_rel_fro": float(diff.norm()) / norm if norm > 0 else float(diff.norm()),
        "weight_max_abs": float(diff.abs().max()),
    }


def output_error(w: torch.Tensor, wq: torch.Tensor, x: torch.Tensor) -> float:
    """||x wq^T - x w^T|| / ||x w^T|| over every captured activation row of `x` (M, K), in float64."""
    x = x.double()
    ref = x @ w.double().T
    norm = float(ref.norm())
    err = float((x @ (wq.double() - w.double()).T).norm())
    return err / norm if norm > 0 else err
