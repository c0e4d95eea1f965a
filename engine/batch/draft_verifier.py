"""Which drafted tokens the target keeps: exact for greedy, rejection sampling for sampled requests.

The target scores k drafted tokens in one forward (k + 1 rows of logits: one per
draft position and one after the last draft). What is kept must leave the output
exactly what the target alone would give:

- **Greedy**: keep the longest prefix of the draft equal to the target's own picks,
  then the target's pick at the first mismatch (or after the whole draft).
- **Sampling** (the standard speculative-sampling rule): draft token x, drawn from the
  draft's distribution q, is kept with probability min(1, p(x) / q(x)) where p is the
  target's. At the first rejection the replacement is drawn from normalize(max(0, p - q)),
  and after k acceptances a bonus token is drawn from the target's next distribution.
  Each emitted token is then distributed exactly as under the target alone.

p and q are both what `engine.sampling.token_probs` gives for the request: the same
penalty, temperature and top-k / top-p / min-p filters, and the same seen tokens
(the context plus the drafts before the position).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.batch.ngram_drafter import accept_drafts
from engine.sampling import SamplingParams, adjusted_logits, argmax_ids, draw, token_probs


def greedy_picks(
    rows: torch.Tensor, params: SamplingParams, seen_ids: Sequence[int], draft_ids: Sequence[int]
) -> list[int]:
    """The target's greedy pick at each of the k + 1 rows, row j having seen the context plus draft[:j]."""
    if params.repetition_penalty == 1.0:
        return argmax_ids(rows)
    seen = list(seen_ids)
    return [argmax_ids(adjusted_logits(rows[j], params, seen + list(draft_ids[:j]))[None])[0] for j in range(len(rows))]


def target_probs(
    rows: torch.Tensor, params: SamplingParams, seen_ids: Sequence[int], draft_ids: Sequence[int]
) -> torch.Tensor:
    """The target's sampling distribution at each of the k + 1 rows (rows, vocab), as for `greedy_picks`."""
    if params.repetition_penalty == 1.0:
        return token_probs(rows, params)
    seen = list(seen_ids)
    return torch.stack([token_probs(rows[j], params, seen + list(draft_ids[:j])) for j in range(len(rows))])


def accept_by_rejection(
    draft_ids: Sequence[int],
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    generator: torch.Generator | None,
) -> list[int]:
    """Tokens to append after sampled drafts: the accepted prefix, then one token from the target side.

    `draft_probs` (k, vocab) holds the distribution each draft token was drawn from;
    `target_probs` (k + 1, vocab) the target's at the same positions plus the one after.
    Always at least one token, so a step never does worse than plain decoding.
    """
    k = len(draft_ids)
    if draft_probs.shape[0] != k or target_probs.shape[0] != k + 1:
        raise ValueError(
            f"need {k} draft rows and {k + 1} target rows for {k} drafts, "
            f"got {draft_probs.shape[0]} and {target_probs.shape[0]}"
        )
    if k == 0:
        return [draw(target_probs[0], generator)]
    index = torch.arange(k, device=draft_probs.device)
    ids = torch.tensor(list(draft_ids), dtype=torch.long, device=draft_probs.device)
    q = draft_probs[index, ids].double()
    p = target_probs[index, ids].double()
    if bool((q <= 0).any()):
        raise ValueError("a draft token has probability 0 under the draft distribution it was said to come from")
    u = torch.rand(k, dtype=torch.float64, generator=generator, device=draft_probs.device)
    rejected = (u * q >= p).nonzero()
    if rejected.numel() == 0:
        return [*draft_ids, draw(target_probs[k], generator)]
    j = int(rejected[0, 0])
    residual = (target_probs[j].double() - draft_probs[j].double()).clamp_min(0.0)
    if float(residual.sum()) <= 0.0:  # p == q everywhere: a rejection had probability 0; rounding made one
        residual = target_probs[j].double()
    return [*draft_ids[:j], draw(residual, generator)]


def verify_drafts(
    rows: torch.Tensor,
    draft_ids: Sequence[int],
    draft_probs: torch.Tensor | None,
    params: SamplingParams,
    seen_ids: Sequence[int],
    generator: torch.Generator | None,
) -> list[int]:
    """Tokens to append for one sequence, from the target's k + 1 logit rows over its drafts.

    Greedy requests need no draft distribution (n-gram drafts have none); sampled
    ones need the one each draft token was drawn from.
    """
    if params.greedy:
        return accept_drafts(draft_ids, greedy_picks(rows, params, seen_ids, draft_ids))
    if draft_probs is None:
        raise ValueError("sampled drafts are verified against the distribution they came from; none was given")
    return accept_by_rejection(draft_ids, draft_probs, target_probs(rows, params, seen_ids, draft_ids), generator)
