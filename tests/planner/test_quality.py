"""The bundled formats' measured quality (planner/data/measured_quality.json): the file, the tiers it implies,
the notes the planner shows, and one figure measured again with the real engine."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner.catalog import FormatSpec, load_catalog
from planner.entrypoints import make_plan, predict_one
from planner.hardware import detect
from planner.predict_io import PredictOptions
from planner.quality import KL_TIER_BOUNDS, measured_quality, quality_note, tier_for_kl
from planner.report import format_plan
from planner.workload import RecommendOptions
from tests.planner.test_recommend import FIXED_CPU

BUNDLED = [f for f in load_catalog().formats.values() if f.engine_quant]


def test_the_file_covers_every_format_the_engine_serves() -> None:
    """Every bundled format in formats.json has a row (the catalog refuses to load otherwise), and so does
    every format the engine serves, so a format the planner adds later is measured already."""
    from engine.formats import WEIGHT_FORMATS

    q = load_catalog().quality_file
    assert {f.engine_quant for f in BUNDLED} <= set(q.by_quant)
    assert set(WEIGHT_FORMATS) == set(q.by_quant)
    assert q.by_quant[q.reference].mean_kl_nats == 0 and q.by_quant[q.reference].top1_agreement == 1
    assert {f.positions for f in q.formats} == {q.eval_tokens - len(range(0, q.eval_tokens, q.eval_window))}
    assert q.command.startswith("OMP_NUM_THREADS=1 .venv/bin/python bench/planner_quality.py")


@pytest.mark.parametrize("fmt", BUNDLED, ids=lambda f: f.id)
def test_each_bundled_tier_agrees_with_its_measured_kl(fmt: FormatSpec) -> None:
    row = measured_quality(fmt, load_catalog())
    assert row is not None
    assert fmt.quality == tier_for_kl(row.mean_kl_nats), (
        f"{fmt.id}: formats.json says {fmt.quality!r}, its measured KL {row.mean_kl_nats:.3g} nats says "
        f"{tier_for_kl(row.mean_kl_nats)!r} (bounds in planner/quality.py)"
    )


def test_tier_bounds_rank_as_the_quality_weights_do() -> None:
    """A larger KL never earns a better tier, and the tiers the bounds name in order carry falling weights."""
    cat = load_catalog()
    bounds = [b for b, _ in KL_TIER_BOUNDS]
    assert bounds == sorted(bounds)
    tiers = [t for _, t in KL_TIER_BOUNDS] + ["large"]
    weights = [cat.quality_weight(t) for t in tiers]
    assert weights == sorted(weights, reverse=True) and len(set(weights)) == len(weights)
    assert [tier_for_kl(k) for k in (0.0, 0.0003, 0.004999, 0.005, 0.03, 0.13, 0.25, 10.0)] == [
        "none",
        "negligible",
        "negligible",
        "small",
        "small",
        "moderate",
        "large",
        "large",
    ]


def test_notes_quote_the_measurement_then_the_catalog() -> None:
    cat = load_catalog()
    int4 = cat.formats["bundled-int4"]
    row = cat.quality_file.by_quant["int4"]
    note = quality_note(int4, cat)
    assert note.startswith(
        "measured on the bundled SmolLM2-135M-Instruct.Q4_1 vs fp32 (1463 positions of engine/data/eval.txt): "
        f"KL {row.mean_kl_nats:.3g} nats, top-1 {row.top1_agreement:.1%}, perplexity "
    )
    assert note.endswith(f"; {int4.quality_note}")
    fp32 = quality_note(cat.formats["bundled-fp32"], cat)
    assert fp32.startswith("measured on the bundled SmolLM2-135M-Instruct.Q4_1: the fp32 reference (1463 positions")
    assert quality_note(cat.formats["q4_k_m"], cat) == cat.formats["q4_k_m"].quality_note  # published, not ours


def test_plans_show_the_measured_figures() -> None:
    """The recommend options, their reasons and the console plan all carry the one wording."""
    cat = load_catalog()
    options = RecommendOptions(model="smollm2-135m", gpu="cpu", context=2048, concurrency=1)
    plan = make_plan(options, hw=detect(), measure=lambda: FIXED_CPU)
    bundled = [o for o in plan.options if o.engine == "bundled"]
    assert {o.format for o in bundled} == {f.id for f in BUNDLED}  # every format the engine serves is planned
    for o in bundled:
        note = quality_note(cat.formats[o.format], cat)
        assert o.quality_note == note and f"quality ({o.quality}): {note}" in o.why
    text = "\n".join(format_plan(plan, top=len(plan.options), details=len(plan.options)))
    assert text.count("measured on the bundled SmolLM2-135M-Instruct.Q4_1") == len(bundled)


def test_fp8_e5m2_is_planned_at_e4m3s_cost_with_its_own_measured_quality() -> None:
    """The engine's E5M2 format: as many bytes as E4M3 and, on a CPU, the same dequantizing code with another
    256-entry table, so the probe's fp8 rate is its rate; its quality is its own measurement (one mantissa bit
    fewer: moderate)."""
    cat = load_catalog()
    cpu = replace(FIXED_CPU, fp8_gemv_weights_s=4e9, fp8_gemm_weights_s=8e9)

    def predict(fmt: str, measured=cpu):  # noqa: ANN001, ANN202
        options = PredictOptions(model="smollm2-135m", gpu="cpu", engine="bundled", format=fmt, max_model_len=2048)
        return predict_one(options, hw=detect(), measure=lambda: measured)

    e5m2, e4m3 = predict("fp8-e5m2"), predict("fp8")
    assert e5m2.fits and e5m2.format == "bundled fp8-e5m2" and e5m2.tpot_ms is not None
    assert (e5m2.weights_gib, e5m2.ttft_ms, e5m2.tpot_ms) == (e4m3.weights_gib, e4m3.ttft_ms, e4m3.tpot_ms)
    assert predict("fp8-e5m2", replace(cpu, fp8_gemv_weights_s=1e9)).tpot_ms > e5m2.tpot_ms  # the fp8 rate counts
    fmt, row = cat.formats["bundled-fp8-e5m2"], cat.quality_file.by_quant["fp8-e5m2"]
    assert fmt.quality == tier_for_kl(row.mean_kl_nats) == "moderate"
    assert quality_note(fmt, cat).startswith(
        "measured on the bundled SmolLM2-135M-Instruct.Q4_1 vs fp32 (1463 positions of engine/data/eval.txt): "
        f"KL {row.mean_kl_nats:.3g} nats, top-1 {row.top1_agreement:.1%}, perplexity +12.4%; "
    )


@pytest.mark.slow
def test_int8_measured_again_matches_the_file(one_torch_thread: None) -> None:
    """int8 against fp32 over the same evaluation text, with the quant study's own functions (two loads and two
    passes over 1466 tokens, about 20 s on one thread): the committed figures still describe the engine.
    A change to the engine's int8 path that moves them fails here: rerun the file's command."""
    from engine.run.runtime import Engine, LoadOptions
    from engine.studies.base import eval_ids
    from engine.studies.quant import next_token_logprobs, quality, scored_targets

    q = load_catalog().quality_file
    reference = Engine.load(LoadOptions(quant=q.reference, device="cpu"))
    ids = eval_ids(reference.loaded.tokenizer, q.eval_tokens)[: q.eval_tokens]
    ref_logprobs = next_token_logprobs(reference, ids, q.eval_window)
    del reference
    logprobs = next_token_logprobs(Engine.load(LoadOptions(quant="int8", device="cpu")), ids, q.eval_window)
    targets = scored_targets(ids, q.eval_window)
    got = quality(logprobs, ref_logprobs, targets)
    committed = q.by_quant["int8"]
    assert targets.numel() == committed.positions
    assert got["mean_kl_nats"] == pytest.approx(committed.mean_kl_nats, rel=0.02)
    assert got["top1_agreement"] == pytest.approx(committed.top1_agreement, abs=0.005)
    assert got["perplexity"] == pytest.approx(committed.perplexity, rel=0.002)
