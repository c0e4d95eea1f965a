"""Roofline timing: prefill is compute-bound, decode is memory-bound (CS336 lecture 10).

    TTFT ~ prefill FLOPs / achievable FLOP/s,
           prefill FLOPs = 2 x matmul params x prompt tokens (+ causal attention 2 x L x H x d x S^2)
    TPOT ~ bytes read per step / achievable bandwidth,
           bytes = weights read (all but the input lookup table; MoE: experts the batch touches)
                   + batch x KV of each sequence
Each step takes max(memory time, compute time) plus a dispatch overhead that a pure-PyTorch
engine pays per op. Tensor parallelism divides the work over TP x PP devices, keeping a
fraction `efficiency` of ideal scaling for the all-reduces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from planner.catalog import FormatSpec, GpuSpec
from planner.model_spec import ModelSpec
from planner.sizing import kv_bytes_per_sequence, weight_bytes


@dataclass(frozen=True, slots=True)
class Device:
    """One kind of device as the roofline sees it; rates are per device."""

    name: str
    kind: str  # "gpu" | "cpu"
    vendor: str  # "nvidia" | "amd" | "cpu"
    memory_bytes: int
    bandwidth_bytes_s: float
    flops: dict[str, float | None]
    count: int = 1
    compute_capability: str | None = None
    interconnect: str = "pcie"
    peer_to_peer: bool = True  # two of these GPUs can reach each other's memory (see gpus.json)
    price_per_hour: float = 0.0
    op_overhead_s: float | None = None
    measured: str | None = None  # how the CPU figures were measured
    gpu_id: str | None = None
    threads: int | None = None
    bandwidth_curve: tuple[tuple[int, float], ...] = ()  # CPU: (working-set bytes, bytes/s) measured
    kernel_weights_s: dict[str, float] = field(default_factory=dict)  # CPU: weight-only GEMV rates

    def bandwidth_at(self, working_set_bytes: float) -> float:
        """Achieved bandwidth for a working set (the measured curve on CPU, the datasheet on GPU)."""
        if not self.bandwidth_curve:
            return self.bandwidth_bytes_s
        return interpolate_bandwidth(self.bandwidth_curve, working_set_bytes)


def interpolate_bandwidth(curve: tuple[tuple[int, float], ...], working_set_bytes: float) -> float:
    """Clamp to the ends of the curve; log-linear in working-set size between points."""
    if working_set_bytes <= curve[0][0]:
        return curve[0][1]
    for (s0, b0), (s1, b1) in zip(curve, curve[1:], strict=False):
        if working_set_bytes <= s1:
            t = math.log(working_set_bytes / s0) / math.log(s1 / s0)
            return b0 + t * (b1 - b0)
    return curve[-1][1]


def gpu_device(spec: GpuSpec, count: int = 1, price_per_hour: float | None = None) -> Device:
    return Device(
        name=spec.name,
        kind="gpu",
        vendor=spec.vendor,
        memory_bytes=spec.memory_bytes,
        bandwidth_bytes_s=spec.bandwidth_bytes_s,
        flops=dict(spec.flops),
        count=count,
        compute_capability=spec.compute_capability,
        interconnect=spec.interconnect,
        peer_to_peer=spec.peer_to_peer,
        price_per_hour=spec.price_per_hour if price_per_hour is None else price_per_hour,
        gpu_id=spec.id,
    )


def _cc(text: str | None) -> tuple[int, int]:
    major, _, minor = (text or "0.0").partition(".")
    return int(major), int(minor or 0)


def cc_at_least(device: Device, needed: str | None) -> bool:
    """True on CPU and AMD (no CUDA compute capability) or when the GPU meets `needed`."""
    if needed is None or device.kind != "gpu" or device.compute_capability is None:
        return True
    return _cc(device.compute_capability) >= _cc(needed)


def compute_kind(device: Device, fmt: FormatSpec) -> str:
    """The tensor-core rate a format's matmuls run at on this device."""
    if device.kind == "cpu":
        return "fp32"
    kind = fmt.compute
    if kind in ("fp8", "int8") and fmt.weight_only_below_cc and not cc_at_least(device, fmt.weight_only_below_cc):
        kind = "bf16"  # weight-only: dequantized to 16-bit before the matmul
    if kind in ("bf16", "fp32") and device.flops.get("bf16") is None:
        kind = "fp16"
    return kind


def peak_flops(device: Device, fmt: FormatSpec) -> float:
    kind = compute_kind(device, fmt)
    if kind == "fp32" and device.kind == "gpu":
        return float(device.flops.get("bf16") or device.flops["fp16"] or 0) / 2  # TF32 is half the 16-bit rate
    rate = device.flops.get(kind)
    if not rate:
        raise ValueError(f"{device.name} has no {kind} rate for format {fmt.id}")
    return float(rate)


