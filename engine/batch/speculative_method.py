"""What `--speculative` may say: none, ngram, or draft:FORMAT. Plain Python, no torch.

One parser for the server options and the benchmark, so a method or a format is
spelled and checked in one place. A draft in the target's own format is allowed:
the engine then shares the target's weights (no second copy), nearly every draft
is accepted, and nothing is gained; it checks the verification path, and the
docs say it is not a speed-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from engine.formats import WEIGHT_FORMATS, WeightFormat

DRAFT_PREFIX = "draft:"
SPECULATIVE_HELP = f"none, ngram (prompt lookup) or {DRAFT_PREFIX}FORMAT (the model drafts in FORMAT, e.g. draft:int4)"


@dataclass(frozen=True, slots=True)
class SpeculativeMethod:
    """A parsed `--speculative` value; `draft_format` is set only for `kind == "draft"`."""

    kind: Literal["none", "ngram", "draft"]
    draft_format: WeightFormat | None = None

    def __post_init__(self) -> None:
        if (self.kind == "draft") != (self.draft_format is not None):
            raise ValueError("a draft format goes with kind 'draft' and only with it")

    def __str__(self) -> str:
        return f"{DRAFT_PREFIX}{self.draft_format}" if self.kind == "draft" else self.kind


def parse_speculative(text: str) -> SpeculativeMethod:
    """'none' | 'ngram' | 'draft:FORMAT' -> SpeculativeMethod; anything else is a ValueError saying what to give."""
    value = text.strip()
    if value in ("none", "ngram"):
        return SpeculativeMethod(cast(Literal["none", "ngram"], value))
    if value.startswith(DRAFT_PREFIX):
        fmt = value[len(DRAFT_PREFIX) :]
        if fmt not in WEIGHT_FORMATS:
            raise ValueError(
                f"unknown draft weight format {fmt[:40]!r}: give {DRAFT_PREFIX}FORMAT with FORMAT one of "
                + ", ".join(WEIGHT_FORMATS)
            )
        return SpeculativeMethod("draft", cast(WeightFormat, fmt))
    raise ValueError(f"unknown speculative method {value[:40]!r}: give {SPECULATIVE_HELP}")
