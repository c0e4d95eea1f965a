"""Helpers the batch-engine tests share: drive an engine until its requests finish."""

from __future__ import annotations

from collections.abc import Iterable

from engine.batch.batch_engine import BatchEngine


def run_until_done(llm: BatchEngine, seq_ids: Iterable[int], max_steps: int = 5000) -> dict[int, list[int]]:
    """Step `llm` until nothing is left; the new token ids of each sequence (a bounded loop, not a hang)."""
    outputs: dict[int, list[int]] = {seq_id: [] for seq_id in seq_ids}
    for _ in range(max_steps):
        if not llm.has_unfinished:
            return outputs
        for out in llm.step().outputs:
            outputs[out.seq_id].extend(out.new_token_ids)
    raise AssertionError("engine did not finish within the step bound")