@dataclass(frozen=True, slots=True)
class Parallel:
    """How one replica is split: tensor x pipeline parallel, and the share of ideal scaling kept."""

    tp: int = 1
    pp: int = 1
    efficiency: float = 1.0

    @property
    def devices(self) -> int:
        return self.tp * self.pp


@dataclass(frozen=True, slots=True)
class StepTime:
    """One forward pass: the larger of memory and compute time, plus dispatch overhead."""

    memory_s: float
    compute_s: float
    overhead_s: float = 0.0
    flops: float = 0.0
    bytes_read: float = 0.0
    notes: tuple[str, ...] = field(default=())

    @property
    def seconds(self) -> float:
        return max(self.memory_s, self.compute_s) + self.overhead_s

    @property
    def bound(self) -> str:
        if self.overhead_s > max(self.memory_s, self.compute_s):
            return "overhead"
        return "compute" if self.compute_s > self.memory_s else "memory"


def prefill_flops(model: ModelSpec, tokens: int) -> float:
    """2 x (matmul params less the head) x tokens + the head once (logits for the last token only)
    + causal attention: QK^T and AV, each S^2 x d per head per layer."""
    body = model.matmul_params_active - model.head_params
    attention = 2 * model.n_layers * model.n_heads * model.head_dim * tokens**2
    return 2 * body * tokens + 2 * model.head_params + attention


def decode_flops(model: ModelSpec, batch: int, context: int) -> float:
    """One decode step: 2 x matmul params per sequence + attention over `context` cached tokens."""
    attention = 4 * model.n_layers * model.n_heads * model.head_dim * context
    return batch * (2 * model.matmul_params_active + attention)


def expected_experts(model: ModelSpec, batch: int) -> float:
    """Distinct experts a batch touches per MoE layer: E x (1 - (1 - k/E)^B) for uniform routing."""
    if model.moe is None:
        return 0.0
    e, k = model.moe.n_experts, model.moe.experts_per_token
    return e * (1 - (1 - k / e) ** batch)


def decode_weight_bytes(model: ModelSpec, fmt: FormatSpec, batch: int) -> float:
    """Weight bytes one decode step reads: all but the input lookup table (untied) and untouched experts."""
    wb = weight_bytes(model, fmt)
    lookup = wb.embedding / 2 if not model.tied_embeddings else 0
    read = wb.total - lookup
    if model.moe is not None:
        experts = model.expert_params * fmt.bits_per_weight / 8
        read -= experts * (1 - expected_experts(model, batch) / model.moe.n_experts)
    return read


def kernel_call_s(rates: dict[str, float], kernel: str, weights: float, rows: float) -> float:
    """Time of one call of a weight-only kernel over `weights` weights at `rows` activation rows, read
    off its measured rates ("int4" at 1 row, "int4@R" at R rows): linear in rows between two measured
    row counts, at the largest count's per-row rate beyond it. 0 when the kernel was not measured.

    Linear between points, not one rate times rows: the kernels' time is not proportional to rows
    (the engine's native int4 operator serves 2 rows for ~1.2x one row's time, its Q8_0 head 2 rows
    for one's), so a batch of b sequences costs what was measured near b rows."""
    points = sorted(
        ([(1, rates[kernel])] if kernel in rates else [])
        + [(int(k.rsplit("@", 1)[1]), v) for k, v in rates.items() if k.startswith(f"{kernel}@")]
    )
    if not points:
        return 0.0
    times = [(n, weights * n / rate) for n, rate in points]
    if rows <= times[0][0]:
        return times[0][1] * rows / times[0][0]
    for (n0, t0), (n1, t1) in zip(times, times[1:], strict=False):
        if rows <= n1:
            return t0 + (t1 - t0) * (rows - n0) / (n1 - n0)
    n, t = times[-1]
    return t * rows / n


def kernel_s(model: ModelSpec, fmt: FormatSpec, device: Device, tokens: int = 1, head_rows: int = 1) -> float:
    """CPU time in the weight-only kernels the format calls: the body's weights at `tokens` rows (a
    decode step's batch, or a prompt's tokens) and the head at `head_rows` (one per sequence decoding,
    one per prompt: logits only for a prompt's last token), each read off the measured curve.
    0 when the format has no such kernel or this CPU's rate was not measured."""
    rates = device.kernel_weights_s
    if not fmt.cpu_kernel or not rates:
        return 0.0
    body = model.params_total - model.embedding_params
    head_kernel = fmt.cpu_embedding_kernel or fmt.cpu_kernel
    return kernel_call_s(rates, fmt.cpu_kernel, body, tokens) + kernel_call_s(
        rates, head_kernel, model.head_params, head_rows
    )


