"""Which of a prediction's assumptions drive which figure the Plan page shows, and where each came from.

`predict_config` lists every figure it used (`ConfigPrediction.assumptions`, kept on each PlanOption);
this module only groups those keys under the figures they move and says whether a calibration file or
the catalog supplied each, so the page can show how a number was reached without recomputing anything.
A key the prediction did not list is left out, never filled in.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.recommend import PlanOption
from planner.sizing import GIB

CATALOG_FILE = "planner/data/engines.json"
CATALOG = f"catalog assumption ({CATALOG_FILE})"
UNCALIBRATED_ZERO = "0 until calibrated (python -m planner calibrate)"
# figures from another catalog file (the format's compute precision on this device), and those that only a
# calibration sets: the catalog has no figure for them and the planner charges nothing
OTHER_CATALOG = {
    "matmul_precision": "catalog assumption (planner/data/formats.json)",
    "prompt_pass_overhead_ms": UNCALIBRATED_ZERO,
    "ingest_ms": UNCALIBRATED_ZERO,
}
CALIBRATED = "calibrated"
# how TTFT and TPOT are composed (and whether a closed loop is replayed), not a number to look up
MODEL = "planner model (planner/loaded.py; planner/replay.py where closed_loop is replayed)"
MODEL_KEYS = ("ttft", "tpot", "closed_loop")

MEMORY = "Memory per device"
TTFT = "TTFT"
TPOT = "TPOT"
OUTPUT = "Output tok/s at this load"
MAX_OUTPUT = "Saturated output tok/s"

# Every timing figure is a roofline over these: efficiencies of the device's peaks, fixed costs per pass.
_SPEED = (
    "decode_bandwidth_efficiency",
    "prefill_flops_efficiency",
    "matmul_precision",
    "tensor_parallel_efficiency",
    "step_overhead_ms",
    "seq_overhead_us",
    "prompt_pass_overhead_ms",
    "ingest_ms",
    "allreduce_ms_per_decode_token",
    "efficiency_source",
    "calibration",
)
# How a replica schedules: how many sequences share a pass and how prompts are split among the decodes.
_SCHEDULER = ("max_num_seqs", "max_num_batched_tokens", "chunked_prefill", "batching", "closed_loop")

FIGURE_ASSUMPTIONS: dict[str, tuple[str, ...]] = {
    MEMORY: (
        "gpu_memory_utilization",
        "block_size",
        "kv_cache_dtype",
        "kv_cache_dtype_bytes",
        "activation_gib",
        "runtime_overhead_gib",
        "vllm_memory_version",
        "vllm_memory_rule",
        "vllm_cuda_graph_reserve",
        "tp_transport",
        "max_num_batched_tokens",
        "max_num_seqs",
        "scheduler_defaults",
    ),
    TTFT: ("ttft", "cached_input_tokens", *_SPEED, *_SCHEDULER),
    TPOT: ("tpot", "cached_input_tokens", *_SPEED, "kv_cache_dtype_bytes", *_SCHEDULER),
    OUTPUT: ("cached_input_tokens", *_SPEED, *_SCHEDULER),
    # saturated: the largest batch the KV cache holds sets it too
    MAX_OUTPUT: (*_SPEED, *_SCHEDULER, "kv_cache_dtype_bytes", "gpu_memory_utilization", "block_size"),
}


@dataclass(frozen=True, slots=True)
class AssumptionRow:
    """One assumption behind one figure: the figure's value, the key, its setting and where it came from."""

    figure: str
    value: str
    assumption: str
    setting: str
    source: str


def figure_values(option: PlanOption) -> dict[str, str]:
    """The figures the page shows for this option, as text; an option without a prediction has memory only."""
    values = {}
    if (m := option.memory) is not None:
        values[MEMORY] = f"{m.weights_bytes / GIB:.1f} GiB weights + {max(0, m.kv_budget_bytes) / GIB:.1f} GiB KV cache"
    if (p := option.prediction) is not None:
        values[TTFT] = f"{p.ttft_ms:,.1f} ms"
        values[TPOT] = f"{p.tpot_ms:,.2f} ms at batch {p.batch}"
        values[OUTPUT] = f"{p.output_tok_s:,.0f} tok/s"
        values[MAX_OUTPUT] = f"{p.max_output_tok_s:,.0f} tok/s at batch {p.max_batch}"
    return values


def source_of(option: PlanOption, key: str) -> str:
    """Calibrated where the option's calibration set the key; the planner's own model for the TTFT and
    TPOT descriptions; otherwise the catalog's assumption."""
    if option.calibrated and key in option.calibrated_keys:
        return CALIBRATED
    return MODEL if key in MODEL_KEYS else OTHER_CATALOG.get(key, CATALOG)


def setting_text(value: str | float | int | bool) -> str:
    """A setting as the table shows it: floats to three significant figures, the rest as written."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def assumption_rows(option: PlanOption) -> list[AssumptionRow]:
    """Each shown figure's assumptions for one option, in FIGURE_ASSUMPTIONS' order; keys the prediction
    did not list are skipped."""
    rows = []
    for figure, value in figure_values(option).items():
        for key in FIGURE_ASSUMPTIONS[figure]:
            if key in option.assumptions:
                setting = setting_text(option.assumptions[key])
                rows.append(AssumptionRow(figure, value, key, setting, source_of(option, key)))
    return rows


def calibration_line(option: PlanOption) -> str:
    """The one line that says whose figures these are: the calibration file, or the catalog's."""
    if option.calibrated and option.calibration:
        return f"calibrated {option.calibration}"  # the label reads "from FILE (fitted on ...): values"
    return f"uncalibrated: catalog assumptions ({CATALOG_FILE})"


def version_line(option: PlanOption) -> str | None:
    """Which vLLM release's memory rule a vLLM option's figures assume; None for other engines."""
    version = option.assumptions.get("vllm_memory_version")
    return f"Figures assume {version}" if version else None
