"""Quality of a compressed model against the fp32 reference on the evaluation text, scored as the quant study scores.

The reference's next-token log-probabilities over engine/data/eval.txt are computed once
(`reference_scores`) and every compressed model is compared with them (`quality_against`): perplexity
of the real next tokens, mean KL(fp32 || compressed) and top-1 agreement. The evaluation text is never
the calibration text (engine/data/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.run.runtime import Engine
from engine.studies.base import MIN_COUNTS, StudyOptions, eval_ids
from engine.studies.quant import next_token_logprobs, quality, scored_targets

EVAL_TOKENS = StudyOptions().eval_max_tokens  # the quant study's sizes, so the figures compare with its table
EVAL_WINDOW = StudyOptions().eval_window


@dataclass(frozen=True, slots=True)
class ReferenceScores:
    """The fp32 model's log-probabilities over the scored positions of the evaluation text."""

    ids: list[int]
    window: int
    logprobs: torch.Tensor
    targets: torch.Tensor


def reference_scores(reference: Engine, max_tokens: int = EVAL_TOKENS, window: int = EVAL_WINDOW) -> ReferenceScores:
    """The first `max_tokens` of the evaluation text (all of it when it is shorter, as in the quant study)."""
    ids = eval_ids(reference.loaded.tokenizer, MIN_COUNTS["eval_max_tokens"])[:max_tokens]
    return scores_over(reference, ids, window)


def scores_over(reference: Engine, ids: list[int], window: int) -> ReferenceScores:
    """The reference's scores over any tokens: the evaluation text's, or the calibration windows a method trained on."""
    return ReferenceScores(ids, window, next_token_logprobs(reference, ids, window), scored_targets(ids, window))


def quality_against(engine: Engine, reference: ReferenceScores) -> dict[str, float]:
    """perplexity, mean_kl_nats and top1_agreement of `engine` against the reference, on the same tokens."""
    logprobs = next_token_logprobs(engine, reference.ids, reference.window)
    return quality(logprobs, reference.logprobs, reference.targets)
