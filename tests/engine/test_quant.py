"""Quantizers and quantized Linear modules: pure tables, no model file needed."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine.formats import WEIGHT_FORMATS
from engine.quant.functions import (
    FP8_MAX,
    Q41Blocks,
    activation_dtype,
    dequantize_fp8,
    dequantize_int4,
    dequantize_int8,
    dequantize_q4_1,
    fp8_to_float,
    int4_from_q4_1,
    pack_int4,
    quantize_fp8,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)
from engine.quant.linear import (
    DenseLinear,
    Fp8Linear,
    Int4Linear,
    Int8Linear,
    QuantLinear,
    empty_linear,
    make_linear,
    module_weight_bytes,
)

# (out N, in K): odd N, N not a multiple of 16, K not a multiple of 16 / 32 / 128, model shapes.
SHAPES = [(5, 64), (17, 96), (16, 40), (3, 63), (192, 576), (48, 1536)]
ROWS = [1, 3, 37]  # decode, a short batch, enough rows for the int8 dynamic path


@pytest.fixture(autouse=True)
def _seed_and_threads():
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _weight(n: int, k: int) -> torch.Tensor:
    w = torch.randn(n, k) * 0.05
    w[0, 0] = 0.4  # one outlier, as real weights have
    return w


def _synthetic_q4_1(n: int, k: int) -> Q41Blocks:
    """Q4_1 blocks whose d and m are float16 values, as read from a GGUF file."""
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    d = (torch.rand(n, k // 32) * 0.01 + 1e-4).half().float()
    m = (-torch.rand(n, k // 32) * 0.1).half().float()
    return Q41Blocks(q=q, scale=d, min=m)


def _reference_weight(module: nn.Module) -> torch.Tensor:
    """The float32 (N, K) weight a module multiplies by, read back from its own state."""
    if isinstance(module, Int8Linear):
        return dequantize_int8(module.weight, module.scale)
    if isinstance(module, Fp8Linear):
        return dequantize_fp8(module.weight, module.scale)
    if isinstance(module, Int4Linear):
        return module.dequantized()
    return module.weight.float()


def _normalized_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


# -- formats ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "dtype"),
    [
        ("fp32", torch.float32),
        ("bf16", torch.bfloat16),
        ("int8", torch.bfloat16),
        ("int4", torch.bfloat16),
        ("fp8", torch.bfloat16),
    ],
)
def test_activation_dtype(fmt, dtype):
    assert activation_dtype(fmt, torch.device("cpu")) == dtype


@pytest.mark.parametrize("call", [lambda: activation_dtype("int3", "cpu"), lambda: make_linear(torch.ones(2, 2), "q8")])
def test_unknown_format_is_a_value_error(call):
    with pytest.raises(ValueError, match="unknown weight format"):
        call()


@pytest.mark.parametrize("quantize", [quantize_int8, quantize_fp8, lambda w: quantize_int4(w, 32)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_rejected(quantize, bad):
    w = torch.ones(2, 32)
    w[1, 3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize(w)


# -- int8 -------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(1, 1), *SHAPES])
def test_int8_round_trip_within_half_a_step(n, k):
    w = _weight(n, k)
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.shape == (n, k) and scale.shape == (n,) and scale.dtype == torch.float32
    err = (dequantize_int8(q, scale) - w).abs()
    assert bool((err <= scale[:, None] * (0.5 + 1e-5)).all())


def test_int8_zero_rows_have_zero_scale_and_no_nan():
    w = _weight(4, 64)
    w[1] = 0
    w[3] = 0
    q, scale = quantize_int8(w)
    assert scale[1] == 0 and scale[3] == 0
    assert not q[1].any() and not q[3].any()
    back = dequantize_int8(q, scale)
    assert torch.isfinite(back).all() and not back[1].any()
    y = make_linear(w, "int8")(torch.randn(2, 64, dtype=torch.bfloat16))
    assert torch.isfinite(y).all() and not y[:, 1].any() and not y[:, 3].any()


@pytest.mark.parametrize("row", [[-1000.0, 3.0, 1000.0], [5.0, -7.0, 0.0], [1e-30, -2e-30, 0.0]])
def test_int8_extremes_map_to_plus_minus_127_never_minus_128(row):
    q, _ = quantize_int8(torch.tensor([row]))
    assert int(q.abs().max()) == 127
    assert int(q.min()) >= -127


# -- int4 -------------------------------------------------------------------------------


@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize(("n", "k"), [(5, 32), (3, 100), (17, 128), (192, 576), (48, 1536)])
def test_int4_round_trip_within_half_a_step_per_group(n, k, group_size):
    w = _weight(n, k)
    q, scale, zero = quantize_int4(w, group_size)
    groups = -(-k // group_size)
    assert q.dtype == torch.uint8 and q.shape == (n, k) and int(q.max()) <= 15
    assert scale.shape == zero.shape == (n, groups)
    err = (dequantize_int4(q, scale, zero, group_size) - w).abs()
    bound = scale.repeat_interleave(group_size, dim=1)[:, :k] * (0.5 + 1e-5) + 1e-7
    assert bool((err <= bound).all())


def test_int4_ragged_last_group_uses_only_its_own_columns():
    # K = 576 is not a multiple of 128: groups cover 128, 128, 128, 128, 64 columns.
    w = torch.randn(2, 576)
    w[:, 512:] = torch.linspace(0.0, 0.15, 64)
    q, scale, zero = quantize_int4(w, 128)
    assert scale.shape == (2, 5)
    torch.testing.assert_close(scale[:, 4], torch.full((2,), 0.15 / 15))
    torch.testing.assert_close(dequantize_int4(q, scale, zero, 128)[:, 512:], w[:, 512:], atol=0.15 / 30 + 1e-6, rtol=0)


def test_int4_constant_and_zero_groups_are_exact():
    w = torch.zeros(3, 64)
    w[1, :32] = 0.25
    q, scale, zero = quantize_int4(w, 32)
    assert not scale.any()
    assert torch.equal(dequantize_int4(q, scale, zero, 32), w)


@pytest.mark.parametrize("group_size", [0, 16, 48, 100, 512])
def test_int4_unsupported_group_size_is_a_value_error(group_size):
    with pytest.raises(ValueError, match="group size"):
        quantize_int4(torch.ones(2, 64), group_size)
    with pytest.raises(ValueError, match="group size"):
        empty_linear("int4", 64, 16, group_size=group_size)


@pytest.mark.parametrize("k", [1, 2, 31, 64])
def test_pack_int4_round_trip(k):
    q = torch.randint(0, 16, (5, k), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.shape == (5, (k + 1) // 2)
    assert torch.equal(unpack_int4(packed, k), q)


@pytest.mark.parametrize(("n", "k"), [(1, 32), (5, 64), (17, 576)])
def test_q4_1_maps_to_int4_losslessly(n, k):
    blocks = _synthetic_q4_1(n, k)
    q, scale, zero = int4_from_q4_1(blocks)
    assert torch.equal(q, blocks.q)  # the file's codes, not re-quantized
    assert torch.equal(scale, blocks.scale)
    torch.testing.assert_close(dequantize_int4(q, scale, zero, 32), dequantize_q4_1(blocks), rtol=1e-6, atol=1e-7)


def test_int4_module_from_q4_1_keeps_the_codes():
    blocks = _synthetic_q4_1(17, 96)
    module = make_linear(blocks, "int4")
    assert torch.equal(module.codes()[:17, :96], blocks.q)
    x = torch.randn(3, 96, dtype=torch.bfloat16)
    ref = x.float() @ dequantize_q4_1(blocks).T
    assert _normalized_error(module(x), ref) < 0.02  # only bf16 scales and activations differ


@pytest.mark.parametrize(
    "blocks",
    [
        Q41Blocks(q=torch.zeros(2, 48, dtype=torch.uint8), scale=torch.ones(2, 1), min=torch.zeros(2, 1)),
        Q41Blocks(q=torch.zeros(2, 64, dtype=torch.uint8), scale=torch.ones(2, 2), min=torch.zeros(2, 3)),
        Q41Blocks(q=torch.full((2, 32), 16, dtype=torch.uint8), scale=torch.ones(2, 1), min=torch.zeros(2, 1)),
    ],
)
def test_malformed_q4_1_blocks_are_a_value_error(blocks):
    with pytest.raises(ValueError, match="malformed Q4_1"):
        int4_from_q4_1(blocks)


# -- fp8 --------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_fp8_round_trip_relative_error(n, k):
    w = _weight(n, k)
    q, scale = quantize_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    torch.testing.assert_close(scale, w.abs().amax(dim=1) / FP8_MAX)
    err = (dequantize_fp8(q, scale) - w).abs()
    # 3 mantissa bits: half an ulp is 2^-4 relative; subnormals (below 2^-6) step by 2^-9.
    bound = w.abs() * 2**-4 + scale[:, None] * 2**-10 + 1e-12
    assert bool((err <= bound).all())


def test_fp8_saturates_beyond_448_scale_without_inf_or_nan():
    w = torch.tensor([[1.0, -1.0, 500.0, -1e6, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0]])
    q, scale = quantize_fp8(w, scale=torch.tensor([1.0, 0.0]))
    values = q.float()
    assert torch.isfinite(values).all()
    assert values[0].tolist() == [1.0, -1.0, FP8_MAX, -FP8_MAX, 0.5]
    assert not values[1].any()


def test_fp8_zero_rows_are_safe():
    w = _weight(3, 32)
    w[2] = 0
    q, scale = quantize_fp8(w)
    assert scale[2] == 0 and torch.isfinite(q.float()).all() and not q[2].float().any()


@pytest.mark.parametrize("scale", [torch.tensor([1.0]), torch.tensor([-1.0, 1.0]), torch.tensor([float("nan"), 1.0])])
def test_fp8_bad_scale_is_a_value_error(scale):
    with pytest.raises(ValueError, match="fp8 scale"):
        quantize_fp8(torch.ones(2, 4), scale=scale)


# -- modules ----------------------------------------------------------------------------

# fp32/bf16 only round the activations; int8 dynamic also quantizes them per token.
TOLERANCE = {"fp32": 1e-5, "bf16": 0.01, "int8": 0.02, "int4": 0.01, "fp8": 0.01, "fp8-e5m2": 0.01}


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
def test_module_forward_matches_dequantized_matmul(fmt, n, k, rows):
    module = make_linear(_weight(n, k), fmt)
    assert isinstance(module, QuantLinear) and module.fmt == fmt
    assert (module.in_features, module.out_features) == (k, n)
    x = torch.randn(rows, k).to(activation_dtype(fmt, "cpu"))
    y = module(x)
    assert y.shape == (rows, n) and y.dtype == x.dtype
    ref = x.float() @ _reference_weight(module).T
    assert _normalized_error(y, ref) < TOLERANCE[fmt], module.kernel


@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
def test_module_accepts_leading_batch_dims(fmt):
    module = make_linear(_weight(17, 64), fmt)
    x = torch.randn(2, 5, 64).to(activation_dtype(fmt, "cpu"))
    y = module(x)
    assert y.shape == (2, 5, 17)
    torch.testing.assert_close(y, module(x.reshape(10, 64)).reshape(2, 5, 17))


@pytest.mark.parametrize(("n", "k"), [(5, 64), (192, 576)])
def test_int4_group_128_on_a_576_wide_input_pads_and_matches(n, k):
    module = make_linear(_weight(n, k), "int4", group_size=128)
    assert module.scales_and_zeros.shape == (-(-k // 128), 16 * -(-n // 16), 2)
    x = torch.randn(3, k, dtype=torch.bfloat16)
    assert _normalized_error(module(x), x.float() @ module.dequantized().T) < 0.01


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8", "fp8"])
def test_q4_1_source_in_other_formats_dequantizes_first(fmt):
    blocks = _synthetic_q4_1(16, 128)
    module = make_linear(blocks, fmt)
    x = torch.randn(2, 128).to(activation_dtype(fmt, "cpu"))
    ref = x.float() @ dequantize_q4_1(blocks).T
    assert _normalized_error(module(x), ref) < {"fp8": 0.05}.get(fmt, 0.02)


def test_q4_1_source_at_group_128_is_requantized_from_its_values():
    blocks = _synthetic_q4_1(16, 128)
    module = make_linear(blocks, "int4", group_size=128)
    requantized = Int4Linear.from_codes(*quantize_int4(dequantize_q4_1(blocks), 128), 128)
    assert module.group_size == 128
    x = torch.randn(2, 128, dtype=torch.bfloat16)
    assert torch.equal(module(x), requantized(x))


def test_int8_picks_its_kernel_by_shape():
    assert "_weight_int8pack_mm" in make_linear(_weight(64, 64), "int8").kernel
    assert "K=40 is not a multiple of 16" in make_linear(_weight(64, 40), "int8").kernel
    assert make_linear(_weight(8192, 64), "int8").kernel.startswith("int8: dynamic int8")


def test_fp8_kernel_says_it_dequantizes_on_cpu():
    assert make_linear(_weight(16, 32), "fp8").kernel == "fp8: dequantize-on-the-fly (no FP8 matmul units on cpu)"


@pytest.mark.parametrize("rows", ROWS)
def test_fp8_scaled_mm_path_matches_reference(rows):
    """The GPU path's math, run through torch._scaled_mm on CPU (activations quantized per token)."""
    q, scale = quantize_fp8(_weight(32, 64))
    module = Fp8Linear(q, scale, fp8_matmul=True)
    module.post_load()
    assert "_scaled_mm" in module.kernel
    x = torch.randn(rows, 64, dtype=torch.bfloat16)
    assert _normalized_error(module(x), x.float() @ dequantize_fp8(q, scale).T) < 0.08


