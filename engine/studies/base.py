"""What every study shares: its options, its result, the evaluation text and the machine's conditions.

A study measures the real engine on this machine; nothing is simulated.
Every table states its conditions (threads, torch, model, format, date,
sizes), and a figure that could not be measured is `None`, never 0.
"""

from __future__ import annotations

import gc
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from functools import cache, wraps
from importlib import resources
from typing import Any

import psutil
import torch

from engine.compress.catalog import CATALOG, STUDY_DEFAULT
from engine.formats import WEIGHT_FORMATS
from engine.quant.roundtrip import PRECISION_SCHEMES

SCHEMA_VERSION = 1
# What the compression study can measure: every served weight format, and every named compression setting.
COMPRESS_SETTINGS: tuple[str, ...] = (*WEIGHT_FORMATS, *CATALOG)
Progress = Callable[[str], None]


def _opt(default: Any, help: str) -> Any:
    """A field whose description drives the CLI's --help and the page's tooltips."""
    return field(default=default, metadata={"help": help})


# Counts below these cannot be measured (a decode speed needs two tokens, a perplexity window two); one home
# for the rule, which the Engine studies page also uses as its input boxes' minimum.
MIN_COUNTS = {
    "kv_tokens": 2,
    "quant_decode_tokens": 2,
    "eval_window": 2,
    "eval_max_tokens": 2,
    "precision_act_tokens": 1,
}


