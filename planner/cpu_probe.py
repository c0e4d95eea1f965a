"""Measure this CPU for the roofline: memory bandwidth, matmul FLOP/s, per-op dispatch time.

Nothing about the CPU is hard-coded. `measure()` runs, once per process and thread
count (a few seconds on 2 cores), with torch:
- bandwidth: STREAM-like copy (a = b, 2 x bytes moved) and triad (a = b + s*c, 3 x bytes)
  at two working-set sizes, 3 x 8 MiB and 3 x 128 MiB float32 arrays; the best of copy and
  triad at each size gives a curve, read at the bytes a decode step touches (a server CPU's
  large last-level cache serves a small model faster than DRAM serves a big one);
- FLOP/s: a timed 1024^3 fp32 and bf16 matmul (2 x n^3 FLOPs);
- dispatch: the time of one small ATen op issued from Python (reshape, slice, add, mul,
  a 64x64 linear, rms_norm, to), which bounds a pure-PyTorch engine at small model sizes;
- weight-only kernels: weight-rows/s through the kernels the bundled engine runs for int4
  (group 32: its native few-row operator where that builds, engine/quant/native.py, else torch's
  packed kernel), its Q8_0 table / head (the engine's own Q80Linear, native or torch's blocks),
  torch's int8 CPU kernel, the engine's fp8 dequantize-on-the-fly path and torch's dense fp32 and
  bf16 linear (the fp32 and bf16 formats), at 1 row (decode) and 64 rows (prefill), over ~35-220 MiB of
  weights. Unpacking, or a GEMV that does not stream at the copy bandwidth, can bound these on few cores.
  All but fp8 are also timed at 2, 4 and 16 rows (`kernel_curve`): a batched
  decode step runs them at one row per sequence, and their time is far from linear in rows (the
  engine's native int4 operator serves 2 rows for ~1.2x one row's time, its Q8_0 head 2 rows for
  one's), so the planner reads a batch's kernel time off this curve.
Each figure is the median of several repeats (after a warm-up), so other load on the
machine slows it the way it slows a run of the engine being predicted.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

ARRAY_SIZES = (8 * 2**20, 128 * 2**20)
MATMUL_N = 1024
REPEATS = 5
DISPATCH_LOOPS = 50
DISPATCH_OPS_PER_LOOP = 8


@dataclass(frozen=True, slots=True)
class CpuMeasurement:
    """What this CPU achieved just now; rates in bytes/s and FLOP/s."""

    threads: int
    copy_bytes_s: float  # at the largest working set
    triad_bytes_s: float
    bandwidth_curve: tuple[tuple[int, float], ...]  # (working-set bytes, best bytes/s), ascending
    fp32_flops: float
    bf16_flops: float
    op_overhead_s: float
    int4_gemv_weights_s: float | None = None  # weight-rows/s at 1 row
    int8_gemv_weights_s: float | None = None
    int4_gemm_weights_s: float | None = None  # weight-rows/s at GEMM_ROWS rows
    int8_gemm_weights_s: float | None = None
    fp8_gemv_weights_s: float | None = None  # dequantize-on-the-fly: no FP8 matmul units on a CPU
    fp8_gemm_weights_s: float | None = None
    q8_0_gemv_weights_s: float | None = None  # the int4 / int8 formats' token table and head
    q8_0_gemm_weights_s: float | None = None
    fp32_gemv_weights_s: float | None = None  # the fp32 and bf16 formats' dense linear (torch's GEMV / GEMM)
    fp32_gemm_weights_s: float | None = None
    bf16_gemv_weights_s: float | None = None
    bf16_gemm_weights_s: float | None = None
    kernel_curve: tuple[tuple[str, int, float], ...] = ()  # (kernel, rows, weight-rows/s) between 1 and GEMM_ROWS
    matmul_n: int = MATMUL_N
    repeats: int = REPEATS

    @property
    def bandwidth_bytes_s(self) -> float:
        """At the largest working set (DRAM on most machines)."""
        return max(self.copy_bytes_s, self.triad_bytes_s)

    @property
    def kernel_weights_s(self) -> dict[str, float]:
        rates = {
            "int4": self.int4_gemv_weights_s,
            "int8": self.int8_gemv_weights_s,
            f"int4@{GEMM_ROWS}": self.int4_gemm_weights_s,
            f"int8@{GEMM_ROWS}": self.int8_gemm_weights_s,
            "fp8": self.fp8_gemv_weights_s,
            f"fp8@{GEMM_ROWS}": self.fp8_gemm_weights_s,
            "q8_0": self.q8_0_gemv_weights_s,
            f"q8_0@{GEMM_ROWS}": self.q8_0_gemm_weights_s,
            "fp32": self.fp32_gemv_weights_s,
            f"fp32@{GEMM_ROWS}": self.fp32_gemm_weights_s,
            "bf16": self.bf16_gemv_weights_s,
            f"bf16@{GEMM_ROWS}": self.bf16_gemm_weights_s,
        } | {f"{kernel}@{rows}": rate for kernel, rows, rate in self.kernel_curve}
        return {k: v for k, v in rates.items() if v}

    def bandwidth_at(self, working_set_bytes: float) -> float:
        """Bandwidth for a working set, interpolated in log size between the measured points."""
        from planner.roofline import interpolate_bandwidth

        return interpolate_bandwidth(self.bandwidth_curve, working_set_bytes)

    def bandwidth_note(self) -> str | None:
        """What the two working sets mean, and what it says when the small one reads lower.

        The small set fits in the last-level cache, so on a quiet machine it is the faster one
        (150 against 42 GB/s on the 2-core EPYC this was written on); decode streams the weights
        from main memory, which is the large set's figure, the one the planner uses. Its copies
        take well under a millisecond, so other work sharing the CPU hurts it most."""
        if len(self.bandwidth_curve) < 2:
            return None
        (small_ws, small), (large_ws, large) = self.bandwidth_curve[0], self.bandwidth_curve[-1]
        sizes = f"{small_ws // 2**20} MiB fits in the CPU's cache, {large_ws // 2**20} MiB does not"
        if small < large:
            return (
                f"The {small_ws // 2**20} MiB figure ({small / 1e9:.1f} GB/s) read lower than main memory's "
                f"({large / 1e9:.1f} GB/s) although {sizes}: other work shared the CPU while its sub-millisecond "
                "copies were timed. Measure again on a quiet machine; the planner uses the main-memory figure."
            )
        return (
            f"{sizes}: {small / 1e9:.1f} GB/s is cache bandwidth, {large / 1e9:.1f} GB/s main memory's, the "
            "one decode depends on (it streams every weight once per token) and the planner uses."
        )

    def to_dict(self) -> dict:
        return asdict(self) | {"bandwidth_bytes_s": self.bandwidth_bytes_s}

    def describe(self) -> str:
        return (
            f"measured with torch on {self.threads} thread(s): bandwidth "
            + ", ".join(f"{b / 1e9:.1f} GB/s at {ws // 2**20} MiB" for ws, b in self.bandwidth_curve)
            + " (best of copy/triad), "
            f"fp32 matmul {self.fp32_flops / 1e9:.0f} GFLOP/s, bf16 {self.bf16_flops / 1e9:.0f} GFLOP/s "
            f"(n={self.matmul_n}), {self.op_overhead_s * 1e6:.1f} us per dispatched op, "
            + ", ".join(f"{k} {v / 1e9:.1f} G weight-rows/s" for k, v in self.kernel_weights_s.items())
            + f"; median of {self.repeats}"
        )


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: page faults, thread-pool start
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _bandwidth(array_bytes: int, repeats: int) -> tuple[float, float]:
    """(copy, triad) bytes/s over three float32 arrays of `array_bytes` each."""
    n = array_bytes // 4
    a, b, c = torch.empty(n), torch.rand(n), torch.rand(n)
    copy_s = _median_s(lambda: a.copy_(b), repeats)
    triad_s = _median_s(lambda: torch.add(b, c, alpha=3.0, out=a), repeats)
    return 2 * array_bytes / copy_s, 3 * array_bytes / triad_s


def _matmul_flops(dtype: torch.dtype, repeats: int) -> float:
    x = torch.rand(MATMUL_N, MATMUL_N).to(dtype)
    y = torch.rand(MATMUL_N, MATMUL_N).to(dtype)
    return 2 * MATMUL_N**3 / _median_s(lambda: x @ y, repeats)


def _dispatch_s(repeats: int) -> float:
    x, w, v = torch.rand(1, 1, 576), torch.rand(64, 64), torch.rand(1, 64)
    norm = torch.ones(576)

    def ops() -> None:
        with torch.inference_mode():
            for _ in range(DISPATCH_LOOPS):
                a = x.reshape(1, 9, 64).transpose(0, 1)
                _ = a[:, :, :32]
                d = (x + x) * 0.5
                _ = F.linear(v, w)
                _ = F.rms_norm(d, (576,), norm, 1e-5).to(torch.float32)

    return _median_s(ops, repeats) / (DISPATCH_LOOPS * DISPATCH_OPS_PER_LOOP)


GEMV_N, GEMV_K, GEMV_MATS = 12288, 576, 8  # 57M weights: ~35 MiB as int4, ~54 MiB as int8
GEMM_ROWS = 64  # a prefill-sized activation block
CURVE_ROWS = (2, 4, 16)  # batched decode: one row per sequence
CURVE_KERNELS = ("int4", "q8_0", "int8", "fp32", "bf16")  # fp8's time is its dequantization, the same at any rows


def _int4_mats() -> tuple[list, Callable]:
    from engine.quant.native import int4_op

    mats = []
    for _ in range(GEMV_MATS):
        q = torch.randint(0, 16, (GEMV_N, GEMV_K), dtype=torch.int32)
        mats.append(
            (torch._convert_weight_to_int4pack_for_cpu(q, 1), torch.rand(GEMV_K // 32, GEMV_N, 2).to(torch.bfloat16))
        )
    kernel = int4_op() or torch._weight_int4pack_mm_for_cpu  # the bundled engine's choice, same arguments
    return mats, lambda x, m: kernel(x, m[0], 32, m[1])


def _q8_0_mats() -> tuple[list, Callable]:
    """The bundled engine's Q8_0 module itself (it picks its kernel and layout in post_load)."""
    from engine.quant.linear import Q80Linear

    mats = []
    for _ in range(GEMV_MATS):
        blocks = torch.randint(-127, 128, (GEMV_K // 32, GEMV_N, 32), dtype=torch.int8)
        module = Q80Linear(blocks, torch.rand(GEMV_K // 32, GEMV_N))
        module.post_load()
        mats.append(module)
    return mats, lambda x, m: m(x)


def _int8_mats() -> tuple[list, Callable]:
    scales = torch.rand(GEMV_N).to(torch.bfloat16)
    mats = [torch.randint(-127, 128, (GEMV_N, GEMV_K), dtype=torch.int8) for _ in range(GEMV_MATS)]
    return mats, lambda x, m: torch._weight_int8pack_mm(x, m, scales)


def _fp8_mats() -> tuple[list, Callable]:
    """The bundled engine's CPU fp8 path: a 256-entry table turns the codes into fp32 on every
    call (no FP8 units on a CPU), then an fp32 matmul and the row scale."""
    table = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    table = torch.nan_to_num(table)
    scale = torch.rand(GEMV_N)
    mats = [torch.randint(0, 256, (GEMV_N, GEMV_K), dtype=torch.int32).to(torch.uint8) for _ in range(GEMV_MATS)]

    def call(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        w = table.index_select(0, m.reshape(-1).to(torch.int32)).view(m.shape)
        return (x.float() @ w.T).mul_(scale)

    return mats, call


def _dense_mats(dtype: torch.dtype) -> Callable[[], tuple[list, Callable]]:
    """The fp32 / bf16 formats' linear layers: torch's own dense kernel with activations in the weights'
    dtype. At one row it is a GEMV that, on few cores, streams the weights well below the copy bandwidth
    (fp32 at 15.7 against 42 GB/s on 2 EPYC cores, 2026-12-08), so the roofline's memory bound alone
    overstates fp32 decode about twice."""

    def make() -> tuple[list, Callable]:
        mats = [torch.rand(GEMV_N, GEMV_K).to(dtype) for _ in range(GEMV_MATS)]
        return mats, lambda x, m: F.linear(x.to(dtype), m)

    return make


def _kernel_rates(
    make: Callable[[], tuple[list, Callable]], repeats: int, rows: tuple[int, ...] = (1, GEMM_ROWS)
) -> dict[int, float]:
    """Weight-rows/s of a weight-only kernel at each row count (1 row: decode; GEMM_ROWS: prefill);
    empty when this torch build or CPU lacks it."""
    try:
        mats, call = make()
        rates = {}
        for n in rows:
            x = torch.rand(n, GEMV_K).to(torch.bfloat16)

            def run(x: torch.Tensor = x) -> None:
                for m in mats:
                    call(x, m)

            rates[n] = n * GEMV_MATS * GEMV_N * GEMV_K / _median_s(run, repeats)
        return rates
    except (AttributeError, RuntimeError):  # no such kernel in this torch build or on this CPU
        return {}


KERNEL_MAKERS: dict[str, Callable[[], tuple[list, Callable]]] = {
    "int4": _int4_mats,
    "int8": _int8_mats,
    "fp8": _fp8_mats,
    "q8_0": _q8_0_mats,
    "fp32": _dense_mats(torch.float32),
    "bf16": _dense_mats(torch.bfloat16),
}
"""Each kernel a bundled format can name as its `cpu_kernel` (planner.catalog.CpuKernel), and how to time it."""


@lru_cache(maxsize=8)
def measure(threads: int | None = None, repeats: int = REPEATS) -> CpuMeasurement:
    """Measure once per process (per thread count); later calls return the cached result."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        curve = []
        for size in ARRAY_SIZES:
            copy_bw, triad_bw = _bandwidth(size, repeats)
            curve.append((3 * size, max(copy_bw, triad_bw)))
        fp32 = _matmul_flops(torch.float32, max(2, repeats // 2))
        bf16 = _matmul_flops(torch.bfloat16, 2)
        dispatch = _dispatch_s(repeats)
        rates = {
            name: _kernel_rates(make, repeats, (1, *CURVE_ROWS, GEMM_ROWS) if name in CURVE_KERNELS else (1, GEMM_ROWS))
            for name, make in KERNEL_MAKERS.items()
        }
        return CpuMeasurement(
            threads=torch.get_num_threads(),
            copy_bytes_s=copy_bw,
            triad_bytes_s=triad_bw,
            bandwidth_curve=tuple(curve),
            fp32_flops=fp32,
            bf16_flops=bf16,
            op_overhead_s=dispatch,
            **{f"{name}_gemv_weights_s": r.get(1) for name, r in rates.items()},
            **{f"{name}_gemm_weights_s": r.get(GEMM_ROWS) for name, r in rates.items()},
            kernel_curve=tuple((name, n, r[n]) for name, r in rates.items() for n in CURVE_ROWS if n in r),
            repeats=repeats,
        )
    finally:
        torch.set_num_threads(before)