# -- state round trip and memory ---------------------------------------------------------


def _expected_weight_bytes(fmt: str, n: int, k: int, group_size: int) -> int:
    if fmt in ("fp32", "bf16"):
        return n * k * (4 if fmt == "fp32" else 2)
    if fmt == "int4":
        n16, kg = 16 * -(-n // 16), group_size * -(-k // group_size)
        return n16 * kg // 2 + (kg // group_size) * n16 * 2 * 2  # packed codes + bf16 scale/zero pairs
    weight_only_int8 = fmt == "int8" and k % 16 == 0 and n < 8192  # keeps a bf16 copy of the scale
    return n * k + n * 4 + (n * 2 if weight_only_int8 else 0)  # 1-byte weight, f32 scale


@pytest.mark.parametrize(("n", "k"), [(5, 64), (17, 96), (3, 63), (192, 576)])
@pytest.mark.parametrize(("fmt", "group_size"), [(fmt, 32) for fmt in WEIGHT_FORMATS] + [("int4", 128)])
def test_safetensors_round_trip_reproduces_output_and_bytes(fmt, group_size, n, k, tmp_path):
    module = make_linear(_weight(n, k), fmt, group_size=group_size)
    state = module.state_dict()
    assert all(type(t) is torch.Tensor or isinstance(t, nn.Parameter) for t in state.values())
    save_file({name: t.contiguous() for name, t in state.items()}, tmp_path / "w.safetensors")

    loaded = empty_linear(fmt, k, n, group_size=group_size)
    assert all(t.device.type == "meta" for t in loaded.state_dict().values())
    loaded.load_state_dict(load_file(tmp_path / "w.safetensors"), assign=True)
    loaded.post_load()
    loaded.post_load()  # idempotent

    x = torch.randn(4, k).to(activation_dtype(fmt, "cpu"))
    assert torch.equal(loaded(x), module(x))
    assert loaded.kernel == module.kernel
    expected = _expected_weight_bytes(fmt, n, k, group_size)
    assert module.weight_bytes() == loaded.weight_bytes() == expected
    for name, t in loaded.state_dict().items():  # saving again gives the same portable bytes
        assert torch.equal(t, state[name]), name


def test_int4_state_dict_is_portable_not_the_kernel_layout():
    q, scale, zero = quantize_int4(_weight(64, 128), 32)
    module = Int4Linear.from_codes(q, scale, zero, 32)
    assert torch.equal(module.state_dict()["qweight"], pack_int4(q))
    assert torch.equal(module.codes(), q)
    assert module.weight_bytes() == 64 * 128 // 2 + 4 * 64 * 4  # no second copy of the codes


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
def test_forward_before_post_load_is_a_clear_error(fmt):
    state = make_linear(_weight(16, 64), fmt).state_dict()
    loaded = empty_linear(fmt, 64, 16)
    loaded.load_state_dict(state, assign=True)
    with pytest.raises(RuntimeError, match="post_load"):
        loaded(torch.randn(1, 64, dtype=torch.bfloat16))


@pytest.mark.parametrize(
    "call",
    [
        lambda: Int8Linear.empty(8, 8, group_size=32),
        lambda: Fp8Linear.empty(8, 8, colour="red"),
        lambda: Int4Linear.empty(64, 16, stripes=1),
    ],
)
def test_unknown_module_options_are_a_value_error(call):
    with pytest.raises(ValueError, match="unknown .* option"):
        call()


def test_module_weight_bytes_sums_quant_and_plain_and_counts_tied_once():
    embed = nn.Embedding(100, 64, dtype=torch.bfloat16)
    head = DenseLinear.empty(64, 100, dtype=torch.bfloat16)
    head.weight = embed.weight  # tied, as in SmolLM2
    norm = nn.RMSNorm(64)
    int4 = make_linear(_weight(32, 64), "int4")
    int8 = make_linear(_weight(32, 64), "int8")
    model = nn.ModuleDict({"embed": embed, "head": head, "norm": norm, "q": int4, "k": int8})
    expected = 100 * 64 * 2 + 64 * 4 + int4.weight_bytes() + int8.weight_bytes()
    assert module_weight_bytes(model) == expected
    assert int4.weight_bytes() == 32 * 64 // 2 + 2 * 32 * 4


@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
def test_low_bit_memory_is_really_low(fmt):
    module = make_linear(_weight(256, 576), fmt)
    bits_per_weight = 8 * module.weight_bytes() / (256 * 576)
    assert bits_per_weight <= {"fp32": 32, "bf16": 16, "int8": 8.1, "int4": 5.0, "fp8": 8.1, "fp8-e5m2": 8.1}[fmt]


def test_fp8_table_lookup_equals_the_cast():
    every_code = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).reshape(16, 16)
    finite = torch.isfinite(every_code.float())
    assert torch.equal(fp8_to_float(every_code)[finite], every_code.float()[finite])


