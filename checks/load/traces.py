"""Recorded LLM-serving traces, replayed: arrival times, lengths and shared prefixes of real traffic.

Two public formats, told apart by their first line:

- the Azure LLM inference traces (2023 Splitwise, 2024 DynamoLLM): CSV with the
  header `TIMESTAMP,ContextTokens,GeneratedTokens`, an absolute wall-clock time
  per request;
- Mooncake's JSONL (FAST'25): one object per line with `timestamp` (ms since the
  first request), `input_length`, `output_length` and `hash_ids`. Each hash id
  names a block of `block_tokens` prompt tokens (512 in the published traces);
  two requests that list the same ids share that prefix.

A trace gives the lengths and the times, never the text, so prompts are random
tokens of the recorded lengths (`checks.load.workloads`). Shared hash ids become
really shared token blocks, so a server's prefix cache sees what it would see in
production. Files are read line by line and reading stops at the window or the
request limit, so a week-long trace costs only the part that is replayed.

A trace can be thinned (`sample`): each row inside the window is kept on its own
with that probability, from a generator seeded by the run's seed, so a machine that
serves a few requests a second still sees the trace's bursts and mix of lengths at
its recorded times, and two servers replayed with one seed get the same rows.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from checks.load.profiles import LoadProfile
from checks.load.prompts import PromptRequest
from checks.load.tokenizer import TextTokenizer
from checks.load.workloads import TokenFitter, normal_ids, prompts_of_lengths, stable_ids

TraceFormat = Literal["azure", "mooncake"]
TRACE_FORMATS: tuple[str, ...] = ("azure", "mooncake")
DEFAULT_BLOCK_TOKENS = 512  # Mooncake's published traces hash prompts in blocks of 512 tokens
MAX_LINE_BYTES = 1 << 20  # a trace line is tens of bytes; a longer one is not a trace
MAX_TOKENS_PER_REQUEST = 1 << 20  # lengths beyond a million tokens are a corrupt row, not traffic
AZURE_COLUMNS = ("timestamp", "contexttokens", "generatedtokens")


class TraceError(ValueError):
    """A trace file that cannot be replayed; the message names the file, the line and what to fix."""


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One recorded request: when it arrived (seconds after the trace's first request) and its lengths."""

    arrival_s: float
    input_len: int
    output_len: int
    hash_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Trace:
    """The rows of one trace that will be replayed, in arrival order."""

    path: Path
    format: TraceFormat
    rows: tuple[TraceRow, ...]
    block_tokens: int = DEFAULT_BLOCK_TOKENS
    sample: float = 1.0  # the share of the window's rows that were kept (`load_trace(sample=...)`)

    @property
    def shares_prefixes(self) -> bool:
        return any(row.hash_ids for row in self.rows)

    def sampling(self) -> str:
        """'' for a whole trace, else ' 1 in N sampled' (N to three figures)."""
        return "" if self.sample == 1.0 else f" 1 in {1 / self.sample:.3g} sampled"

    def describe(self) -> str:
        span = self.rows[-1].arrival_s - self.rows[0].arrival_s if self.rows else 0.0
        shared = f", shared prefixes in blocks of {self.block_tokens} tokens" if self.shares_prefixes else ""
        return (
            f"{self.format} trace {self.path.name}: {len(self.rows)} requests{self.sampling()} "
            f"over {span:.1f} s of trace{shared}"
        )

    def profile(self, speed: float = 1.0, skip: int = 0) -> LoadProfile:
        """The arrival schedule of rows[skip:], `speed` times faster, starting at 0 with the first of them."""
        if not speed > 0 or math.isinf(speed):
            raise TraceError(f"trace speed {speed!r}: give a finite factor above 0 (2 replays twice as fast)")
        rows = self.rows[skip:]
        if not rows:
            raise TraceError(f"{self.path.name}: no requests are left to replay after {skip} warm-up requests")
        start = rows[0].arrival_s
        offsets = tuple((row.arrival_s - start) / speed for row in rows)
        name = self.path.name + self.sampling() + (f" x{speed:g}" if speed != 1.0 else "")
        return LoadProfile("trace", offsets=offsets, name=name)


