"""llama.cpp's own benchmark tool (`llama-bench`) as the single-stream peer, in each weight layout it can run.

llama.cpp repacks Q4/Q8 weights at load into layouts for the CPU's SIMD units (AVX-512, AMX)
unless told not to. On some machines the repacked path is the fast one; on a Xeon with AMX
it crashed in the first prefill (docs/BENCHMARKS.md). The issue's decode target is set
against repacking off, its stretch against the default. So both are measured here, one
after the other in fresh processes: the default first, then repacking off. A run that dies
(a signal, a non-zero exit, no JSON) is recorded as a crash with the tail of its output,
never retried in the same layout, and the other layout still runs: the crash is detected,
not assumed from the CPU's flags.

`llama-bench -p P -n 0` times a P-token prompt (prefill) and `-p 0 -n N` N generated
tokens (decode, from an empty context); `-r` repeats each and reports the mean and the
samples in its JSON output (`avg_ts`, `samples_ts`: tokens per second).
"""

from __future__ import annotations

import json
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench._llama_server import DEFAULT_LAYOUT, NO_REPACK_LAYOUT, no_repack_args

RUN_TIMEOUT_S = 900.0
TAIL_CHARS = 1500


@dataclass(slots=True)
class LlamaBenchResult:
    """One layout's figures, or why it has none."""

    layout: str  # DEFAULT_LAYOUT or NO_REPACK_LAYOUT
    args: list[str]
    decode_tok_s: list[float] = field(default_factory=list)  # per repeat
    prefill_tok_s: list[float] = field(default_factory=list)
    crash: str | None = None  # the exit status and the output's tail when it did not finish

    @property
    def decode(self) -> float | None:
        return statistics.median(self.decode_tok_s) if self.decode_tok_s else None

    @property
    def prefill(self) -> float | None:
        return statistics.median(self.prefill_tok_s) if self.prefill_tok_s else None


def _samples(entries: list[dict], *, prompt: bool) -> list[float]:
    """Tokens/s per repeat of the prefill (n_gen 0) or decode (n_prompt 0) test in llama-bench's JSON."""
    for entry in entries:
        if (entry.get("n_gen") == 0) == prompt:  # a prefill test generates nothing; a decode test has no prompt
            samples = entry.get("samples_ts") or [entry.get("avg_ts")]
            return [float(s) for s in samples if s]
    return []


def run_layout(
    binary: Path,
    model: Path,
    threads: int,
    tokens: int,
    prefill_tokens: int,
    repeats: int,
    extra: list[str],
    layout: str,
) -> LlamaBenchResult:
    """One llama-bench process: the prefill test and the decode test of one layout."""
    args = [
        *("-m", str(model), "-t", str(threads), "-r", str(repeats)),
        *("-p", str(prefill_tokens), "-n", str(tokens), "-o", "json"),
        *extra,
    ]
    result = LlamaBenchResult(layout, args)
    try:
        proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        result.crash = f"{type(exc).__name__}: {exc}"
        return result
    try:
        entries = json.loads(proc.stdout) if proc.returncode == 0 else None
    except json.JSONDecodeError:
        entries = None
    if not isinstance(entries, list):
        status = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        result.crash = f"{status}: {(proc.stderr or proc.stdout)[-TAIL_CHARS:].strip()}"
        return result
    result.prefill_tok_s = _samples(entries, prompt=True)
    result.decode_tok_s = _samples(entries, prompt=False)
    if not result.prefill_tok_s or not result.decode_tok_s:
        result.crash = "llama-bench's JSON had no prefill or no decode test"
    return result


def measure_layouts(
    binary: Path, model: Path, threads: int, tokens: int, prefill_tokens: int, repeats: int
) -> list[LlamaBenchResult]:
    """The default layout, then repacking off when this llama-bench can turn it off."""
    runs = [run_layout(binary, model, threads, tokens, prefill_tokens, repeats, [], DEFAULT_LAYOUT)]
    off = no_repack_args(binary)
    if off is not None:
        runs.append(run_layout(binary, model, threads, tokens, prefill_tokens, repeats, list(off), NO_REPACK_LAYOUT))
    return runs
