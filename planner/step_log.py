"""What a server's forward passes cost, read from its own step log (`python -m engine serve --step-log FILE`).

Why the planner reads it: a client's TTFT, TPOT and throughput each mix several kinds of pass (decodes
alone, decodes with a prompt chunk beside them) with HTTP and the client's own work, so a calibration
fitted to a few client figures can trade one kind of pass against another and still match them: on the
2-core CPU VM the fit from concurrency 1 and 8 priced decode passes 4-8% cheap and 500-token prompt
passes 4% dear, and missed TPOT at 16 streams by 7% (docs/BENCHMARKS.md, "Planner calibration"). The
server knows each pass's price; a calibration given its log fits the prices to the passes themselves.

A pass's price here is the time from its start to the next pass's start while the engine stayed busy:
what a stream waits between two tokens (the step and the loop's turn-around). A pass whose successor
started more than IDLE_GAP_S after it ended followed an idle engine, so its gap says nothing about it
and it is left out; so is each log's last pass (no successor).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from planner.errors import PlannerError

IDLE_GAP_S = 0.02  # a next pass that starts this long after one ends followed an idle engine: not a busy gap
STEP_KEYS = ("t", "step_ms", "decoding", "prefill_tokens")
MAX_LINE_BYTES = 16_384  # a step line is ~300 bytes; a longer one is not a step log (and is not read whole)
MAX_PASSES = 5_000_000  # a day of steps at 50 per second: enough for any fit, and bounded


@dataclass(frozen=True, slots=True)
class Pass:
    """One busy forward pass: sequences decoding in it, prompt tokens computed in it, and its gap."""

    decoding: int
    prompt_tokens: int
    gap_s: float  # this pass's start to the next one's


@dataclass(frozen=True, slots=True)
class PassClass:
    """The passes of one kind (decoding sequences, prompt tokens): how many, and their mean gap."""

    decoding: int
    prompt_tokens: int
    passes: int
    mean_s: float

    @property
    def busy_s(self) -> float:
        """The engine time these passes took: what a fit weighs them by."""
        return self.passes * self.mean_s


def read_passes(paths: Sequence[str | Path]) -> list[Pass]:
    """The busy passes of one or more step logs, in order; a missing file or a line that is not a step
    line is one PlannerError naming the file and line."""
    out: list[Pass] = []
    for path in paths:
        prev: dict | None = None
        for line in _lines(Path(path).expanduser()):
            if prev is not None:
                gap = line["t"] - prev["t"]
                if 0 < gap <= prev["step_ms"] / 1e3 + IDLE_GAP_S:
                    out.append(Pass(int(prev["decoding"]), int(prev["prefill_tokens"]), gap))
                    if len(out) > MAX_PASSES:
                        raise PlannerError(f"{path}: more than {MAX_PASSES} passes; give a shorter step log")
            prev = line
    return out


def _lines(path: Path) -> Iterator[dict]:
    try:
        f = path.open("rb")
    except OSError as exc:
        raise PlannerError(f"cannot read the step log {path}: {exc.strerror or exc}") from exc
    with f:
        number = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise PlannerError(f"{path}:{number}: not a step-log line (longer than {MAX_LINE_BYTES} bytes)")
            if raw.strip():
                yield _step(path, number, raw)


def _step(path: Path, number: int, raw: bytes) -> dict:
    """One step line with the fields a fit reads; anything else is one error naming the line."""
    try:
        line = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlannerError(f"{path}:{number}: not a step-log line ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(line, dict) or any(
        not isinstance(line.get(k), int | float) or isinstance(line.get(k), bool) or line[k] < 0 for k in STEP_KEYS
    ):
        raise PlannerError(f"{path}:{number}: a step-log line needs non-negative numbers for {', '.join(STEP_KEYS)}")
    return line


def pass_classes(passes: Iterable[Pass]) -> list[PassClass]:
    """Passes grouped by kind, in (decoding, prompt tokens) order; passes that did no work (an empty step)
    are left out."""
    groups: dict[tuple[int, int], list[float]] = defaultdict(list)
    for p in passes:
        if p.decoding or p.prompt_tokens:
            groups[(p.decoding, p.prompt_tokens)].append(p.gap_s)
    return [PassClass(b, t, len(v), sum(v) / len(v)) for (b, t), v in sorted(groups.items())]
