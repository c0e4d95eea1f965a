"""How closely a compiled package must match the eager blocks before it is used (engine/model/aot.py verify)."""

from __future__ import annotations

from engine.model.aot import VERIFY_RTOL, VERIFY_RTOL_BF16, verify_rtol
from engine.model.loader import load_model


def test_fp32_is_held_to_the_tight_bound_and_bf16_activations_to_rounding(int4) -> None:  # noqa: ANN001
    """fp32 end to end agrees to ~1e-6, so a package off by 2% is broken; every other format rounds its matmuls'
    activations to bf16, which alone put a correct bf16 paged package 5% off eager (and nearer fp32 than eager)."""
    assert verify_rtol(load_model(None, "fp32", "cpu", True).model) == VERIFY_RTOL
    assert verify_rtol(load_model(None, "bf16", "cpu", True).model) == VERIFY_RTOL_BF16
    assert verify_rtol(int4.loaded.model) == VERIFY_RTOL_BF16  # int4 layers and the Q8_0 head
    assert VERIFY_RTOL < VERIFY_RTOL_BF16 < 0.5  # a wrong kernel or stale package is off by the values' own size
