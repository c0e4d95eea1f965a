"""The calibration document: efficiencies and fixed costs fitted from the user's own measured runs.

`python -m planner calibrate` writes it and `predict`/`recommend --calibration FILE` apply it, so the
file is the one home of what a calibration holds: the fitted values, the device figures it was
fitted against (a CPU is measured on each run, so a calibration pins the measurement it used; a
fresh probe on a busy machine would otherwise move every calibrated figure), the runs it was fitted
on and held out from, and the error before and after. Unknown fields are an error, and a file from
another schema version is refused with one line rather than half-applied.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from planner.errors import PlannerError, first_problem
from planner.replay import MAX_SPREAD

if TYPE_CHECKING:  # cpu_probe imports torch; only a CPU calibration needs it
    from planner.cpu_probe import CpuMeasurement

KIND = "preflight.planner-calibration"
SCHEMA_VERSION = 1
METRICS = ("ttft_ms", "tpot_ms", "output_tok_s")
CI_METRICS = ("ttft_ms", "tpot_ms")  # the medians a benchmark result gives a 95% interval for

# What `calibrate`, its CLI and the Plan page replay with unless told otherwise: each pass scattered by the
# fit runs' own measured spread. On five pooled calibrations at 2026-12-07 17:58 (four sets, one of them
# also with step-log prices) it lowered the held-out TTFT error on all five (8.3 -> 4.1, 4.0 -> 1.7, 5.0 ->
# 1.3, 15.7 -> 11.4, 13.4 -> 10.4%) and TPOT on four (7.2 -> 5.0, 6.6 -> 5.2, 4.8 -> 3.3, 14.1 -> 13.0;
# 11.4 -> 11.7), throughput within 0.3 points (docs/BENCHMARKS.md).
DEFAULT_PASS_SPREAD: Literal["measured"] = "measured"


# The fitted values that price a forward pass (planner.calibrate fits them; one a fit cannot determine is
# kept at the catalog's and named in CalibrationDoc.undetermined).
PriceName = Literal["decode_bandwidth", "prefill_flops", "step_overhead_ms", "seq_overhead_us"]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metrics(_Part):
    """The three figures a calibration fits and checks; None where a run did not measure one."""

    ttft_ms: float | None = Field(None, gt=0, description="median time to first token")
    tpot_ms: float | None = Field(None, gt=0, description="median time per output token")
    output_tok_s: float | None = Field(None, gt=0, description="output tokens per second over the run")


class MedianIntervals(_Part):
    """95% intervals of one run's median TTFT and TPOT: the benchmark's bootstrap over its requests.

    Why a calibration keeps them: a prediction can miss a run's median by no less than the run's own
    sampling error. On the 2-core CPU VM one 40-request run's median TPOT has an interval of -9 / +12% at
    concurrency 2 and -2 / +3% at 16 (docs/BENCHMARKS.md), so an 8% miss at 2 says nothing while one at
    16 does."""

    ttft_ms: tuple[float, float] | None = None
    tpot_ms: tuple[float, float] | None = None


class CalibrationRun(_Part):
    """One measured run as the planner predicts it: what ran, on what, at what load, and what it measured."""

    id: str = Field(min_length=1, description="the benchmark result's id")
    source: str = Field(description="the file it was read from")
    profile: str = Field(description="the load profile, e.g. concurrency:8")
    model: str
    gpu: str = Field(description="'cpu' or a catalog GPU id, as --gpu takes it")
    engine: str
    engine_version: str | None = Field(
        None, description="vLLM: the release or generation that served, as --engine-version takes it"
    )
    format: str
    threads: int | None = Field(None, ge=1, description="CPU threads the server ran with")
    max_num_seqs: int | None = Field(None, ge=1, description="the server's batch limit")
    input_tokens: int = Field(ge=1, description="mean prompt tokens per request, as the server counted them")
    cached_input_tokens: int = Field(
        0, ge=0, description="of them, mean tokens the server's prefix cache served (computed by no prefill)"
    )
    output_tokens: int = Field(ge=1, description="mean output tokens per request")
    concurrency: int = Field(ge=1)
    requests: int | None = Field(None, ge=1, description="measured requests in the run (warm-up excluded)")
    repeats: int = Field(
        1, ge=1, description="measured runs of these same conditions pooled into this one: each figure is their median"
    )
    gap_spread: float | None = Field(
        None,
        ge=0,
        description="robust sd of ln gap between one-token chunks over the run's requests (None: too few gaps)",
    )
    measured: Metrics
    measured_ci95: MedianIntervals | None = Field(
        None,
        description="95% intervals of the measured medians (pooled repeats: the median of the repeats' bounds, "
        "the interval of one run as long as each of them); None: the result has none",
    )
    predicted_before: Metrics | None = Field(None, description="with the catalog's figures (filled by the fit)")
    predicted_after: Metrics | None = Field(None, description="with the fitted values (filled by the fit)")

    def ci95(self, metric: str) -> tuple[float, float] | None:
        """The 95% interval of one measured median (None: the result has none, or the metric is no median)."""
        return getattr(self.measured_ci95, metric, None) if self.measured_ci95 is not None else None


class FittedValues(_Part):
    """What predict uses in place of the catalog's figures for this engine on this kind of device."""

    decode_bandwidth: float = Field(
        gt=0, le=8, description="fraction of peak memory bandwidth a decode step reaches (on CPU, the probe's)"
    )
    prefill_flops: float = Field(
        gt=0,
        le=8,
        description="fraction of peak FLOP/s a forward pass's matmuls reach (on CPU, of the probe's readings, "
        "its weight-only kernels' included)",
    )
    step_overhead_ms: float = Field(ge=0, le=10_000, description="fixed cost of one forward pass, in ms")
    queued_prefills: float = Field(
        0.0, ge=0, le=16, description="share of each other in-flight prompt's prefill a new request waits for"
    )
    seq_overhead_us: float = Field(
        0.0, ge=0, le=1_000_000, description="cost of each sequence in a forward pass, beyond its KV reads, in us"
    )
    prompt_overhead_ms: float = Field(
        0.0,
        ge=0,
        le=10_000,
        description="extra cost of a forward pass that carries prompt tokens, in ms (fitted from step logs)",
    )
    ingest_ms: float = Field(
        0.0,
        ge=0,
        le=1_000,
        description="server time to take in one request before its scheduler sees it, one request at a time, in ms",
    )
    pass_spread: float = Field(
        0.0,
        ge=0,
        le=MAX_SPREAD,
        description="sd of ln forward-pass time, measured from the runs' inter-token gaps (0: passes replayed exactly)",
    )