class _MooncakeLine(BaseModel):
    """One Mooncake JSONL line; other keys (some variants carry more) are ignored."""

    model_config = ConfigDict(extra="ignore")

    timestamp: float = Field(ge=0, allow_inf_nan=False)
    input_length: int = Field(ge=1, le=MAX_TOKENS_PER_REQUEST)
    output_length: int = Field(ge=1, le=MAX_TOKENS_PER_REQUEST)
    hash_ids: list[int] = Field(default_factory=list)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line, refusing lines no trace has."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise TraceError(f"cannot read the trace {path}: {exc.strerror or exc}") from None
    with handle:
        for number, raw in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise TraceError(f"{path.name}:{number}: a line longer than {MAX_LINE_BYTES} bytes is not a trace row")
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                raise TraceError(f"{path.name}:{number}: not UTF-8 text; give a CSV or JSONL trace") from None
            if text:
                yield number, text


def _azure_time(text: str, where: str) -> float:
    try:
        moment = datetime.fromisoformat(text.strip())
        # the traces write UTC without saying so; reading them as local time would bend them at a DST change
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    except ValueError:
        raise TraceError(f"{where}: TIMESTAMP {text!r} is not a date and time like 2023-11-16 18:15:46.68") from None


def _azure_count(text: str, column: str, where: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise TraceError(f"{where}: {column} {text!r} is not a whole number of tokens") from None
    if not 0 <= value <= MAX_TOKENS_PER_REQUEST:
        raise TraceError(f"{where}: {column} {value} is outside 0..{MAX_TOKENS_PER_REQUEST}")
    return value


def _azure_rows(path: Path, lines: Iterator[tuple[int, str]], header: str) -> Iterator[tuple[int, float, TraceRow]]:
    names = [name.strip().lower() for name in next(csv.reader(io.StringIO(header)))]
    missing = [c for c in AZURE_COLUMNS if c not in names]
    if missing:
        raise TraceError(
            f"{path.name}:1: an Azure trace's header has TIMESTAMP, ContextTokens and GeneratedTokens "
            f"(missing {', '.join(missing)}); a Mooncake trace is JSONL"
        )
    at = [names.index(c) for c in AZURE_COLUMNS]
    for number, text in lines:
        where = f"{path.name}:{number}"
        fields = next(csv.reader(io.StringIO(text)))
        if len(fields) < len(names):
            raise TraceError(f"{where}: {len(fields)} columns where the header has {len(names)}")
        seconds = _azure_time(fields[at[0]], where)
        context = _azure_count(fields[at[1]], "ContextTokens", where)
        generated = _azure_count(fields[at[2]], "GeneratedTokens", where)
        # a request that read or wrote nothing (the 2023 traces have a few) still arrives; send it one token
        yield number, seconds, TraceRow(0.0, max(1, context), max(1, generated))


def _mooncake_rows(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, float, TraceRow]]:
    for number, text in lines:
        where = f"{path.name}:{number}"
        try:
            line = _MooncakeLine.model_validate(json.loads(text))
        except json.JSONDecodeError as exc:
            raise TraceError(f"{where}: not a JSON object ({exc.msg})") from None
        except ValidationError as exc:
            problem = exc.errors()[0]
            field = ".".join(str(p) for p in problem["loc"]) or "line"
            raise TraceError(f"{where}: {field}: {problem['msg']}") from None
        yield (
            number,
            line.timestamp / 1000.0,
            TraceRow(0.0, line.input_length, line.output_length, tuple(line.hash_ids)),
        )


def check_sample(fraction: float) -> float:
    """`fraction` if it is a share of rows a thinned replay can keep (above 0, at most 1), else a TraceError."""
    if not 0 < fraction <= 1:  # NaN fails both comparisons
        raise TraceError(
            f"trace sample {fraction!r}: give the share of rows to keep, above 0 and at most 1 "
            "(0.05 keeps about 1 in 20; 1 keeps them all)"
        )
    return fraction


def sample_draws(fraction: float, seed: int) -> Iterator[bool]:
    """Keep-or-drop for each row in turn: True with probability `fraction`, the same sequence for the same seed.

    One draw per row read, kept or not, so a row's fate depends only on its place in
    the trace and the seed, never on a limit or on what another run replays.
    """
    check_sample(fraction)  # here, not in a generator body, so a bad fraction fails before any row is read
    draws = random.Random(f"trace-sample:{seed}")
    return (draws.random() < fraction for _ in itertools.count())  # random() < 1.0: a fraction of 1 keeps all