def decode_step(
    model: ModelSpec,
    fmt: FormatSpec,
    device: Device,
    batch: int,
    context: int,
    *,
    bandwidth_efficiency: float = 1.0,
    flops_efficiency: float = 1.0,
    parallel: Parallel = Parallel(),
    overhead_s: float = 0.0,
    kv_dtype_bytes: int = 2,
) -> StepTime:
    """Time of one decode step for `batch` sequences holding `context` tokens each.

    On a CPU the compute is the larger of the FLOPs at the probe's matmul rate and the probe's own
    weight-only kernels at this row count, and `flops_efficiency` scales both: every CPU rate is a
    reading of the probe's, and a calibration fitted against a probe taken in a slow moment must be
    able to scale its kernels as it scales its FLOP/s (tests/planner/test_kernel_curve.py)."""
    scale = parallel.devices * parallel.efficiency
    kv = batch * kv_bytes_per_sequence(model, context, kv_dtype_bytes)
    if model.uses_mla and parallel.tp > 1:
        kv *= parallel.tp  # every rank reads the whole latent
    read = decode_weight_bytes(model, fmt, batch) + kv
    flops = decode_flops(model, batch, context)
    compute = flops / peak_flops(device, fmt)
    if device.kind == "cpu":
        compute = max(compute, kernel_s(model, fmt, device, batch, head_rows=batch))
    return StepTime(
        memory_s=read / (device.bandwidth_at(read) * bandwidth_efficiency * scale),
        compute_s=compute / (flops_efficiency * scale),
        overhead_s=overhead_s,
        flops=flops,
        bytes_read=read,
    )


def prefill(
    model: ModelSpec,
    fmt: FormatSpec,
    device: Device,
    tokens: int,
    *,
    bandwidth_efficiency: float = 1.0,
    flops_efficiency: float = 1.0,
    parallel: Parallel = Parallel(),
    overhead_s: float = 0.0,
) -> StepTime:
    """Time to first token for one prompt: compute-bound, but never faster than one weight read. On a CPU
    `flops_efficiency` scales the probe's kernel time as well (decode_step)."""
    scale = parallel.devices * parallel.efficiency
    flops = prefill_flops(model, tokens)
    read = float(weight_bytes(model, fmt).total)
    compute = flops / peak_flops(device, fmt)
    if device.kind == "cpu":
        compute = max(compute, kernel_s(model, fmt, device, tokens))
    return StepTime(
        memory_s=read / (device.bandwidth_at(read) * bandwidth_efficiency * scale),
        compute_s=compute / (flops_efficiency * scale),
        overhead_s=overhead_s,
        flops=flops,
        bytes_read=read,
    )


def arithmetic_intensity(model: ModelSpec, fmt: FormatSpec, batch: int, context: int) -> float:
    """FLOPs per byte read in one decode step."""
    kv = batch * kv_bytes_per_sequence(model, context)
    return decode_flops(model, batch, context) / (decode_weight_bytes(model, fmt, batch) + kv)


def ridge_point(device: Device, fmt: FormatSpec) -> float:
    """FLOPs per byte where the device turns compute-bound (H100 BF16: 989e12 / 3.35e12 = 295)."""
    return peak_flops(device, fmt) / device.bandwidth_bytes_s


def critical_batch(model: ModelSpec, fmt: FormatSpec, device: Device, context: int = 0) -> float | None:
    """Smallest batch at which a decode step becomes compute-bound, or None if it never does
    (when each sequence's KV read costs more time than its FLOPs, as at long contexts)."""

    def compute_bound(b: float) -> bool:
        step = decode_step(model, fmt, device, max(1, round(b)), context)
        return step.compute_s >= step.memory_s

    lo, hi = 1.0, 1.0
    while not compute_bound(hi):
        lo, hi = hi, hi * 2
        if hi > 2**20:
            return None
    if hi == 1.0:
        return 1.0
    while hi - lo > 0.5:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if compute_bound(mid) else (mid, hi)
    return hi


def critical_batch_dense(model: ModelSpec, fmt: FormatSpec, device: Device) -> float:
    """Closed form ignoring KV: weights read / bandwidth = B x 2 x matmul params / FLOP/s."""
    read_s = decode_weight_bytes(model, fmt, 1) / device.bandwidth_bytes_s
    per_seq_s = 2 * model.matmul_params_active / peak_flops(device, fmt)
    return read_s / per_seq_s