@dataclass(frozen=True, slots=True)
class StudyOptions:
    """Which model to study and how big each study is; the defaults are the documented full runs."""

    model_path: str | None = None
    quant: str = _opt("int4", "weight format of the kv and batch studies")
    device: str = "auto"
    threads: int | None = _opt(None, "CPU threads for torch during the study (default: torch's own choice)")
    use_cache: bool = _opt(True, "load converted weights from the disk cache when present")
    kv_lengths: tuple[int, ...] = _opt((32, 64, 128, 256, 512), "kv: sequence lengths (prompt + generated tokens)")
    kv_tokens: int = _opt(16, "kv: tokens generated at each length")
    batch_sizes: tuple[int, ...] = _opt((1, 2, 4, 8, 16, 32), "batch: batch sizes")
    batch_prompt_tokens: int = _opt(64, "batch: prompt tokens of every sequence")
    batch_steps: int = _opt(32, "batch: decode steps after the batched prefill")
    quant_formats: tuple[str, ...] = _opt(WEIGHT_FORMATS, "quant: weight formats (fp32 is always the reference)")
    quant_prompt_tokens: int = _opt(256, "quant and compress: prompt tokens for the prefill speed")
    quant_decode_tokens: int = _opt(64, "quant and compress: tokens decoded for the decode speed")
    quant_cold_load: bool = _opt(True, "quant: also time a load that converts from the GGUF (cache off)")
    eval_max_tokens: int = _opt(1536, "quant, precision and compress: tokens of the evaluation text scored for quality")
    eval_window: int = _opt(512, "quant, precision and compress: tokens per forward pass over the evaluation text")
    precision_schemes: tuple[str, ...] = _opt(PRECISION_SCHEMES, "precision: schemes compared with fp32")
    precision_act_tokens: int = _opt(
        256, "precision: tokens of the evaluation text whose activations feed each layer's output error"
    )
    compress_settings: tuple[str, ...] = _opt(
        (*WEIGHT_FORMATS, *STUDY_DEFAULT),
        "compress: weight formats and named compression settings (engine/compress/catalog.py); fp32 is always the "
        "reference",
    )

    def __post_init__(self) -> None:
        for name in ("kv_lengths", "batch_sizes", "quant_formats", "precision_schemes", "compress_settings"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.quant not in WEIGHT_FORMATS:
            raise ValueError(f"unknown weight format {self.quant!r}: choose one of {', '.join(WEIGHT_FORMATS)}")
        unknown = [f for f in self.quant_formats if f not in WEIGHT_FORMATS]
        if unknown or not self.quant_formats:
            raise ValueError(f"quant formats must be some of {', '.join(WEIGHT_FORMATS)}, got {self.quant_formats}")
        bad = [s for s in self.precision_schemes if s not in PRECISION_SCHEMES]
        if bad or not self.precision_schemes:
            raise ValueError(
                f"precision schemes must be some of {', '.join(PRECISION_SCHEMES)}, got {self.precision_schemes}"
            )
        odd = [s for s in self.compress_settings if s not in COMPRESS_SETTINGS]
        if odd or not self.compress_settings:
            raise ValueError(
                f"compress settings must be some of {', '.join(COMPRESS_SETTINGS)}, got {self.compress_settings}"
            )
        if self.kv_tokens < MIN_COUNTS["kv_tokens"]:
            raise ValueError(f"kv tokens must be at least 2 (decode speed needs two tokens), got {self.kv_tokens}")
        if not self.kv_lengths or min(self.kv_lengths) <= self.kv_tokens:
            raise ValueError(
                f"every kv length must exceed kv tokens ({self.kv_tokens}) so the prompt is not empty, "
                f"got {self.kv_lengths}"
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1 (or unset for torch's default), got {self.threads}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes must be positive, got {self.batch_sizes}")
        for name in ("batch_prompt_tokens", "batch_steps", "quant_prompt_tokens", "precision_act_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.quant_decode_tokens < MIN_COUNTS["quant_decode_tokens"]:
            raise ValueError(f"quant decode tokens must be at least 2, got {self.quant_decode_tokens}")
        if self.eval_window < MIN_COUNTS["eval_window"] or self.eval_max_tokens < MIN_COUNTS["eval_max_tokens"]:
            raise ValueError(
                f"eval window and eval max tokens must be at least 2, got {self.eval_window} and {self.eval_max_tokens}"
            )


@dataclass(slots=True)
class StudyResult:
    """One finished study: the conditions it ran under, one row per measured point, and notes."""

    name: str
    conditions: dict[str, object]
    rows: list[dict[str, object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION,
            "study": self.name,
            "conditions": dict(self.conditions),
            "rows": [dict(r) for r in self.rows],
            "notes": list(self.notes),
        }


@cache
def eval_text() -> str:
    """The evaluation text the project ships (engine/data/eval.txt): original prose, a dialogue and a list."""
    return resources.files("engine").joinpath("data", "eval.txt").read_text(encoding="utf-8")


def eval_ids(tokenizer: object, needed: int) -> list[int]:
    """The evaluation text's token ids; a clear error when a study asks for more than it holds."""
    ids: list[int] = tokenizer.encode(eval_text())  # type: ignore[attr-defined]
    if needed > len(ids):
        raise ValueError(
            f"the study needs {needed} tokens of evaluation text but engine/data/eval.txt holds {len(ids)}: "
            "use smaller lengths"
        )
    return ids


def _cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo on Linux, else what `platform` knows."""
    fallback = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
    except OSError:
        return fallback
    return names[0] if names else fallback


def machine_conditions(engine: object, name: str) -> dict[str, object]:
    """Hardware, software, model and date: what every table must state."""
    info = engine.info  # type: ignore[attr-defined]
    device = torch.device(info.device)
    accelerator = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "study": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": load_average(),
        "accelerator": accelerator,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "model": info.model_name,
        "model_file": os.path.basename(info.gguf_path),
        "format": info.quant,
        "device": info.device,
    }


StudyRun = Callable[[StudyOptions, Progress | None], StudyResult]


def study_run(run: StudyRun) -> StudyRun:
    """Run a study with `options.threads` torch threads (restored afterwards) and record the load at the end.

    The 1-minute load average at the start and the end tells a reader whether other work shared the CPU.
    """

    @wraps(run)
    def wrapper(options: StudyOptions, progress: Progress | None = None) -> StudyResult:
        before = torch.get_num_threads()
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        try:
            result = run(options, progress)
        finally:
            torch.set_num_threads(before)
        result.conditions["load_avg_1m_end"] = load_average()
        return result

    return wrapper


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), where the OS reports one."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def report(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so the clock measures it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device | None = None) -> None:
    """Drop unreachable engines now so the next load does not stack on top of the last."""
    gc.collect()
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()


_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _peak_rss_kib() -> int | None:
    """The kernel's high-water mark of this process's RSS (Linux VmHWM), or None elsewhere."""
    try:
        with open(_STATUS, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False where that is not possible."""
    try:
        with open(_CLEAR_REFS, "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return _peak_rss_kib() is not None


@dataclass(slots=True)
class MemoryPeak:
    """Peak resident set size while a block ran, and the CUDA allocator's peak on a GPU.

    On Linux the kernel tracks the peak exactly (VmHWM, reset when the block
    starts). Elsewhere RSS is read with psutil at the start, at every
    `sample()` the block calls (once per decode step) and at the end; a
    background sampling thread was tried and rejected: on a busy machine it
    held the GIL while descheduled and slowed decode steps several times over.
    """

    method: str
    rss_before_bytes: int
    rss_peak_bytes: int
    cuda_peak_bytes: int | None = None

    def sample(self) -> None:
        if self.method == "psutil":
            self.rss_peak_bytes = max(self.rss_peak_bytes, psutil.Process().memory_info().rss)

    @property
    def rss_peak_delta_bytes(self) -> int:
        return self.rss_peak_bytes - self.rss_before_bytes


@contextmanager
def sample_memory(device: torch.device) -> Iterator[MemoryPeak]:
    """Measure the peak RSS (and CUDA allocation) of the block; see `MemoryPeak`."""
    gc.collect()
    rss = psutil.Process().memory_info().rss
    peak = MemoryPeak("VmHWM" if _reset_peak_rss() else "psutil", rss, rss)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield peak
    finally:
        peak.sample()
        hwm = _peak_rss_kib() if peak.method == "VmHWM" else None
        if hwm is not None:
            peak.rss_peak_bytes = max(peak.rss_peak_bytes, hwm * 1024)
        if device.type == "cuda":
            peak.cuda_peak_bytes = torch.cuda.max_memory_allocated(device)


def option_help(name: str) -> str:
    """The description of one StudyOptions field, with its default."""
    f = next(f for f in fields(StudyOptions) if f.name == name)
    if f.default is None:
        return f.metadata["help"]
    default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
    return f"{f.metadata['help']} (default: {default})"


def parse_sizes(text: str) -> tuple[int, ...]:
    """'32, 64,128' -> (32, 64, 128): positive integers, for the CLI flags and the page's fields."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"expected comma-separated positive integers such as '32,64', got {text!r}")
    return tuple(int(p) for p in parts)


def parse_formats(text: str) -> tuple[str, ...]:
    """'fp32,int4' -> ('fp32', 'int4'), each a known weight format."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts or any(p not in WEIGHT_FORMATS for p in parts):
        raise ValueError(f"expected comma-separated weight formats from {', '.join(WEIGHT_FORMATS)}, got {text!r}")
    return parts


def parse_schemes(text: str) -> tuple[str, ...]:
    """'int8,int4-g32' -> ('int8', 'int4-g32'), each a known precision scheme."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts or any(p not in PRECISION_SCHEMES for p in parts):
        raise ValueError(f"expected comma-separated schemes from {', '.join(PRECISION_SCHEMES)}, got {text!r}")
    return parts


def parse_settings(text: str) -> tuple[str, ...]:
    """'fp32,rtn-g128' -> ('fp32', 'rtn-g128'), each a weight format or a named compression setting."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts or any(p not in COMPRESS_SETTINGS for p in parts):
        raise ValueError(f"expected comma-separated settings from {', '.join(COMPRESS_SETTINGS)}, got {text!r}")
    return parts


def options_dict(options: StudyOptions, *names: str) -> dict[str, object]:
    """The named study sizes, as JSON-friendly values for the conditions block."""
    values = asdict(options)
    return {n: list(values[n]) if isinstance(values[n], tuple) else values[n] for n in names}


def elapsed_since(t0: float, device: torch.device) -> float:
    synchronize(device)
    return time.perf_counter() - t0


def rate_text(value: float | None, digits: int = 1) -> str:
    """A measured figure for a progress line; `n/a` when it was not measured."""
    return "n/a" if value is None else f"{value:.{digits}f}"
