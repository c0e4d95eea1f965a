"""What a weight format costs in quality, in the planner's words: our own measurement where the bundled
engine serves the format, the catalog's published note otherwise.

One home for the wording: recommend puts `quality_note` on every option, and the console plan, the JSON
output and the Plan page all show that. One home for the rule tying a quality tier (formats.json) to a
measured KL: `tier_for_kl`, which tests/planner/test_quality.py holds every bundled format's tier to.

The figures come from planner/data/measured_quality.json (written by bench/planner_quality.py from one
quant-study run on the bundled model, never by hand).
"""

from __future__ import annotations

from pathlib import PurePath

from planner.catalog import Catalog, FormatSpec, MeasuredFormat, QualityTier

# Upper bounds (exclusive) of mean KL(fp32 || format) in nats for each tier; at or above the last: "large".
# The bounds are read on what a KL does to the bundled model's choices on the evaluation text
# (docs/BENCHMARKS.md, quant study, fidelity and compression tables):
# - none, below 1e-6: the reference itself; anything larger is more than float noise.
# - negligible, below 0.005: bf16 rounding and the file's own int4 codes stay under 0.001 with top-1
#   agreement of 97% or more and perplexity within half a percent; llama.cpp serving the same file measured
#   0.003. The loss of running the published file in its reference runtime is what "negligible" is here.
# - small, below 0.05: re-quantizing every weight per row to 8 bits (int8, fp8 E4M3) lands near 0.03: the
#   top token changes at about one position in eight and perplexity moves by a few percent, which a careful
#   evaluation sees and a reader of the output mostly does not.
# - moderate, below 0.25: one mantissa bit less (fp8 E5M2, about 0.13) changes a quarter of the top tokens
#   and perplexity by over 10%.
# - large: from 0.25 on are the compression study's 4-bit re-quantizations of the already 4-bit file
#   (group-128 round-to-nearest and GPTQ): perplexity up by 40% or more, a visibly worse model.
KL_TIER_BOUNDS: tuple[tuple[float, QualityTier], ...] = (
    (1e-6, "none"),
    (0.005, "negligible"),
    (0.05, "small"),
    (0.25, "moderate"),
)


def tier_for_kl(mean_kl_nats: float) -> QualityTier:
    """The quality tier a measured mean KL(fp32 || format) puts a format in (bounds above)."""
    for bound, tier in KL_TIER_BOUNDS:
        if mean_kl_nats < bound:
            return tier
    return "large"


def measured_quality(fmt: FormatSpec, catalog: Catalog) -> MeasuredFormat | None:
    """Our measurement of a bundled format (None for a format the bundled engine does not serve)."""
    if fmt.engine_quant is None:
        return None
    return catalog.quality_file.by_quant.get(fmt.engine_quant)


def measured_text(row: MeasuredFormat, catalog: Catalog) -> str:
    """One measurement as a clause, e.g. 'measured on the bundled SmolLM2-135M-Instruct.Q4_1 vs fp32 (1463
    positions of engine/data/eval.txt): KL 0.000275 nats, top-1 98.5%, perplexity -0.1%'."""
    q = catalog.quality_file
    model = PurePath(q.model_file).stem
    where = f"{row.positions} positions of {q.eval_text}"
    reference = q.by_quant[q.reference]
    if row.engine_quant == q.reference:
        return (
            f"measured on the bundled {model}: the {q.reference} reference ({where}, perplexity {row.perplexity:.2f})"
        )
    change = (row.perplexity / reference.perplexity - 1) * 100
    return (
        f"measured on the bundled {model} vs {q.reference} ({where}): KL {row.mean_kl_nats:.3g} nats, "
        f"top-1 {row.top1_agreement:.1%}, perplexity {change:+.1f}%"
    )


def quality_note(fmt: FormatSpec, catalog: Catalog) -> str:
    """The note shown beside a format's quality tier: the measured figures first where we have them, then the
    catalog's own note (how the format is built, which the figures do not say)."""
    row = measured_quality(fmt, catalog)
    if row is None:
        return fmt.quality_note
    return f"{measured_text(row, catalog)}; {fmt.quality_note}"
