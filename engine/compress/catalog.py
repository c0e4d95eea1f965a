"""Named compression settings: the one list the compression study and bench/compress_quality.py run from.

A name stands for a chain of settings. The first is a method `pipeline.compress` runs on the fp32
reference; each later one refines the model the chain made so far, by the function `REFINERS` holds
for its method (a refinement needs the reference too, e.g. as a teacher). A refined setting is then
one more entry, `"rtn-g128+distill": (RtnSettings(group_size=128), DistillSettings(...))`, once its
method is registered in `REFINERS` (distillation is).
"""

from __future__ import annotations

from collections.abc import Callable

from engine.compress.distill import distill
from engine.compress.pipeline import Compressed, Progress, compress
from engine.compress.recipe import (
    DistillSettings,
    GptqSettings,
    LowRankSettings,
    PruneSettings,
    RtnSettings,
    Settings,
)
from engine.model.loader import LoadedModel

Chain = tuple[Settings, ...]
# The distilled settings' training budget: what bench/compress_quality.py measured (docs/BENCHMARKS.md).
DISTILL_MINUTES = 3.0
Refiner = Callable[..., Compressed]  # (settings, reference, compressed so far, progress=...) -> Compressed

CATALOG: dict[str, Chain] = {
    "rtn-g128": (RtnSettings(group_size=128),),
    "rtn-g128+distill": (RtnSettings(group_size=128), DistillSettings(minutes=DISTILL_MINUTES)),
    "gptq-g128": (GptqSettings(group_size=128),),
    "gptq-g128+distill": (GptqSettings(group_size=128), DistillSettings(minutes=DISTILL_MINUTES)),
    "gptq-g128-act": (GptqSettings(group_size=128, act_order=True),),
    "rtn-g32": (RtnSettings(group_size=32),),
    "gptq-g32": (GptqSettings(group_size=32),),
    "prune-0.25": (PruneSettings(sparsity=0.25),),
    "prune-0.5": (PruneSettings(sparsity=0.5),),
    "prune-2:4": (PruneSettings(pattern="2:4"),),
    "rank-0.75": (LowRankSettings(rank_fraction=0.75),),
    "rank-0.5": (LowRankSettings(rank_fraction=0.5),),
    "arank-0.75": (LowRankSettings(rank_fraction=0.75, activation_aware=True),),
    "arank-0.5": (LowRankSettings(rank_fraction=0.5, activation_aware=True),),
}
# The compression study's default: GPTQ against round-to-nearest where they differ (group 128; at group 32
# both re-find the file's own Q4_1 grid), round-to-nearest distilled toward fp32, both pruning kinds, and
# low rank below and above the break-even rank.
STUDY_DEFAULT = (
    "rtn-g128",
    "rtn-g128+distill",
    "gptq-g128",
    "prune-0.25",
    "prune-0.5",
    "prune-2:4",
    "rank-0.5",
    "rank-0.75",
)
REFINERS: dict[str, Refiner] = {"distill": distill}


def describe_chain(chain: Chain) -> str:
    """What the chain does, in a few words: each step's own description, in order."""
    return ", then ".join(step.describe() for step in chain)


def produce(chain: Chain, reference: LoadedModel, progress: Progress | None = None) -> tuple[Compressed, float]:
    """The chain's model from the fp32 `reference` (left unchanged), and the seconds all its steps took."""
    first, *rest = chain
    compressed = compress(first, reference, progress=progress)
    seconds = compressed.recipe.compress_s
    for step in rest:
        if step.method not in REFINERS:
            raise ValueError(f"{step.method} cannot refine a compressed model: no refiner is registered for it")
        compressed = REFINERS[step.method](step, reference, compressed, progress=progress)
        seconds += compressed.recipe.compress_s
    return compressed, seconds