@pytest.mark.parametrize("rows", [1, 37])
def test_int8_accepts_unaligned_activations(rows):
    """`_weight_int8pack_mm` segfaults on unaligned inputs; the module must realign them."""
    module = make_linear(_weight(32, 64), "int8")
    x = torch.randn(rows * 64 + 1, dtype=torch.bfloat16)[1:].view(rows, 64)  # starts 2 bytes off
    assert x.data_ptr() % 64 != 0
    ref = x.float() @ _reference_weight(module).T
    assert _normalized_error(module(x), ref) < TOLERANCE["int8"]


# -- Q8_0 blocks ------------------------------------------------------------------------


def test_quantize_q8_0_matches_ggufs_own_quantizer() -> None:
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from engine.quant.functions import dequantize_q8_0, quantize_q8_0

    w = torch.randn(64, 96) * 0.1
    ours = quantize_q8_0(w)
    raw = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0).reshape(64, -1, 34)
    assert np.array_equal(ours.scale.numpy(), raw[:, :, 0:2].copy().view(np.float16)[..., 0])
    assert np.array_equal(ours.q.numpy(), raw[:, :, 2:].copy().view(np.int8).reshape(64, -1))
    theirs = gguf.quants.dequantize(raw.reshape(64, -1), gguf.GGMLQuantizationType.Q8_0)
    assert torch.equal(dequantize_q8_0(ours), torch.from_numpy(theirs))