def load_trace(
    path: str | Path,
    *,
    window_s: float | None = None,
    limit: int | None = None,
    block_tokens: int = DEFAULT_BLOCK_TOKENS,
    sample: float = 1.0,
    seed: int = 0,
) -> Trace:
    """The first `limit` requests of the trace that arrive within `window_s` seconds of trace time,
    each row of the window kept with probability `sample` (`sample_draws`, seeded by `seed`).

    The window is trace time from the first row, kept or not, and the limit counts
    kept rows. Rows must be in arrival order (both published formats are): reading
    stops at the first row past the window, which is only right for a sorted file.
    """
    path = Path(path)
    if window_s is not None and not window_s > 0:
        raise TraceError(f"trace window {window_s!r}: give a duration above 0")
    if limit is not None and limit < 1:
        raise TraceError(f"trace limit {limit!r}: replay at least 1 request")
    if not 1 <= block_tokens <= MAX_TOKENS_PER_REQUEST:
        raise TraceError(f"block size {block_tokens!r}: give the trace's tokens per hash id (512 for Mooncake)")
    keeps = sample_draws(sample, seed)
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise TraceError(f"{path.name}: the file is empty; give an Azure CSV or Mooncake JSONL trace")
    fmt: TraceFormat
    if first[1].startswith("{"):
        fmt, rows = "mooncake", _mooncake_rows(path, itertools.chain([first], lines))
    else:
        fmt, rows = "azure", _azure_rows(path, lines, first[1])
    kept: list[TraceRow] = []
    start = previous = None
    read = 0
    for number, seconds, row in rows:
        if previous is not None and seconds < previous:
            raise TraceError(
                f"{path.name}:{number}: this request arrives before the one above it; sort the trace by time"
            )
        previous = seconds
        start = seconds if start is None else start
        arrival = seconds - start
        if window_s is not None and arrival > window_s:
            break
        if fmt == "mooncake" and len(row.hash_ids) > math.ceil(row.input_len / block_tokens):
            raise TraceError(
                f"{path.name}:{number}: {len(row.hash_ids)} hash ids of {block_tokens} tokens for a "
                f"{row.input_len}-token prompt; is the block size right (--trace-block-tokens)?"
            )
        read += 1
        if not next(keeps):
            continue
        kept.append(TraceRow(arrival, row.input_len, row.output_len, row.hash_ids))
        if limit is not None and len(kept) >= limit:
            break
    if not kept and read:
        raise TraceError(
            f"{path.name}: a sample of {sample:g} kept none of the window's {read} rows; "
            "raise it (--trace-sample) or widen the window"
        )
    if not kept:
        raise TraceError(f"{path.name}: no request to replay (only a header?)")
    return Trace(path, fmt, tuple(kept), block_tokens, sample)


def trace_requests(trace: Trace, tokenizer: TextTokenizer, *, seed: int = 0) -> list[PromptRequest]:
    """One prompt per row, of the row's lengths; rows that list the same hash ids share those token blocks.

    A prompt's tokens are its blocks in order, the last one cut to the recorded
    length; tokens that no block covers are drawn for that prompt alone. The
    text is decoded once and counted again, so `input_tokens` is the real count.
    """
    source = f"trace:{trace.path.name}"
    if not trace.shares_prefixes:
        lengths = [(row.input_len, row.output_len) for row in trace.rows]
        return prompts_of_lengths(lengths, tokenizer, seed=seed, source=source)
    fitter = TokenFitter(tokenizer, normal_ids(tokenizer), random.Random(f"trace:{seed}"))
    blocks: dict[int, list[int]] = {}
    requests = []
    for index, row in enumerate(trace.rows):
        ids: list[int] = []
        for hash_id in row.hash_ids:
            if hash_id not in blocks:
                blocks[hash_id] = stable_ids(fitter, trace.block_tokens)
            ids.extend(blocks[hash_id])
        ids = ids[: row.input_len] + fitter.draw(max(0, row.input_len - len(ids)))
        text = tokenizer.decode(ids)
        requests.append(
            PromptRequest(
                prompt=text,
                messages=None,
                max_tokens=row.output_len,
                input_tokens=len(tokenizer.encode(text)),
                ignore_eos=True,
                source=f"{source}#{index}",
            )
        )
    return requests