class InsideCi(_Part):
    """Of the runs with a measured interval for a median, how many predictions fall inside it: (inside, of)."""

    ttft_ms: tuple[int, int] | None = None
    tpot_ms: tuple[int, int] | None = None


class ErrorRow(_Part):
    """Median absolute % error per metric over a set of runs (None: no run measured it)."""

    runs: int
    ttft_ms: float | None
    tpot_ms: float | None
    output_tok_s: float | None
    inside_ci95: InsideCi | None = Field(
        None, description="predictions inside the runs' own 95% intervals of their medians (None: no run has one)"
    )


class FitError(_Part):
    """The prediction error before (catalog figures) and after (fitted ones), on the fit and held-out runs."""

    fit_before: ErrorRow
    fit_after: ErrorRow
    held_out_before: ErrorRow | None = None
    held_out_after: ErrorRow | None = None
    rms_log_residual: float = Field(ge=0, description="what the fit minimized: RMS of ln(predicted / measured)")


class PassRow(_Part):
    """One kind of forward pass in a server's step log: what it cost there, and what the fitted prices charge."""

    decoding: int = Field(ge=0, description="sequences decoding in the pass")
    prompt_tokens: int = Field(ge=0, description="prompt tokens computed in the pass")
    passes: int = Field(ge=1)
    measured_ms: float = Field(gt=0, description="mean time from the pass's start to the next one's")
    fitted_ms: float = Field(gt=0, description="the fitted price of such a pass")