@pytest.mark.parametrize("rows", [1, 3, 7, 8, 40])
def test_q8_0_linear_multiplies_by_the_exact_blocks(rows: int) -> None:
    from engine.quant.functions import dequantize_q8_0, quantize_q8_0
    from engine.quant.linear import Q80Linear

    blocks = quantize_q8_0(torch.randn(200, 128) * 0.05)
    module = Q80Linear.from_blocks(blocks)
    exact = dequantize_q8_0(blocks)
    assert torch.equal(module.dequantized(), exact)
    ids = torch.tensor([[3, 0], [199, 3]])
    assert torch.equal(module.rows(ids), exact[ids])
    x = torch.randn(rows, 128)
    want = x.double() @ exact.double().T
    # below 8 rows the activations go in as two int8 terms per block: still within ~1e-4 of the exact product
    assert ((module(x).double() - want).abs().max() / want.abs().max()).item() < 1e-4


def test_q8_0_linear_round_trips_through_a_state_dict(tmp_path) -> None:  # noqa: ANN001 - pytest's tmp_path
    from engine.quant.functions import quantize_q8_0
    from engine.quant.linear import Q80Linear, empty_linear

    module = Q80Linear.from_blocks(quantize_q8_0(torch.randn(48, 64)))
    save_file(module.state_dict(), tmp_path / "q.safetensors")
    again = empty_linear("q8_0", 64, 48)
    again.load_state_dict(load_file(tmp_path / "q.safetensors"), assign=True)
    again.post_load()
    assert torch.equal(again.dequantized(), module.dequantized())
    assert again.blocks().scale.dtype == torch.float16 and torch.equal(again.blocks().q, module.blocks().q)
