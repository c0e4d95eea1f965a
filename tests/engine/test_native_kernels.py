"""The native kernels (engine/quant/q8_0_kernel.cpp, int4_kernel.cpp): built here with the real compiler,
held against torch's own kernels and the exact float64 product of the weights they stand for."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.quant import native
from engine.quant.functions import dequantize_q8_0, quantize_int4, quantize_q8_0
from engine.quant.linear import Int4Linear, Q80Linear, empty_linear

needs_native = pytest.mark.skipif(
    native.q8_0_library() is None, reason=f"native Q8_0 kernel unavailable: {native.q8_0_unavailable_reason()}"
)
needs_int4 = pytest.mark.skipif(
    native.int4_op() is None, reason=f"native int4 kernel unavailable: {native.int4_unavailable_reason()}"
)


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    """Forget the cached answer before and after, so an environment change is seen and not left behind."""
    native._q8_0.cache_clear()
    yield
    native._q8_0.cache_clear()


def _module(n: int, k: int) -> Q80Linear:
    w = torch.randn(n, k) * 0.05
    w[0, :32] = 0.5  # a block with an outlier, and (below) one whose codes reach -127
    w[1, 32:64] = -w[1, 32:64].abs().max()
    return Q80Linear.from_blocks(quantize_q8_0(w))


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


@needs_native
@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 17, 63])
def test_native_head_agrees_with_torchs_blocks_and_the_exact_product(rows: int) -> None:
    module = _module(1030, 576)  # 18 blocks, as the model's head; 1030 outputs, not a multiple of the task size
    assert "native AVX-512 VNNI" in module.kernel and module.weight.shape == (1030, 18, 32)
    x = torch.randn(rows, 576)
    got = module(x)
    exact = x.double() @ dequantize_q8_0(module.blocks()).double().T
    # int16 activations here, two int8 terms in torch's path (which an export trace takes, over views)
    assert _relative(got, module._block_int8(x)) < 5e-5
    assert _relative(got, exact) < 1e-4


@needs_native
def test_output_major_buffers_keep_rows_blocks_and_the_state_dict_portable(tmp_path: Path) -> None:
    w = torch.randn(64, 96) * 0.05
    blocks = quantize_q8_0(w)
    module = Q80Linear.from_blocks(blocks)
    exact = dequantize_q8_0(blocks)
    assert module._native and module.weight.shape == (64, 3, 32) and module.scale.shape == (64, 3)
    assert torch.equal(module.dequantized(), exact)
    ids = torch.tensor([[3, 0], [63, 3]])
    assert torch.equal(module.rows(ids), exact[ids])
    assert torch.equal(module.blocks().q, blocks.q) and torch.equal(module.blocks().scale, blocks.scale)
    state = module.state_dict()
    assert state["weight"].shape == (3, 64, 32) and state["scale"].shape == (3, 64)  # group-major, as saved
    save_file(state, tmp_path / "q.safetensors")
    again = empty_linear("q8_0", 96, 64)
    again.load_state_dict(load_file(tmp_path / "q.safetensors"), assign=True)
    again.post_load()
    assert again._native and torch.equal(again.dequantized(), exact)
    x = torch.randn(2, 96)
    assert torch.equal(again(x), module(x))


@needs_native
def test_native_kernel_keeps_bf16_activations_and_batch_shape() -> None:
    module = _module(64, 96)
    x = torch.randn(2, 3, 96, dtype=torch.bfloat16)
    y = module(x)
    assert y.shape == (2, 3, 64) and y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), module._block_int8(x.reshape(6, 96)).reshape(2, 3, 64), rtol=1e-2, atol=1e-2)


@needs_native
def test_inf_and_nan_activations_come_out_as_float_arithmetic_gives_them() -> None:
    module = _module(64, 64)
    x = torch.randn(2, 64)
    x[0, 5] = float("nan")
    x[1, 40] = float("inf")
    y = module(x)
    assert torch.isnan(y[0]).all()  # every output reads the NaN
    assert not torch.isfinite(y[1]).all()


@needs_native
def test_bad_buffers_are_refused_before_the_kernel_runs() -> None:
    library = native.q8_0_library()
    assert library is not None
    weight = torch.zeros(4, 2, 32, dtype=torch.int8)
    scale = torch.zeros(4, 2)
    x = torch.zeros(1, 64)
    assert native.q8_0_matmul(library, weight, scale, x).shape == (1, 4)
    for bad in ((weight, scale, x[:, :32]), (weight, scale.double(), x), (weight, scale, x.double())):
        with pytest.raises(ValueError, match="Q8_0 shapes"):
            native.q8_0_matmul(library, *bad)


@needs_native
def test_the_library_is_cached_and_a_damaged_one_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFLIGHT_CACHE_DIR", str(tmp_path))
    found = native._compiler()
    assert found is not None
    where = tmp_path / "engine" / "native" / f"q8_0-{native._library_key(native.Q8_0, *found)}.so"
    where.parent.mkdir(parents=True)
    where.write_bytes(b"not a shared library")  # a truncated or foreign file where the library should be
    first = native._load_or_build(native.Q8_0, *found)
    assert first.built and first.path == where and first.handle.preflight_q8_0_abi() == native.Q8_0.abi
    second = native._load_or_build(native.Q8_0, *found)
    assert not second.built and second.path == where
    assert not list(where.parent.glob("*.tmp.so"))  # no half-built file left behind


def test_turned_off_by_the_environment(monkeypatch: pytest.MonkeyPatch, fresh_probe: None) -> None:
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    assert native.q8_0_library() is None
    assert native.q8_0_unavailable_reason() == f"native kernels turned off ({native.NATIVE_ENV}=0)"
    module = _module(64, 64)
    assert not module._native and "native kernel off: native kernels turned off" in module.kernel
    assert module.weight.shape == (2, 64, 32)  # group-major, for torch's per-block kernel


def test_without_a_compiler_torchs_kernel_runs(monkeypatch: pytest.MonkeyPatch, fresh_probe: None) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    reason = native.q8_0_unavailable_reason()
    assert reason is not None and ("C++ compiler" in reason or "AVX-512" in reason)
    module = _module(64, 64)
    assert not module._native
    x = torch.randn(3, 64)
    exact = x.double() @ dequantize_q8_0(module.blocks()).double().T
    assert ((module(x).double() - exact).abs().max() / exact.abs().max()).item() < 1e-4


@needs_native
def test_a_compiler_error_is_a_reason_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_probe: None
) -> None:
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setenv("PREFLIGHT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "Q8_0", dataclasses.replace(native.Q8_0, source=broken))
    reason = native.q8_0_unavailable_reason()
    assert reason is not None and reason.startswith("the native q8_0 kernel could not be built")
    assert not list((tmp_path / "cache" / "engine" / "native").glob("*.so"))


# -- int4 ---------------------------------------------------------------------------------


def _int4(n: int, k: int, group: int) -> Int4Linear:
    w = torch.randn(n, k) * 0.05
    w[3, :40] = 0.6  # an outlier group
    q, scale, zero = quantize_int4(w, group)
    return Int4Linear.from_codes(q, scale, zero, group)


@needs_int4
@pytest.mark.parametrize(("n", "k", "group"), [(576, 576, 32), (192, 1536, 32), (128, 256, 64), (64, 640, 128)])
def test_native_int4_rows_agree_with_torchs_kernel_and_the_exact_product(n: int, k: int, group: int) -> None:
    module = _int4(n, k, group)
    assert module.kernel.startswith("int4: preflight::int4_mm")
    x = torch.randn(5, k, dtype=torch.bfloat16)  # two pairs and a single row; the one-row path below
    assert torch.equal(module(x[1:2]), module(x[:2])[1:])  # a row's result does not depend on its partner
    assert torch.equal(module(x[4:]), module(x)[4:])
    got = module(x)
    torchs = torch.ops.aten._weight_int4pack_mm_for_cpu(x, module.qweight, group, module.scales_and_zeros)
    exact = x.double() @ module.dequantized().double().T
    # both round their output to bf16 (2^-9 relative); the native kernel's activations are finer than bf16
    assert _relative(got, torchs) < 1e-2
    assert _relative(got, exact) < 1e-2


@needs_int4
def test_native_int4_is_torchs_kernel_beyond_sixteen_rows_and_for_non_finite_rows() -> None:
    module = _int4(128, 96, 32)
    aten = torch.ops.aten._weight_int4pack_mm_for_cpu
    pad = module.scales_and_zeros.shape[0] * 32 - 96
    x = torch.randn(17, 96, dtype=torch.bfloat16)
    want = aten(torch.nn.functional.pad(x, (0, pad)), module.qweight, 32, module.scales_and_zeros)[:, :128]
    assert torch.equal(module(x), want)
    nan_rows = torch.randn(2, 96, dtype=torch.bfloat16)
    nan_rows[1, 7] = float("nan")
    assert module(nan_rows[1:]).isnan().all() and module(nan_rows)[1].isnan().all()


@needs_int4
def test_outputs_not_in_64_blocks_keep_torchs_int4_kernel() -> None:
    module = _int4(48, 64, 32)  # 48 rows: the packer's 16-multiple, not the native kernel's 64
    assert "native kernel off: 48 outputs are not a multiple of 64" in module.kernel
    x = torch.randn(1, 64, dtype=torch.bfloat16)
    assert _relative(module(x), x.double() @ module.dequantized().double().T) < 1e-2


@needs_int4
def test_the_int4_op_is_checked_against_torch_on_load() -> None:
    assert native._int4_disagreement(native.int4_op()) is None
    assert native._int4_disagreement(torch.ops.aten._weight_int4pack_mm_for_cpu) is None

    def off_by_a_tenth(*args: object) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(*args) * 1.1

    assert (native._int4_disagreement(off_by_a_tenth) or "").startswith("off by")


@needs_int4
def test_the_int4_op_is_registered_once_per_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Asked again with the cache forgotten and another cache directory, the op already loaded is reused:
    a second library registering the `preflight` namespace would abort the process."""
    first = native.int4_op()
    monkeypatch.setenv("PREFLIGHT_CACHE_DIR", str(tmp_path))
    native._int4.cache_clear()
    try:
        assert native.int4_op() is first
        assert not (tmp_path / "engine" / "native").exists()  # nothing built for the new directory
    finally:
        native._int4.cache_clear()
