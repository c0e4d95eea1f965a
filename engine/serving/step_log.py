"""`serve --step-log FILE`: one JSON line per engine step, the server's own cost of each forward pass.

Why: what a client measures (TTFT, inter-token gaps) mixes the engine's passes with HTTP, the
client's own work and the passes of other requests. A planner that replays the scheduler pass by pass
(planner/replay.py) needs the price of each kind of pass as the server ran it, and a slow stream is
explained by the passes it sat through. Client timestamps cannot separate those; the engine thread can.

Each line: `t` (time.monotonic() at the step's start, s), `step_ms` (the whole step: scheduling,
drafting, forward, sampling), `forward_ms` (the model's forward alone), `draft_ms` (a draft model's
forwards), `prefill_tokens`, `decoding` (sequences decoding in it), `decode_tokens` (their tokens,
drafts included), `sequences` (sequences given tokens), `tokens` (tokens generated), `preempted`, and
after the step `running`, `waiting` and `kv_usage` (0..1). Lines are written as steps end, line-buffered, so a log
read while the server runs is whole up to its last line. A write that fails (disk full, file
removed) is said once in the server log and logging stops; the engine never fails because of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import TextIO

from engine.batch.batch_engine import StepResult
from engine.batch.loop import EngineSnapshot
from engine.errors import EngineError

logger = logging.getLogger("preflight.server")


class StepLog:
    """A step observer for `BatchLoop` that appends each step's line to a file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        try:
            self._file: TextIO | None = self.path.open("a", encoding="utf-8", buffering=1)
        except OSError as exc:
            raise EngineError(f"cannot write the step log {path}: {exc.strerror or exc}") from exc

    def __call__(self, result: StepResult, snap: EngineSnapshot) -> None:
        if self._file is None or result.step_s <= 0:  # closed, or an idle publish: no step ran
            return
        line = {
            "t": round(result.started_s, 6),
            "step_ms": round(result.step_s * 1e3, 3),
            "forward_ms": round(result.forward_s * 1e3, 3),
            "draft_ms": round(result.draft_s * 1e3, 3),
            "prefill_tokens": result.num_prefill_tokens,
            "decoding": result.num_decode_seqs,
            "decode_tokens": result.num_decode_tokens,
            "sequences": len(result.outputs),
            "tokens": sum(len(o.new_token_ids) for o in result.outputs),
            "preempted": result.num_preempted,
            "running": snap.num_running,
            "waiting": snap.num_waiting,
            "kv_usage": round(snap.kv_cache_usage, 4),
        }
        try:
            self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
        except (OSError, ValueError) as exc:  # ValueError: the file was closed under us
            logger.warning("the step log %s stopped: %s", self.path, exc)
            self.close()

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):  # closing is best effort: the lines written are on disk
                file.close()
