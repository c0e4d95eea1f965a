"""Drop-in Linear modules that keep weights in their real low precision.

Every module computes y = x @ W.T with no bias; x is (..., K) in the format's activation
dtype (`engine.quant.functions.activation_dtype`) and y comes back (..., N) in the same dtype. All
state is plain tensors (safetensors-compatible). Loading follows gpt-fast: build with
`empty()` on `meta`, `load_state_dict(sd, assign=True)`, then `post_load()` to prepack for
the kernel. `kernel` names the path that runs; `weight_bytes()` counts what is resident.
The timings behind each module's kernel choice are at the top of `engine/quant/functions.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.quant.functions import (
    FP8_MAX,
    INT8_MAX,
    Q4_1_BLOCK,
    Q8_0_BLOCK,
    Q41Blocks,
    Q80Blocks,
    check_format,
    check_group_size,
    check_q8_0,
    dequantize_int4,
    dequantize_int8,
    dequantize_q4_1,
    dequantize_q8_0,
    fp8_to_float,
    int4_buffers,
    int4_from_q4_1,
    int4_padded_shape,
    pack_int4,
    quantize_fp8,
    quantize_int4,
    quantize_int8,
    quantize_int8_blocks,
    row_scale,
    unpack_int4,
)
from engine.quant.native import int4_op, int4_unavailable_reason, q8_0_library, q8_0_matmul, q8_0_unavailable_reason

INT8_PACK_K_MULTIPLE = 16  # _weight_int8pack_mm gives garbage or segfaults unless K % 16 == 0
CPU_ALIGNMENT_BYTES = 64  # torch's CPU allocator alignment; clone() always meets it
INT8_DYNAMIC_MIN_ROWS = 8  # from this many rows dynamic int8 beats weight-only int8 (engine/quant/functions.py)
INT8_DYNAMIC_MIN_OUT = 8192  # ... and at any row count for outputs this wide (the lm_head)
FP8_MM_MULTIPLE = 16  # torch._scaled_mm needs K and N multiples of 16
FP8_CPU_ROW_BLOCK = 2048  # rows dequantized at a time on CPU (~4.5 MiB of fp32 at K = 576)
FP8_MIN_CAPABILITY = (8, 9)  # Ada / Hopper and newer have FP8 tensor cores
INT4_CUDA_MIN_CAPABILITY = (8, 0)  # the tinygemm int4 kernel needs Ampere or newer
INT4_NATIVE_N_MULTIPLE = 64  # the native 1-2 row int4 kernel reads whole 64-output packed blocks
INT4_CUDA_INNER_K_TILES = (8, 4, 2)  # the CUDA packer's choices; K must be a multiple of 16 x tiles
Q8_0_INT_MM_MAX_ROWS = 64  # Q8_0: int8 block products below this many rows, float32 row blocks from it
Q8_0_TILE_MIN_ROWS = 8  # ... in column tiles above this many rows (measured: tiles pay from 16 rows on)
Q8_0_COLUMN_TILE = 8192  # output columns per tile: 2 x 16 rows x 8192 x 4 B = 1 MiB of products, in cache
Q8_0_ROW_BLOCK = 4096  # rows dequantized at a time on the float32 path (~9 MiB at K = 576)


def _storage_key(t: torch.Tensor) -> tuple[Any, ...]:
    if t.device.type == "meta":
        return ("meta", id(t))
    return (t.device.type, t.device.index, t.untyped_storage().data_ptr(), t.storage_offset())


def _unique_bytes(tensors: list[torch.Tensor]) -> dict[tuple[Any, ...], int]:
    seen: dict[tuple[Any, ...], int] = {}
    for t in tensors:
        key = _storage_key(t)
        seen[key] = max(seen.get(key, 0), t.nbytes)
    return seen


class QuantLinear(nn.Module, ABC):
    """Common base: a bias-free linear layer whose weight lives in `fmt`."""

    fmt: str
    in_features: int
    out_features: int
    kernel: str

    @classmethod
    @abstractmethod
    def empty(cls, in_features: int, out_features: int, *, device: Any = "meta", **fmt_options: Any) -> QuantLinear:
        """An instance with correctly shaped, unfilled buffers (on `meta` for the warm-load path)."""

    def post_load(self) -> None:
        """Prepack after `load_state_dict`; safe to call more than once."""

    def resident_tensors(self) -> list[torch.Tensor]:
        """Every tensor this module holds for its weight: parameters, buffers, kernel caches."""
        return [*self.parameters(recurse=False), *self.buffers(recurse=False), *self._kernel_caches()]

    def _kernel_caches(self) -> list[torch.Tensor]:
        return []

    def weight_bytes(self) -> int:
        return sum(_unique_bytes(self.resident_tensors()).values())

    def dequantized(self) -> torch.Tensor:
        """The float32 (N, K) weight this module multiplies by: what the fidelity audit compares with the file."""
        raise NotImplementedError(f"{type(self).__name__} cannot read its weight back")

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Float32 rows `ids` of the weight (an embedding lookup through a table that is also the head)."""
        return self.dequantized()[ids]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel!r}"