class PassFit(_Part):
    """Logged passes against the fitted prices: the fit runs' servers' step logs the prices were fitted to
    (`calibrate --step-log`), or held-out runs' logs they are checked on (`--hold-out-step-log`)."""

    sources: list[str] = Field(min_length=1, description="the step logs read")
    passes: int = Field(ge=1, description="busy passes in them")
    rms_log_residual: float = Field(
        ge=0, description="RMS of ln(fitted / measured) over the kinds of pass, each weighted by its engine time"
    )
    bias: float | None = Field(
        None,
        description="exp of the engine-time-weighted mean ln(fitted / measured), less 1: how much dearer (+) or "
        "cheaper (-) the prices charge these passes overall",
    )
    rows: list[PassRow] = Field(
        description="the kinds of pass that took the most engine time, in (decoding, prompt) order"
    )


class CpuFigures(_Part):
    """The CPU measurement the fit ran against (planner.cpu_probe.CpuMeasurement's fields)."""

    threads: int
    copy_bytes_s: float
    triad_bytes_s: float
    bandwidth_curve: list[tuple[int, float]]
    fp32_flops: float
    bf16_flops: float
    op_overhead_s: float
    int4_gemv_weights_s: float | None = None
    int8_gemv_weights_s: float | None = None
    int4_gemm_weights_s: float | None = None
    int8_gemm_weights_s: float | None = None
    fp8_gemv_weights_s: float | None = None
    fp8_gemm_weights_s: float | None = None
    q8_0_gemv_weights_s: float | None = None  # absent from calibrations made before the probe timed Q8_0
    q8_0_gemm_weights_s: float | None = None
    fp32_gemv_weights_s: float | None = None  # absent from calibrations made before the probe timed them (2026-12-08)
    fp32_gemm_weights_s: float | None = None
    bf16_gemv_weights_s: float | None = None
    bf16_gemm_weights_s: float | None = None
    kernel_curve: list[tuple[str, int, float]] = Field(
        default_factory=list,
        description="(kernel, rows, weight-rows/s) between 1 and 64 rows; absent before 2026-12-07",
    )
    matmul_n: int
    repeats: int


class CalibrationDoc(_Part):
    """A whole calibration. `values` apply to `engine` on `device_kind` only; see the module docstring."""

    kind: Literal["preflight.planner-calibration"] = KIND
    schema_version: Literal[1] = SCHEMA_VERSION
    created_at: AwareDatetime
    engine: str = Field(description="catalog engine id the runs served with")
    engine_version: str | None = Field(
        None,
        description="vLLM: the release or generation the runs served with, whose memory rule the fit planned "
        "(None: the planner's default release); the values apply to that rule only",
    )
    device_kind: Literal["gpu", "cpu"]
    device: str = Field(description="the device's name, as predict shows it")
    values: FittedValues
    max_num_seqs: int | None = Field(None, ge=1, description="the batch limit the runs' server had")
    cpu: CpuFigures | None = Field(None, description="CPU runs: the measurement the fit used, reused by predict")
    runs: list[CalibrationRun] = Field(min_length=1, description="the runs fitted on")
    held_out: list[CalibrationRun] = Field(default_factory=list, description="runs only checked, never fitted")
    error: FitError
    passes: PassFit | None = Field(None, description="pass prices fitted to step logs (None: to the runs alone)")
    held_out_passes: PassFit | None = Field(
        None,
        description="the held-out runs' logged passes at the fitted prices: tells a miss in the prices from "
        "one in how the runs' passes were arranged",
    )
    undetermined: list[PriceName] = Field(
        default_factory=list,
        description="prices the runs could not determine (no prediction or logged pass moved with them), kept at "
        "the catalog's: e.g. decode_bandwidth where every pass was compute-bound",
    )
    source: str = Field(min_length=1, description="how it was made, in one line")

    @property
    def served(self) -> str:
        """The engine the runs served with, and its release where one was recorded ("vllm 0.10.1.1")."""
        return f"{self.engine} {self.engine_version}" if self.engine_version else self.engine


