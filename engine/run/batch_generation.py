"""One request run alone through the server's batch engine: what `generate --speculative` streams.

The single-stream `Generation` (runtime.py) has no speculation; the batch engine has it (n-gram
prompt lookup, or the model in a cheaper format drafting, verified by rejection sampling).
`BatchGeneration` steps a `BatchEngine` that holds this one request and streams its text by the
same rules as `Generation`: the same `TextStream` (a stop string cuts the text, end-of-sequence
ends it unshown, a dangling partial character flushes as U+FFFD) and the same `GenerationResult`,
so a caller reads either one the same way. It owns no thread: the server's `BatchLoop` does this
for many requests at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from engine.batch.batch_engine import BatchEngine
from engine.errors import EngineError
from engine.run.runtime import GenerationResult
from engine.sampling import SamplingParams
from engine.text_stream import TextStream


@dataclass(frozen=True, slots=True)
class SpeculationFigures:
    """How speculation went for a finished run: the batch engine's draft counters and what follows from them.

    The counts are kept beside the rates so that each rate can be recomputed; a rate is None when
    no draft was proposed (n-gram lookup found no match, or a sampled request with n-gram lookup).
    """

    method: str  # "ngram" or "draft:FORMAT"
    num_speculative_tokens: int  # k, drafts per step at most
    num_proposed: int
    num_accepted: int
    num_verify_steps: int  # target forwards that verified drafts
    acceptance_rate: float | None
    tokens_per_target_step: float | None

    @classmethod
    def of(cls, llm: BatchEngine, method: str) -> SpeculationFigures:
        stats = llm.scheduler.spec_stats
        return cls(
            method=method,
            num_speculative_tokens=llm.config.speculative_tokens,
            num_proposed=stats.num_proposed,
            num_accepted=stats.num_accepted,
            num_verify_steps=stats.num_verify_steps,
            acceptance_rate=stats.acceptance_rate,
            tokens_per_target_step=stats.tokens_per_target_step,
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class BatchGeneration:
    """A single request decoded by a `BatchEngine` of its own; iterating yields text deltas as they become final."""

    def __init__(self, llm: BatchEngine, prompt_ids: list[int], params: SamplingParams) -> None:
        self._llm = llm
        self._prompt = list(prompt_ids)
        self._params = params
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        llm, params = self._llm, self._params
        if llm.has_unfinished:
            raise EngineError("a BatchGeneration runs its request alone: the batch engine already holds requests")
        text = TextStream(llm.loaded.tokenizer.stream_decoder(), params.stop)
        t0 = time.perf_counter()
        seq_id = llm.add_request(self._prompt, params)
        ids: list[int] = []
        logprobs: list[float] = []
        finish: str | None = None
        prefill_s: float | None = None
        try:
            # Each step computes at least one prompt token or outputs at least one token: a bound, not a hang.
            for _ in range(len(self._prompt) + params.max_tokens + 1):
                outputs = [out for out in llm.step().outputs if out.seq_id == seq_id]
                if outputs and prefill_s is None:
                    prefill_s = time.perf_counter() - t0
                for out in outputs:
                    lps = out.logprobs or []
                    for i, token in enumerate(out.new_token_ids):
                        ids.append(token)
                        if i < len(lps):
                            logprobs.append(lps[i])
                        if text.push(token):  # the rest of this step's tokens come after the stop: dropped
                            finish = "stop"
                            break
                        if final := text.take():
                            yield final
                    if finish is None and out.finished:
                        text.flush()  # end-of-sequence or the length limit: the held bytes show, as in Generation
                        finish = out.finish_reason or "stop"
                if finish is not None:
                    break
            else:
                raise EngineError("the batch engine did not finish the request within its step bound")
        finally:
            llm.finish(seq_id)  # a stop string, an error or a caller that stopped early: free its blocks now
        if tail := text.rest():
            yield tail
        total = time.perf_counter() - t0
        first = prefill_s if prefill_s is not None else total
        self.result = GenerationResult(
            text=text.text,
            token_ids=ids,
            prompt_tokens=len(self._prompt),
            finish_reason=finish,
            prefill_s=first,
            decode_s=total - first,
            logprobs=logprobs if params.logprobs else None,
        )