class DenseLinear(nn.Linear, QuantLinear):
    """fp32 / bf16: a plain `nn.Linear` (state key `weight`) with the common interface."""

    def __init__(self, in_features: int, out_features: int, *, device: Any = None, dtype: torch.dtype) -> None:
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)
        self.weight.requires_grad_(False)
        self.fmt = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
        self.kernel = f"{self.fmt}: dense matmul"

    @classmethod
    def empty(cls, in_features: int, out_features: int, *, device: Any = "meta", **fmt_options: Any) -> DenseLinear:
        dtype = fmt_options.pop("dtype", torch.bfloat16)
        _no_options("dense", fmt_options)
        return cls(in_features, out_features, device=device, dtype=dtype)

    def dequantized(self) -> torch.Tensor:
        return self.weight.float()

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids].float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Accepts any float input (the model may keep its residual stream in fp32) and returns its dtype."""
        if x.dtype == self.weight.dtype:
            return F.linear(x, self.weight)
        return F.linear(x.to(self.weight.dtype), self.weight).to(x.dtype)

    extra_repr = QuantLinear.extra_repr


# -- int8 -------------------------------------------------------------------------------


class Int8Linear(QuantLinear):
    """Per-channel symmetric int8: buffers `weight` int8 (N, K) and `scale` f32 (N,).

    CPU: weight-only `_weight_int8pack_mm` for few rows on narrow outputs (it keeps a bf16
    copy of the scale), dynamic int8 (`_int_mm` on per-token int8 activations) otherwise.
    Both read the same int8 buffer.
    """

    fmt = "int8"

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self._ready = False
        self._on_cpu = False
        self._scale_bf16: torch.Tensor | None = None  # only while the weight-only kernel may run
        self.kernel = "int8: not prepared (call post_load)"

    @classmethod
    def empty(cls, in_features: int, out_features: int, *, device: Any = "meta", **fmt_options: Any) -> Int8Linear:
        _no_options("int8", fmt_options)
        return cls(
            torch.empty(out_features, in_features, dtype=torch.int8, device=device),
            torch.empty(out_features, dtype=torch.float32, device=device),
        )

    def post_load(self) -> None:
        self._on_cpu = self.weight.device.type == "cpu"
        weight_only = (
            self._on_cpu and self.in_features % INT8_PACK_K_MULTIPLE == 0 and self.out_features < INT8_DYNAMIC_MIN_OUT
        )
        self._scale_bf16 = self.scale.to(torch.bfloat16) if weight_only else None
        if self._on_cpu:
            self.weight = _aligned(self.weight)  # safetensors hands out unaligned tensors
        if weight_only:
            self.kernel = f"int8: _weight_int8pack_mm below {INT8_DYNAMIC_MIN_ROWS} rows, else dynamic int8 _int_mm"
        elif not self._on_cpu:
            self.kernel = f"int8: dequantize-on-the-fly (no int8 kernel wired for {self.weight.device.type})"
        elif self.in_features % INT8_PACK_K_MULTIPLE:
            self.kernel = f"int8: dynamic int8 _int_mm (K={self.in_features} is not a multiple of 16)"
        else:
            self.kernel = "int8: dynamic int8 _int_mm (per-token activation scales)"
        self._ready = True

    def _kernel_caches(self) -> list[torch.Tensor]:
        return [self._scale_bf16] if self._scale_bf16 is not None else []

    def dequantized(self) -> torch.Tensor:
        return dequantize_int8(self.weight, self.scale)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids].float() * self.scale[ids].unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._ready:
            raise RuntimeError("Int8Linear.post_load() was not called after loading the weights")
        x2 = x.reshape(-1, self.in_features)
        if not self._on_cpu:
            y = (x2 @ self.weight.to(x.dtype).T) * self.scale.to(x.dtype)
        elif self._scale_bf16 is not None and (torch.compiler.is_compiling() or x2.shape[0] < INT8_DYNAMIC_MIN_ROWS):
            # A compiled step is a decode step; in the server's it has a symbolic row count, and a branch on that
            # is a guard the export refuses, so the package takes the weight-only kernel at every batch size
            # (which, without per-token activation quantization, is the more exact of the two).
            y = torch.ops.aten._weight_int8pack_mm(_aligned(x2.to(torch.bfloat16)), self.weight, self._scale_bf16)
        else:
            xf = x2.float()
            x_scale = row_scale(xf, INT8_MAX)
            xq = torch.round(xf / x_scale).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
            y = torch._int_mm(xq, self.weight.T).float().mul_(x_scale).mul_(self.scale)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """`t` contiguous at a 64-byte boundary (a copy only if it is not).

    `_weight_int8pack_mm` segfaults when its activations are not 32-byte aligned or its
    weight not 16-byte aligned, and tensors from `safetensors.torch.load_file` often are not.
    """
    t = t.contiguous()
    if torch.compiler.is_compiling():
        # An export trace (compiled decode) has no data pointers to check; the compiled package's buffers come
        # from torch's CPU allocator, which aligns every allocation to 64 bytes.
        return t
    return t if t.data_ptr() % CPU_ALIGNMENT_BYTES == 0 else t.clone()


# -- int4 -------------------------------------------------------------------------------


class Int4Linear(QuantLinear):
    """Group-wise int4 in the packed-kernel form w = (q - 8) * scale + zero.

    State (portable, the same on every machine): `qweight` uint8 (N16, Kg / 2), two codes per
    byte along K (even column low), and `scales_and_zeros` (Kg / g, N16, 2) in the activation
    dtype. N16 is N rounded up to 16 and Kg is K rounded up to the group size; padded rows
    have scale = zero = 0 and padded columns meet zero-padded activations.

    On CPU and on CUDA (capability >= 8.0) `post_load` repacks `qweight` into that device's
    packed-kernel layout (same byte count); saving the state dict unpacks it again.
    """

    fmt = "int4"

    def __init__(
        self,
        qweight: torch.Tensor,
        scales_and_zeros: torch.Tensor,
        in_features: int,
        out_features: int,
        group_size: int,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, check_group_size(group_size)
        n16, kg = int4_padded_shape(in_features, out_features, group_size)
        if qweight.shape != (n16, kg // 2) or scales_and_zeros.shape != (kg // group_size, n16, 2):
            raise ValueError(
                f"int4 buffers {tuple(qweight.shape)}/{tuple(scales_and_zeros.shape)} do not fit "
                f"{out_features}x{in_features} at group {group_size}"
            )
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self._packed_for: str | None = None  # "cpu" / "cuda" once repacked for that device's kernel
        self._matmul: Any = None  # the packed kernel: torch's, or on CPU preflight::int4_mm (native.py)
        self.kernel = "int4: not prepared (call post_load)"

    @classmethod
    def empty(cls, in_features: int, out_features: int, *, device: Any = "meta", **fmt_options: Any) -> Int4Linear:
        group_size = fmt_options.pop("group_size", 32)
        dtype = fmt_options.pop("dtype", torch.bfloat16)
        _no_options("int4", fmt_options)
        n16, kg = int4_padded_shape(in_features, out_features, group_size)
        return cls(
            torch.empty(n16, kg // 2, dtype=torch.uint8, device=device),
            torch.empty(kg // group_size, n16, 2, dtype=dtype, device=device),
            in_features,
            out_features,
            group_size,
        )

    @classmethod
    def from_codes(cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> Int4Linear:
        """Build (and prepare) from `quantize_int4`-form codes (N, K), scale and zero (N, ceil(K / g))."""
        qweight, scales_and_zeros = int4_buffers(q, scale, zero, group_size)
        module = cls(qweight, scales_and_zeros, q.shape[1], q.shape[0], group_size)
        module.post_load()
        return module

    def codes(self) -> torch.Tensor:
        """The (N16, Kg) codes in 0..15, whatever layout `qweight` is in now."""
        if self._packed_for is None:
            return unpack_int4(self.qweight, self.qweight.shape[1] * 2)
        return self._read_back_codes(self.qweight, self._packed_for)

    def _read_back_codes(self, packed: torch.Tensor, device_type: str) -> torch.Tensor:
        """Let the kernel itself read its private layout back: identity activations, scale 1, zero 8."""
        kg = self.scales_and_zeros.shape[0] * self.group_size
        n16 = self.scales_and_zeros.shape[1]
        eye = torch.eye(kg, dtype=torch.bfloat16, device=packed.device)
        ident = torch.tensor([1.0, 8.0], dtype=torch.bfloat16, device=packed.device)
        ident = ident.expand(kg // self.group_size, n16, 2).contiguous()
        codes_t = _int4_kernel(device_type)(eye, packed, self.group_size, ident)
        return codes_t.T.to(torch.uint8)

    def dequantized(self) -> torch.Tensor:
        """The float32 (N, K) weight this module multiplies by (after the buffer dtype's rounding)."""
        sz = self.scales_and_zeros.transpose(0, 1).float()  # (N16, G, 2)
        w = dequantize_int4(self.codes(), sz[..., 0], sz[..., 1], self.group_size)
        return w[: self.out_features, : self.in_features]

    def post_load(self) -> None:
        reason = self._pack() if self._packed_for is None else None
        if reason is not None:
            self.kernel = f"int4: dequantize-on-the-fly ({reason})"
            return
        act = str(self.scales_and_zeros.dtype).removeprefix("torch.")
        name = "_weight_int4pack_mm_for_cpu" if self._packed_for == "cpu" else "_weight_int4pack_mm (tinygemm)"
        self._matmul = _int4_kernel(self._packed_for)
        native = ""
        if self._packed_for == "cpu":
            why_not = self._native_unfit() or int4_unavailable_reason()
            if why_not is None:
                self._matmul = int4_op()
                name = f"preflight::int4_mm (1-16 rows: native AVX-512 VNNI; more rows: {name})"
            else:
                native = f"; native kernel off: {why_not}"
        self.kernel = f"int4: {name} (group {self.group_size}, {act} activations){native}"

    def _native_unfit(self) -> str | None:
        """Why these buffers do not fit the native few-row kernel (int4_kernel.cpp), or None."""
        n16 = self.scales_and_zeros.shape[1]
        if n16 % INT4_NATIVE_N_MULTIPLE:
            return f"{n16} outputs are not a multiple of {INT4_NATIVE_N_MULTIPLE}"
        if self.group_size % Q4_1_BLOCK:
            return f"group {self.group_size} is not a multiple of {Q4_1_BLOCK}"
        if self.scales_and_zeros.dtype != torch.bfloat16:
            return f"its scales are {self.scales_and_zeros.dtype}, not bfloat16"
        return None

    def _pack(self) -> str | None:
        """Repack `qweight` for this device's packed kernel; None on success, else why not."""
        device = self.qweight.device
        if device.type == "cpu":
            codes = unpack_int4(self.qweight, self.qweight.shape[1] * 2).to(torch.int32)
            self.qweight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
            self._packed_for = "cpu"
            return None
        if device.type == "cuda":
            return self._pack_for_cuda()
        return f"no packed int4 kernel wired for {device.type}"

    def _pack_for_cuda(self) -> str | None:
        """Repack `qweight` for CUDA's tinygemm kernel; None on success, else why it cannot run.

        The packer takes (N, Kg / 2) bytes whose nibble order PyTorch does not document, so
        both orders are tried and the one the kernel reads back as the original codes is
        kept: a layout mistake falls back to dequantizing, never to wrong numbers.
        """
        cap = torch.cuda.get_device_capability(self.qweight.device)
        if cap < INT4_CUDA_MIN_CAPABILITY:
            return f"GPU compute capability {cap[0]}.{cap[1]} < 8.0 for the tinygemm kernel"
        if self.scales_and_zeros.dtype != torch.bfloat16:
            return f"tinygemm needs bfloat16 scales, these are {self.scales_and_zeros.dtype}"
        kg = self.qweight.shape[1] * 2
        tiles = next((t for t in INT4_CUDA_INNER_K_TILES if kg % (16 * t) == 0), None)
        if tiles is None:
            return f"K={kg} is not a multiple of 32"
        codes = unpack_int4(self.qweight, kg)
        for high_first in (True, False):
            lo, hi = (codes[:, 1::2], codes[:, 0::2]) if high_first else (codes[:, 0::2], codes[:, 1::2])
            packed = torch.ops.aten._convert_weight_to_int4pack((hi << 4) | lo, tiles)
            if torch.equal(self._read_back_codes(packed, "cuda"), codes):
                self.qweight = packed
                self._packed_for = "cuda"
                return None
        return "the tinygemm packer's layout did not read back the codes"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != self.scales_and_zeros.dtype:
            x2 = x2.to(self.scales_and_zeros.dtype)
        if self._packed_for is not None:
            pad_k = self.scales_and_zeros.shape[0] * self.group_size - self.in_features
            x2 = F.pad(x2, (0, pad_k)) if pad_k else x2.contiguous()
            y = self._matmul(x2, self.qweight, self.group_size, self.scales_and_zeros)
            if y.shape[1] != self.out_features:
                y = y[:, : self.out_features]
        elif self.qweight.device.type == "cpu":
            raise RuntimeError("Int4Linear.post_load() was not called after loading the weights")
        else:
            y = x2 @ self.dequantized().to(x2.dtype).T
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._packed_for is not None:
            destination[prefix + "qweight"] = pack_int4(self.codes())

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._packed_for = None  # freshly loaded buffers are in the portable layout


def _int4_kernel(device_type: str) -> Any:
    """PyTorch's packed int4 matmul for a device: (x, packed, group_size, scales_and_zeros) -> y."""
    if device_type == "cpu":
        return torch.ops.aten._weight_int4pack_mm_for_cpu
    return torch.ops.aten._weight_int4pack_mm


# -- fp8 --------------------------------------------------------------------------------


def fp8_matmul_unavailable_reason(device: torch.device) -> str | None:
    """None when `device` has FP8 matmul units, else why not (shown in the kernel string)."""
    if device.type != "cuda":
        return f"no FP8 matmul units on {device.type}"
    cap = torch.cuda.get_device_capability(device)
    if cap < FP8_MIN_CAPABILITY:
        return f"GPU compute capability {cap[0]}.{cap[1]} < 8.9"
    return None


class Fp8Linear(QuantLinear):
    """float8_e4m3fn weight (N, K) with per-row f32 `scale` (N,).

    With FP8 units (CUDA, capability >= 8.9) it runs `torch._scaled_mm` with rowwise scales,
    quantizing activations per token; elsewhere it dequantizes on the fly. `fp8_matmul=True`
    forces `_scaled_mm` wherever torch runs it (tests use this on CPU).
    """

    fmt = "fp8"
    fp8_dtype = torch.float8_e4m3fn

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, *, fp8_matmul: bool | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.fp8_matmul = fp8_matmul
        self._ready = False
        self._use_scaled_mm = False
        self.kernel = f"{self.fmt}: not prepared (call post_load)"

    @classmethod
    def empty(cls, in_features: int, out_features: int, *, device: Any = "meta", **fmt_options: Any) -> Fp8Linear:
        fp8_matmul = fmt_options.pop("fp8_matmul", None)
        _no_options(cls.fmt, fmt_options)
        return cls(
            torch.empty(out_features, in_features, dtype=cls.fp8_dtype, device=device),
            torch.empty(out_features, dtype=torch.float32, device=device),
            fp8_matmul=fp8_matmul,
        )

    def post_load(self) -> None:
        reason = fp8_matmul_unavailable_reason(self.weight.device)
        if reason is None and (self.in_features % FP8_MM_MULTIPLE or self.out_features % FP8_MM_MULTIPLE):
            reason = f"shape {self.out_features}x{self.in_features} is not a multiple of 16"
        if reason is None and self.fp8_dtype != torch.float8_e4m3fn:
            reason = "e5m2 weights run dequantized (the scaled-matmul path quantizes activations to e4m3 only)"
            self.fp8_matmul = None
        self._use_scaled_mm = self.fp8_matmul if self.fp8_matmul is not None else reason is None
        self._ready = True
        if self._use_scaled_mm:
            self.kernel = f"{self.fmt}: torch._scaled_mm (rowwise scales, activations quantized per token)"
        else:
            self.kernel = f"{self.fmt}: dequantize-on-the-fly ({reason or 'FP8 matmul disabled'})"

    def dequantized(self) -> torch.Tensor:
        return fp8_to_float(self.weight) * self.scale[:, None]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return fp8_to_float(self.weight[ids]) * self.scale[ids].unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._ready:
            raise RuntimeError("Fp8Linear.post_load() was not called after loading the weights")
        x2 = x.reshape(-1, self.in_features)
        if self._use_scaled_mm:
            xf = x2.float()
            x_scale = row_scale(xf, FP8_MAX)
            xq = (xf / x_scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            w_scale = self.scale.reshape(1, -1)
            y = torch._scaled_mm(xq, self.weight.T, scale_a=x_scale, scale_b=w_scale, out_dtype=torch.bfloat16)
        elif self.weight.device.type == "cpu":
            # A 256-entry table beats the fp8 cast ~3x, and the f32 GEMM beats bf16 (table in functions.py).
            # Row blocks keep each dequantized fp32 slice cache-sized instead of one 113 MB
            # temporary for the 49152-row head.
            xf = x2.float()
            y = xf.new_empty(xf.shape[0], self.out_features)
            for r in range(0, self.out_features, FP8_CPU_ROW_BLOCK):
                block = slice(r, r + FP8_CPU_ROW_BLOCK)
                torch.matmul(xf, fp8_to_float(self.weight[block]).T, out=y[:, block])
            y.mul_(self.scale)
        else:
            y = (x2 @ self.weight.to(x.dtype).T) * self.scale.to(x.dtype)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class Fp8E5M2Linear(Fp8Linear):
    """The fp8 module with a float8_e5m2 weight (format `fp8-e5m2`): two mantissa bits, five exponent bits.

    Same buffers and kernels as `Fp8Linear`, except that it always dequantizes: the scaled-matmul
    path quantizes activations to e4m3, and this variant exists to compare the weight dtype alone.
    """

    fmt = "fp8-e5m2"
    fp8_dtype = torch.float8_e5m2


# -- Q8_0 -------------------------------------------------------------------------------


class Q80Linear(QuantLinear):
    """llama.cpp's Q8_0 as the file stores it: int8 codes and one fp16 scale per 32-wide block.

    State: `weight` int8 (G, N, 32) and `scale` float32 (G, N), G = K / 32, both group-major
    (block g of every row side by side, so each block's matmul reads contiguous memory). The
    scales are the file's fp16 values widened to float32, which is exact; the dequantized
    weight is therefore ggml's, bit for bit. `dequantized()` and `rows()` give it back in
    (N, K) form.

    Kernels, on any device:
    - below 64 rows (decode, batched decode, draft verification), where the native kernel builds
      (engine/quant/native.py: AVX-512 VNNI and a C++ compiler): `post_load` turns the buffers
      output-major, (N, G, 32) and (N, G), so that the table is one sequential stream, and the
      kernel reads it at the memory's pace with activations quantized to int16 per block. The
      state dict is group-major either way (the weight cache and every saved file stay portable).
    - below 64 rows otherwise: activations are quantized to int8 per 32-wide block, as llama.cpp
      does for its own Q8_0 dot product, plus a second int8 term for the remainder, and each
      block is one `torch._int_mm` (exact int32 sums); the block sums are then scaled by
      activation x weight block scales in float32 and added. The weight is never widened. An
      export trace (compiled decode) of a native module takes this path too, over views.
    - from 64 rows (prefill, evaluation): float32 row blocks of the exact weight and float32
      activations, so long inputs cost one GEMM rather than 18 narrow ones.
    The int8 path needs CPU `torch._int_mm`; on other devices every M takes the float32 path.
    """

    fmt = "q8_0"

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        groups, self.out_features, block = weight.shape
        if block != Q8_0_BLOCK or weight.dtype != torch.int8 or scale.shape != (groups, self.out_features):
            raise ValueError(
                f"Q8_0 buffers {tuple(weight.shape)} {weight.dtype} / {tuple(scale.shape)} are not "
                f"int8 (G, N, {Q8_0_BLOCK}) with scales (G, N)"
            )
        self.in_features = groups * Q8_0_BLOCK
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self._int_mm = False
        self._native = False  # the native kernel runs, and the buffers are output-major
        self.kernel = "q8_0: not prepared (call post_load)"

    @classmethod
    def empty(cls, in_features: int, out_features: int, *, device: Any = "meta", **fmt_options: Any) -> Q80Linear:
        _no_options("q8_0", fmt_options)
        if in_features % Q8_0_BLOCK:
            raise ValueError(f"Q8_0 needs the input size to be a multiple of {Q8_0_BLOCK}, got {in_features}")
        groups = in_features // Q8_0_BLOCK
        return cls(
            torch.empty(groups, out_features, Q8_0_BLOCK, dtype=torch.int8, device=device),
            torch.empty(groups, out_features, dtype=torch.float32, device=device),
        )

    @classmethod
    def from_blocks(cls, blocks: Q80Blocks, device: Any = "cpu") -> Q80Linear:
        """Adopt Q8_0 blocks (q int8 (N, K), scale fp16 (N, K / 32)) and prepare the module."""
        check_q8_0(blocks)
        n, k = blocks.q.shape
        weight = blocks.q.reshape(n, k // Q8_0_BLOCK, Q8_0_BLOCK).transpose(0, 1).contiguous()
        module = cls(weight.to(device), blocks.scale.float().T.contiguous().to(device))
        module.post_load()
        return module

    def blocks(self) -> Q80Blocks:
        """The Q8_0 blocks in the file's (N, K) / (N, K / 32) form."""
        weight, scale = self._group_major()
        q = weight.transpose(0, 1).reshape(self.out_features, self.in_features)
        return Q80Blocks(q=q, scale=scale.T.to(torch.float16))

    def _group_major(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`weight` (G, N, 32) and `scale` (G, N), as views when the buffers are output-major."""
        if self._native:
            return self.weight.transpose(0, 1), self.scale.T
        return self.weight, self.scale

    def post_load(self) -> None:
        self._int_mm = self.weight.device.type == "cpu"
        if not self._int_mm:
            self.kernel = "q8_0: float32 GEMM of the exact weight, dequantized in row blocks"
            return
        why_not = q8_0_unavailable_reason()
        if why_not is None and not self._native:
            self.weight = self.weight.transpose(0, 1).contiguous()  # (N, G, 32): one stream for the kernel
            self.scale = self.scale.T.contiguous()
            self._native = True
        if not self._native:
            self.weight = _aligned(self.weight)
        small = (
            "the native AVX-512 VNNI kernel (activations as int16 per block, output-major blocks)"
            if self._native
            else "int8 _int_mm per 32-wide block (activations as two int8 terms per block)"
        )
        off = "" if why_not is None else f"; native kernel off: {why_not}"
        self.kernel = (
            f"q8_0: {small} below {Q8_0_INT_MM_MAX_ROWS} rows, float32 GEMM of the exact weight from there{off}"
        )

    def dequantized(self) -> torch.Tensor:
        return self.rows(torch.arange(self.out_features, device=self.weight.device))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        if self._native:
            picked = self.weight[ids].float() * self.scale[ids].unsqueeze(-1)  # (*ids, G, 32)
            return picked.reshape(*ids.shape, self.in_features)
        picked = self.weight[:, ids].float() * self.scale[:, ids].unsqueeze(-1)  # (G, *ids, 32)
        return picked.movedim(0, -2).reshape(*ids.shape, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        y = None
        if self._int_mm and x2.shape[0] < Q8_0_INT_MM_MAX_ROWS:
            if self._native and not torch.compiler.is_compiling():
                library = q8_0_library()
                y = None if library is None else q8_0_matmul(library, self.weight, self.scale, x2.float())
            if y is None:  # no native kernel, an export trace, or activations with an inf or NaN
                y = self._block_int8(x2)
        else:
            y = self._float_rows(x2)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        weight, scale = self._group_major()
        destination[prefix + "weight"], destination[prefix + "scale"] = weight.contiguous(), scale.contiguous()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._native = False  # freshly loaded buffers are group-major

    def _block_int8(self, x2: torch.Tensor) -> torch.Tensor:
        """Per 32-wide block g: exact int32 dot products, scaled by activation x weight block scales, summed.

        Activations go in as two int8 terms per block, x ~= q1 * d1 + q2 * d2, the second
        quantizing what the first left over (|error| <= max|x| / 64516 per block, finer than
        bf16): one int8 term cost 4x the head's KL against fp32 on the evaluation text. The
        second term is a second row of the same `_int_mm`, which reads the weight once either way.

        Each block's products are scaled and added into the output at once, never all blocks
        kept (that buffer is G x 2M x N int32, 113 MB at 16 rows, and made a batched step 10x
        slower than the old per-row head). Above Q8_0_TILE_MIN_ROWS rows the output is also
        done in column tiles, so a block's products stay in cache while they are scaled.
        """
        m = x2.shape[0]
        xf = x2.float()
        q1, d1 = quantize_int8_blocks(xf)
        rest = xf - (q1.float().view(m, -1, Q8_0_BLOCK) * d1[..., None]).view(m, -1)
        q2, d2 = quantize_int8_blocks(rest)
        xq = torch.cat([q1, q2])  # (2M, K): the first terms, then the remainders
        dq = torch.cat([d1, d2])  # (2M, G): their block scales
        blocks, block_scales = self._group_major()
        groups = blocks.shape[0]
        pieces = [xq[:, g * Q8_0_BLOCK : (g + 1) * Q8_0_BLOCK] for g in range(groups)]
        x_scales = [dq[:, g : g + 1] for g in range(groups)]
        tile = self.out_features if m <= Q8_0_TILE_MIN_ROWS else Q8_0_COLUMN_TILE
        out = xf.new_zeros(2 * m, self.out_features)
        sums = torch.empty(2 * m, tile, dtype=torch.int32, device=x2.device)
        scaled = xf.new_empty(2 * m, tile)
        for c in range(0, self.out_features, tile):
            width = min(tile, self.out_features - c)
            acc, weight, w_scale = out[:, c : c + width], blocks[:, c : c + width], block_scales[:, c : c + width]
            if width < tile:  # the last, narrower tile: _int_mm writes only whole contiguous outputs
                sums, scaled = sums.new_empty(2 * m, width), scaled.new_empty(2 * m, width)
            p, pf = sums, scaled
            for g in range(groups):
                torch._int_mm(pieces[g], weight[g].T, out=p)
                torch.mul(p, x_scales[g], out=pf)
                acc.addcmul_(pf, w_scale[g])
        return out[:m] + out[m:]

    def _float_rows(self, x2: torch.Tensor) -> torch.Tensor:
        """x @ W.T in float32 with W dequantized a row block at a time (never the whole 113 MB table)."""
        xf = x2.float()
        y = xf.new_empty(xf.shape[0], self.out_features)
        for r in range(0, self.out_features, Q8_0_ROW_BLOCK):
            ids = torch.arange(r, min(r + Q8_0_ROW_BLOCK, self.out_features), device=xf.device)
            torch.matmul(xf, self.rows(ids).T, out=y[:, r : r + ids.numel()])
        return y


# -- construction -----------------------------------------------------------------------


def _no_options(fmt: str, options: dict[str, Any]) -> None:
    if options:
        raise ValueError(f"unknown {fmt} option(s): {', '.join(sorted(options))}")


def make_linear(
    weight: torch.Tensor | Q41Blocks | Q80Blocks, fmt: str, *, device: Any = "cpu", group_size: int = 32
) -> QuantLinear:
    """A ready-to-run (post_load done) linear module holding `weight` in `fmt`.

    `weight` is a float (N, K) tensor, Q4_1 blocks or Q8_0 blocks. int4 from Q4_1 at group 32
    and int8 from Q8_0 keep the file's codes and block scales (lossless); any other source or
    group size re-quantizes.
    """
    check_format(fmt)
    if fmt == "int8" and isinstance(weight, Q80Blocks):
        return Q80Linear.from_blocks(weight, device=device)
    if fmt == "int4":
        check_group_size(group_size)
        if isinstance(weight, Q41Blocks) and group_size == Q4_1_BLOCK:
            q, scale, zero = int4_from_q4_1(weight)
        else:
            q, scale, zero = quantize_int4(as_float(weight).to(device), group_size)
        return Int4Linear.from_codes(q.to(device), scale.to(device), zero.to(device), group_size)
    w = as_float(weight).to(device)
    if fmt in ("fp32", "bf16"):
        dense = empty_linear(fmt, w.shape[1], w.shape[0])
        dense.weight = nn.Parameter(w.to(dense.weight.dtype).contiguous(), requires_grad=False)
        return dense
    if fmt == "int8":
        module: QuantLinear = Int8Linear(*quantize_int8(w))
    else:
        cls = Fp8E5M2Linear if fmt == Fp8E5M2Linear.fmt else Fp8Linear
        module = cls(*quantize_fp8(w, dtype=cls.fp8_dtype))
    module.post_load()
    return module


def as_float(weight: torch.Tensor | Q41Blocks | Q80Blocks) -> torch.Tensor:
    """A weight source as float32 (N, K): block formats dequantized exactly as ggml does."""
    if isinstance(weight, Q41Blocks):
        return dequantize_q4_1(weight)
    return dequantize_q8_0(weight) if isinstance(weight, Q80Blocks) else weight


def empty_linear(
    fmt: str, in_features: int, out_features: int, *, device: Any = "meta", group_size: int = 32
) -> QuantLinear:
    """An unloaded module with the right buffer shapes and dtypes for `load_state_dict(assign=True)`.

    Besides the weight formats, `fmt` may be "q8_0": the storage int8 uses for Q8_0 source
    tensors and int8 / int4 use for the tied embedding table.
    """
    if fmt == Q80Linear.fmt:
        return Q80Linear.empty(in_features, out_features, device=device)
    check_format(fmt)
    if fmt in ("fp32", "bf16"):
        dtype = torch.float32 if fmt == "fp32" else torch.bfloat16
        return DenseLinear.empty(in_features, out_features, device=device, dtype=dtype)
    if fmt == "int4":
        return Int4Linear.empty(in_features, out_features, device=device, group_size=group_size)
    kinds: dict[str, type[QuantLinear]] = {"int8": Int8Linear, "fp8": Fp8Linear, "fp8-e5m2": Fp8E5M2Linear}
    return kinds[fmt].empty(in_features, out_features, device=device)


def module_weight_bytes(module: nn.Module) -> int:
    """Resident bytes of every weight in `module`: quant modules plus plain parameters and buffers.

    Tensors that share storage (a tied embedding and head) count once.
    """
    tensors: list[torch.Tensor] = []
    for m in module.modules():
        if isinstance(m, QuantLinear):
            tensors += m.resident_tensors()
        else:
            tensors += [*m.parameters(recurse=False), *m.buffers(recurse=False)]
    return sum(_unique_bytes(tensors).values())