def load_calibration(path: str | Path) -> CalibrationDoc:
    """Read and validate a calibration file; a bad one is one PlannerError line naming it."""
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlannerError(f"cannot read the calibration file {path}: {exc}") from exc
    if isinstance(data, dict) and data.get("kind") not in (None, KIND):
        raise PlannerError(f"calibration file {path}: kind is {data.get('kind')!r}, not {KIND!r}")
    if isinstance(data, dict) and data.get("schema_version") not in (None, SCHEMA_VERSION):
        raise PlannerError(
            f"calibration file {path}: schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}; "
            "calibrate again with this version"
        )
    try:
        return CalibrationDoc.model_validate(data)
    except ValidationError as exc:
        raise PlannerError(f"calibration file {path}: {first_problem(exc)}") from exc


def save_calibration(doc: CalibrationDoc, path: str | Path) -> Path:
    """Write `doc` as indented JSON; the parent folder must exist."""
    out = Path(path).expanduser()
    try:
        out.write_text(doc.model_dump_json(indent=2) + "\n")
    except OSError as exc:
        raise PlannerError(f"cannot write the calibration file {path}: {exc}") from exc
    return out


def now() -> datetime:
    return datetime.now(UTC)


def cpu_figures(m: CpuMeasurement) -> CpuFigures:
    """The measurement a CPU fit used, for the document."""
    fields = {k: getattr(m, k) for k in CpuFigures.model_fields}
    return CpuFigures.model_validate(
        fields | {"bandwidth_curve": [list(p) for p in m.bandwidth_curve], "kernel_curve": list(m.kernel_curve)}
    )


def pinned_measurement(fig: CpuFigures) -> CpuMeasurement:
    """The CpuMeasurement a calibration was fitted against, so predict reuses it instead of probing again."""
    from planner.cpu_probe import CpuMeasurement

    fields = fig.model_dump() | {
        "bandwidth_curve": tuple((int(s), float(b)) for s, b in fig.bandwidth_curve),
        "kernel_curve": tuple((str(k), int(n), float(r)) for k, n, r in fig.kernel_curve),
    }
    return CpuMeasurement(**fields)


def assumption_line(doc: CalibrationDoc, path: str | Path) -> str:
    """What the assumption list says about a calibrated figure: which values came from which file."""
    v = doc.values
    pinned = "; CPU figures as measured when calibrated" if doc.cpu else ""
    seqs = f"; max_num_seqs {doc.max_num_seqs}" if doc.max_num_seqs else ""
    kept = f"; not determined by its runs, the catalog's: {', '.join(doc.undetermined)}" if doc.undetermined else ""
    return (
        f"from {path} (fitted on {len(doc.runs)} run(s) of {doc.served} on {doc.device}): "
        f"decode_bandwidth_efficiency {v.decode_bandwidth:.3g}, prefill_flops_efficiency {v.prefill_flops:.3g}, "
        f"step_overhead_ms {v.step_overhead_ms:.3g}, seq_overhead_us {v.seq_overhead_us:.3g}, "
        f"queued_prefills {v.queued_prefills:.3g}, prompt_overhead_ms {v.prompt_overhead_ms:.3g}, "
        f"ingest_ms {v.ingest_ms:.3g}, pass_spread {v.pass_spread:.3g}"
        f"{seqs}{pinned}{kept}"
    )
