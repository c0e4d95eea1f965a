"""Measured optimization studies of the bundled engine: `kv`, `quant`, `batch`, `precision` and `compress`.

`STUDIES[name](StudyOptions(...), progress=print)` runs one on this machine
and returns a `StudyResult`; `format_study` renders it as a fixed-width
console block and `study_frame` as a DataFrame for the dashboard. The CLI
(`python -m engine study ...`) and the Engine studies page call the same
functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from engine.quant.roundtrip import PRECISION_SCHEMES
from engine.studies.base import (
    COMPRESS_SETTINGS,
    StudyOptions,
    StudyResult,
    StudyRun,
    eval_text,
    option_help,
    parse_formats,
    parse_schemes,
    parse_settings,
    parse_sizes,
)
from engine.studies.batch import run_batch_study
from engine.studies.compress import run_compress_study
from engine.studies.kv import run_kv_study
from engine.studies.precision import run_precision_study
from engine.studies.quant import run_quant_study

__all__ = [
    "COMPRESS_SETTINGS",
    "PRECISION_SCHEMES",
    "STUDIES",
    "StudyOptions",
    "StudyResult",
    "eval_text",
    "format_study",
    "option_help",
    "parse_formats",
    "parse_schemes",
    "parse_settings",
    "parse_sizes",
    "study_frame",
]

STUDIES: dict[str, StudyRun] = {
    "kv": run_kv_study,
    "quant": run_quant_study,
    "batch": run_batch_study,
    "precision": run_precision_study,
    "compress": run_compress_study,
}

TITLES = {
    "kv": "KV cache study: decode with and without the cache as the sequence grows",
    "quant": "Weight format study: size, load, speed and quality against fp32",
    "batch": "Batch study: batched greedy decode over one KV cache",
    "precision": "Precision study: every linear layer in FP8 E4M3/E5M2, INT8 and INT4 against fp32",
    "compress": "Compression study: GPTQ, pruning, low rank and every format; size, load, speed and quality",
}


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    header: str
    kind: str  # int | f1 | f2 | f3 | f4 | mib | bool | str


# Quality against fp32 on the evaluation text: the same three figures wherever a study scores a model.
QUALITY_COLUMNS = (
    Column("perplexity", "perplexity", "f3"),
    Column("mean_kl_nats", "mean KL", "f4"),
    Column("top1_agreement", "top-1 agree", "f3"),
)

COLUMNS = {
    "kv": (
        Column("seq_len", "seq_len", "int"),
        Column("prompt_tokens", "prompt", "int"),
        Column("output_tokens", "output", "int"),
        Column("cached_decode_tok_s", "kv tok/s", "f1"),
        Column("uncached_decode_tok_s", "no-kv tok/s", "f1"),
        Column("decode_speedup", "decode x", "f2"),
        Column("cached_total_s", "kv total s", "f2"),
        Column("uncached_total_s", "no-kv total s", "f2"),
        Column("total_speedup", "total x", "f2"),
        Column("same_tokens", "same tokens", "bool"),
    ),
    "quant": (
        Column("format", "format", "str"),
        Column("weight_bytes", "weights MiB", "mib"),
        Column("cold_load_s", "cold load s", "f2"),
        Column("warm_load_s", "warm load s", "f2"),
        Column("prefill_tok_s", "prefill tok/s", "f1"),
        Column("decode_tok_s", "decode tok/s", "f1"),
        *QUALITY_COLUMNS,
    ),
    "batch": (
        Column("batch_size", "batch", "int"),
        Column("prefill_s", "prefill s", "f3"),
        Column("decode_s", "decode s", "f3"),
        Column("aggregate_tok_s", "agg tok/s", "f1"),
        Column("per_token_latency_ms", "ms/token", "f1"),
        Column("kv_cache_bytes", "KV MiB", "mib"),
        Column("rss_peak_bytes", "RSS peak MiB", "mib"),
        Column("rss_peak_delta_bytes", "RSS delta MiB", "mib"),
    ),
    "precision": (
        Column("scheme", "scheme", "str"),
        Column("weight_rel_fro", "weight rel fro", "f4"),
        Column("weight_max_abs", "weight max abs", "f4"),
        Column("output_rel_err", "output rel err", "f4"),
        *QUALITY_COLUMNS,
    ),
    "compress": (
        Column("setting", "setting", "str"),
        Column("weight_bytes", "weights MiB", "mib"),
        Column("bytes_vs_fp32", "size x", "f2"),
        Column("load_s", "load s", "f2"),
        Column("prefill_tok_s", "prefill tok/s", "f1"),
        Column("decode_tok_s", "decode tok/s", "f1"),
        Column("decode_vs_fp32", "decode x", "f2"),
        *QUALITY_COLUMNS,
        Column("pareto_size", "front size", "bool"),
        Column("pareto_speed", "front speed", "bool"),
        Column("saves_nothing_on", "saves nothing on", "str"),
    ),
}
# The console table of a study with more rows than a console shows (precision: one per layer and scheme)
# keeps the rows this picks; --json and the page keep them all.
CONSOLE_ROWS: dict[str, Callable[[dict[str, object]], bool]] = {"precision": lambda row: row.get("scope") == "model"}
LABEL_WIDTH = 22


def _cell(value: object, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "mib":
        return f"{value / 2**20:.1f}"  # type: ignore[operator]
    if kind.startswith("f"):
        return f"{value:.{kind[1:]}f}"
    if kind == "bool":
        return "yes" if value else "no"
    return str(value)


def _condition(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def format_study(result: StudyResult) -> str:
    """A fixed-width console block: conditions (label, value), a rule, the table, a rule, the notes."""
    columns = COLUMNS.get(result.name) or tuple(Column(k, k, "str") for k in (result.rows[:1] or [{}])[0])
    keep = CONSOLE_ROWS.get(result.name, lambda _row: True)
    cells = [[_cell(row.get(c.key), c.kind) for c in columns] for row in result.rows if keep(row)]
    widths = [max([len(c.header), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    table_width = sum(widths) + 2 * (len(widths) - 1)
    conditions = [f"{k.replace('_', ' '):<{LABEL_WIDTH}}{_condition(v)}" for k, v in result.conditions.items()]
    width = max([table_width, len(TITLES.get(result.name, result.name)), *(len(line) for line in conditions)])
    line = lambda parts: "  ".join(p.rjust(w) for p, w in zip(parts, widths, strict=True))  # noqa: E731
    out = [TITLES.get(result.name, result.name), "=" * width, *conditions, "-" * width]
    out += [line([c.header for c in columns]), "-" * width, *(line(r) for r in cells), "=" * width]
    out += [f"- {note}" for note in result.notes]
    return "\n".join(out)


def study_frame(result: StudyResult) -> pd.DataFrame:
    """The rows as a DataFrame, plus a `*_mib` column beside every `*_bytes` column, for charts and tables."""
    frame = pd.DataFrame(result.rows)
    for col in [c for c in frame.columns if c.endswith("_bytes")]:
        frame[col.removesuffix("_bytes") + "_mib"] = frame[col].astype("float") / 2**20
    return frame
