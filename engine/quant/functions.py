"""Weight formats: pure quantize / dequantize functions (no modules, no I/O).

The drop-in Linear modules that hold these low-bit buffers (`make_linear`, `empty_linear`,
`module_weight_bytes`, `QuantLinear`) live in `engine/quant/linear.py`, which imports this module.

Forms (w is an (N, K) weight: N outputs, K inputs):
- int8: per-output-channel symmetric, w ~= q * scale, scale = max|w| / 127, q in -127..127.
- int4: groups of `group_size` along K, asymmetric min/max, w ~= (q - 8) * scale + zero with
  q in 0..15, the form PyTorch's packed int4 kernel uses. K need not be a multiple of the
  group size: the last group is then shorter (the module zero-pads activations to fit).
- fp8: float8_e4m3fn with a per-row scale = max|w| / 448, w ~= q * scale; out-of-range
  values saturate at +-448 (e4m3fn has no inf: an unclamped cast would give NaN). The same
  functions take float8_e5m2 (`dtype=`): per-row scale = max|w| / 57344, saturating at
  +-57344 (e5m2 has inf, which an unclamped cast of a larger value would give). E5M2 trades
  one mantissa bit for range, so on weights (which a per-row scale already fits) it is coarser.

Kernel timings that decided the choices below (int8, int4 and fp8 kernels at decode and prefill
shapes on a 2-core CPU) are in docs/BENCHMARKS.md, "Quantized matmul kernels on CPU"; bench/quant_kernels.py
re-times the modules each format uses.

What the modules do with those timings:
- int8: `_weight_int8pack_mm` below 8 rows when N < 8192; dynamic int8 (`torch._int_mm` on
  per-token int8 activations) otherwise, lm_head included. fbgemm's dynamic linear is 10-50%
  faster at M = 256, but it needs an opaque prepacked copy of the weight beside the plain
  int8 buffer (twice the memory) and `torch.ao` is deprecated; `_int_mm` reads the same buffer.
  `_weight_int8pack_mm` needs K % 16 == 0 (else wrong results or a segfault) and inputs aligned
  to 32 bytes (safetensors tensors often are not): the module checks both.
- int4: the packed kernel at every M. Dequantizing to f32 for the fast f32 GEMM wins by at
  most ~1.2x at M = 256 and loses below, and needs the kernel's private, ISA-specific layout.
- fp8 on CPU: the table lookup + f32 GEMM at every M (no FP8 units; "dequantize-on-the-fly").
- Dense bf16 is slower than fp32 at M = 256 on the measured CPU (no AMX); that is the dense format's
  business, not this module's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.formats import WEIGHT_FORMATS

INT4_GROUP_SIZES = (32, 64, 128, 256)  # what the packed int4 kernels accept (powers of two)
INT4_N_MULTIPLE = 16  # the CPU int4 packer needs N % 16 == 0 (modules pad rows)
Q4_1_BLOCK = 32
Q8_0_BLOCK = 32
INT8_MAX = 127
FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8_E5M2_MAX = 57344.0  # largest finite float8_e5m2
FP8_MAXES = {torch.float8_e4m3fn: FP8_MAX, torch.float8_e5m2: FP8_E5M2_MAX}


@dataclass(frozen=True, slots=True)
class Q41Blocks:
    """A Q4_1 matrix kept in its native form: w = scale * q + min per 32-wide block.

    Shapes: q (out, in) uint8 in 0..15; scale and min (out, in // 32) float32. It lives with
    the weight formats, not the GGUF reader, so that quant imports nothing of the model side.
    """

    q: torch.Tensor
    scale: torch.Tensor
    min: torch.Tensor


@dataclass(frozen=True, slots=True)
class Q80Blocks:
    """A Q8_0 matrix kept in its native form: w = scale * q per 32-wide block (llama.cpp's Q8_0).

    Shapes: q (out, in) int8; scale (out, in // 32) float16, the file's own block scales.
    Dequantized, every element is the float32 product of an fp16 scale and an int8 code,
    which float32 holds exactly (11 + 7 significant bits).
    """

    q: torch.Tensor
    scale: torch.Tensor


def check_format(fmt: str) -> str:
    """Return `fmt` if it is a known weight format, else raise ValueError."""
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}: choose one of {', '.join(WEIGHT_FORMATS)}")
    return fmt


def check_group_size(group_size: int) -> int:
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(
            f"int4 group size {group_size} is not supported: choose one of {', '.join(map(str, INT4_GROUP_SIZES))}"
        )
    return group_size


def activation_dtype(fmt: str, device: torch.device | str) -> torch.dtype:
    """The dtype activations flow in for a weight format.

    fp32 keeps float32 end to end. Every other format runs bf16 activations: on CPU the
    packed int4/int8 kernels are only vectorised for bf16 (fp32 int4 is 20x+ slower), and
    on CUDA bf16 is the native tensor-core type.
    """
    check_format(fmt)
    torch.device(device)  # validates the device string
    return torch.float32 if fmt == "fp32" else torch.bfloat16


def compute_dtype(fmt: str, device: torch.device | str) -> torch.dtype:
    """The dtype of the model's residual stream, norms, RoPE, attention and KV cache.

    On CPU this is float32 for every format: bf16 attention and elementwise ops are
    2-5x slower than fp32 here (SDPA over 64 cached positions: 61 vs 13 us), while the
    weight kernels take their `activation_dtype` input by a cheap cast inside the
    linear module. On CUDA the stream stays in the activation dtype.
    """
    dev = torch.device(device)
    return torch.float32 if dev.type == "cpu" else activation_dtype(fmt, dev)


def _check_matrix(w: torch.Tensor, what: str) -> torch.Tensor:
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"{what} needs a non-empty 2-D weight (out, in), got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"{what} needs a floating-point weight, got {w.dtype}")
    w = w.float()
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{what}: the weight holds NaN or inf; fix the source tensor before quantizing")
    return w


def _safe_divisor(scale: torch.Tensor) -> torch.Tensor:
    """`scale` with zeros replaced by 1, so all-zero rows/groups divide to exactly 0."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))


# -- int8 -------------------------------------------------------------------------------


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: returns q int8 (N, K) in -127..127 and scale f32 (N,).

    An all-zero row gets scale 0 and q 0 (no division by zero).
    """
    w = _check_matrix(w, "quantize_int8")
    scale = w.abs().amax(dim=1) / INT8_MAX
    q = torch.round(w / _safe_divisor(scale)[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


# -- Q8_0 blocks ------------------------------------------------------------------------


def check_q8_0(blocks: Q80Blocks) -> Q80Blocks:
    """`blocks` if its shapes and dtypes are a Q8_0 matrix, else ValueError."""
    q, d = blocks.q, blocks.scale
    if q.ndim != 2 or q.dtype != torch.int8 or q.shape[1] % Q8_0_BLOCK:
        raise ValueError(
            f"malformed Q8_0 blocks: q {tuple(q.shape)} {q.dtype} (expected int8 (out, in), in a multiple of 32)"
        )
    if d.shape != (q.shape[0], q.shape[1] // Q8_0_BLOCK) or d.dtype != torch.float16:
        raise ValueError(f"malformed Q8_0 blocks: scale {tuple(d.shape)} {d.dtype} (expected float16 (out, in // 32))")
    return blocks


def quantize_q8_0(w: torch.Tensor) -> Q80Blocks:
    """Q8_0 as llama.cpp's reference quantizer makes it: per 32-block d = max|w| / 127 (stored fp16), q = round(w / d).

    For tables the file does not already store as Q8_0; K must be a multiple of 32.
    """
    w = _check_matrix(w, "quantize_q8_0")
    n, k = w.shape
    if k % Q8_0_BLOCK:
        raise ValueError(f"quantize_q8_0 needs the input size to be a multiple of {Q8_0_BLOCK}, got {k}")
    blocks = w.reshape(n, -1, Q8_0_BLOCK)
    d = blocks.abs().amax(dim=-1) / INT8_MAX
    inv = torch.where(d > 0, 1.0 / _safe_divisor(d), torch.zeros_like(d))
    q = torch.round(blocks * inv[..., None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return Q80Blocks(q=q.reshape(n, k), scale=d.to(torch.float16))


def dequantize_q8_0(blocks: Q80Blocks, rows: torch.Tensor | None = None) -> torch.Tensor:
    """fp16 scale x int8 code in float32 (exact), for every row or for the `rows` given (an index tensor)."""
    q, d = (blocks.q, blocks.scale) if rows is None else (blocks.q[rows], blocks.scale[rows])
    shape = q.shape
    groups = q.reshape(*shape[:-1], -1, Q8_0_BLOCK).float()
    return (groups * d.float()[..., None]).reshape(shape)


def quantize_int8_blocks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations (M, K) to int8 per 32-wide block, as llama.cpp quantizes them for a Q8_0 dot product.

    Returns q int8 (M, K) and the float32 block scales (M, K // 32): x ~= q * d per block, d = max|x| / 127.
    All-zero blocks get d = 0 and q = 0.
    """
    m, k = x.shape
    blocks = x.float().reshape(m, -1, Q8_0_BLOCK)
    d = blocks.abs().amax(dim=-1) / INT8_MAX
    q = torch.round(blocks / _safe_divisor(d)[..., None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.reshape(m, k), d


# -- int4 -------------------------------------------------------------------------------


def _pad_to_groups(w: torch.Tensor, group_size: int, value: float = 0.0) -> torch.Tensor:
    """Pad the last dim of `w` up to a multiple of `group_size` with `value`."""
    pad = -w.shape[-1] % group_size
    return torch.nn.functional.pad(w, (0, pad), value=value) if pad else w


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group-wise asymmetric int4: q uint8 (N, K) in 0..15, scale and zero f32 (N, ceil(K / g)).

    Dequantizes as (q - 8) * scale + zero. Per group: scale = (max - min) / 15 and
    zero = min + 8 * scale, so the error is at most scale / 2. When K is not a multiple of
    `group_size` the last group covers the remaining K % group_size columns. A constant
    group gets scale 0 and reproduces its value exactly.
    """
    check_group_size(group_size)
    w = _check_matrix(w, "quantize_int4")
    n, k = w.shape
    # Pad the ragged tail with copies of each row's last value so it cannot stretch min/max.
    tail = w[:, -1:].expand(n, -k % group_size)
    groups = torch.cat([w, tail], dim=1).reshape(n, -1, group_size)
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = (hi - lo) / 15
    q = torch.round((groups - lo[..., None]) / _safe_divisor(scale)[..., None]).clamp_(0, 15)
    q = torch.where(scale[..., None] > 0, q, torch.full_like(q, 8))  # constant group: code 8 -> zero
    zero = lo + 8 * scale
    return q.reshape(n, -1)[:, :k].to(torch.uint8), scale, zero


def int4_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """The nearest int4 codes (uint8, 0..15) for `w` on a given grid: w ~= (q - 8) * scale + zero, elementwise.

    `scale` and `zero` broadcast against `w` (one column and its group's values, in GPTQ). A zero
    scale (a constant group) gives code 8, which reproduces `zero`. `quantize_int4` chooses its grid
    and codes in one pass; this is for callers that fix the grid first and pick codes later.
    """
    q = torch.round((w - zero) / _safe_divisor(scale)) + 8
    return torch.where(scale > 0, q.clamp_(0, 15), torch.full_like(q, 8)).to(torch.uint8)


def int4_from_q4_1(blocks: Q41Blocks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Map llama.cpp Q4_1 blocks (w = d * q + m, 32 wide) to int4 group-32 form, losslessly.

    The 4-bit codes are kept as they are; scale = d and zero = m + 8 * d, because
    (q - 8) * d + (m + 8 * d) = d * q + m.
    """
    q, d, m = blocks.q, blocks.scale, blocks.min
    if q.ndim != 2 or q.shape[1] % Q4_1_BLOCK or d.shape != (q.shape[0], q.shape[1] // Q4_1_BLOCK):
        raise ValueError(
            f"malformed Q4_1 blocks: q {tuple(q.shape)}, scale {tuple(d.shape)} "
            f"(expected q (out, in) with in a multiple of {Q4_1_BLOCK} and scale (out, in // {Q4_1_BLOCK}))"
        )
    if m.shape != d.shape:
        raise ValueError(f"malformed Q4_1 blocks: min {tuple(m.shape)} does not match scale {tuple(d.shape)}")
    if int(q.max()) > 15:
        raise ValueError("malformed Q4_1 blocks: codes must be in 0..15")
    d, m = d.float(), m.float()
    return q.to(torch.uint8), d, m + 8 * d


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """(q - 8) * scale + zero, float32 (N, K); the last group may be shorter than `group_size`."""
    n, k = q.shape
    if scale.shape != (n, -(-k // group_size)) or zero.shape != scale.shape:
        raise ValueError(
            f"int4 scale/zero shapes {tuple(scale.shape)}/{tuple(zero.shape)} do not fit codes {tuple(q.shape)} "
            f"at group size {group_size}"
        )
    groups = _pad_to_groups(q.float() - 8, group_size).reshape(n, -1, group_size)
    w = groups * scale.float()[..., None] + zero.float()[..., None]
    return w.reshape(n, -1)[:, :k]


def dequantize_q4_1(blocks: Q41Blocks) -> torch.Tensor:
    """The float32 weight a Q4_1 tensor stands for: d * q + m per 32-wide block."""
    n, k = blocks.q.shape
    groups = blocks.q.float().reshape(n, -1, Q4_1_BLOCK)
    return (groups * blocks.scale.float()[..., None] + blocks.min.float()[..., None]).reshape(n, k)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte along K (even column in the low nibble): (N, K) -> (N, ceil(K / 2))."""
    q = _pad_to_groups(q.to(torch.uint8), 2, value=8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of `pack_int4`: (N, ceil(K / 2)) uint8 -> (N, K) codes in 0..15."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(packed.shape[0], -1)[:, :k]


def int4_padded_shape(in_features: int, out_features: int, group_size: int) -> tuple[int, int]:
    """(N16, Kg): N rounded up to 16 (the CPU packer's need) and K up to the group size."""
    check_group_size(group_size)
    n16 = -(-out_features // INT4_N_MULTIPLE) * INT4_N_MULTIPLE
    kg = -(-in_features // group_size) * group_size
    return n16, kg


def int4_buffers(
    q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int, dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, torch.Tensor]:
    """The portable int4 module state: packed codes (N16, Kg / 2) and scale/zero pairs (G, N16, 2).

    Padded rows get scale = zero = 0 (their outputs are dropped) and padded columns code 8;
    they meet zero-padded activations, so they add nothing.
    """
    n, k = q.shape
    n16, kg = int4_padded_shape(k, n, group_size)
    codes = torch.nn.functional.pad(q.to(torch.uint8), (0, kg - k, 0, n16 - n), value=8)
    pairs = torch.nn.functional.pad(torch.stack([scale, zero], dim=-1).float(), (0, 0, 0, 0, 0, n16 - n))
    return pack_int4(codes), pairs.transpose(0, 1).to(dtype).contiguous()


# -- fp8 --------------------------------------------------------------------------------


def quantize_fp8(
    w: torch.Tensor, scale: torch.Tensor | None = None, dtype: torch.dtype = torch.float8_e4m3fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8 `dtype` (N, K), float8_e4m3fn unless float8_e5m2 is asked for, with a per-row f32 scale (N,).

    w ~= q * scale. The scale defaults to max|w| / (the dtype's largest finite value) per row (an
    all-zero row gets scale 0 and q 0). A caller-given scale may be too small: values beyond that
    largest value times the scale saturate to it.
    """
    if dtype not in FP8_MAXES:
        raise ValueError(f"fp8 dtype must be one of {', '.join(map(str, FP8_MAXES))}, got {dtype}")
    fp8_max = FP8_MAXES[dtype]
    w = _check_matrix(w, "quantize_fp8")
    if scale is None:
        scale = w.abs().amax(dim=1) / fp8_max
    elif scale.shape != (w.shape[0],) or bool((scale < 0).any()) or not bool(torch.isfinite(scale).all()):
        raise ValueError(f"fp8 scale must be finite, non-negative and of shape ({w.shape[0]},)")
    scale = scale.float()
    q = (w / _safe_divisor(scale)[:, None]).clamp_(-fp8_max, fp8_max).to(dtype)
    return q, scale


# code -> value, one 256-entry table per fp8 dtype
_FP8_VALUES = {dtype: torch.arange(256, dtype=torch.uint8).view(dtype).float() for dtype in FP8_MAXES}


def fp8_to_float(q: torch.Tensor) -> torch.Tensor:
    """float8 (either dtype) -> float32 by a 256-entry table: on CPU ~3x faster than `q.float()`."""
    if q.device.type != "cpu":
        return q.float()
    codes = q.view(torch.uint8).reshape(-1).to(torch.int32)
    return _FP8_VALUES[q.dtype].index_select(0, codes).view(q.shape)


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return fp8_to_float(q) * scale.float()[:, None]


# -- activations ------------------------------------------------------------------------


def row_scale(x: torch.Tensor, qmax: float) -> torch.Tensor:
    """Per-row symmetric scale max|x| / qmax as (M, 1), for quantizing activations per token.

    All-zero rows get 1, so they quantize to 0 instead of dividing by zero.
    """
    return _safe_divisor(x.abs().amax(dim=1, keepdim=True) / qmax)
