"""The compression algorithms (engine/compress/) on real layers of the bundled model and real activations:
GPTQ against round-to-nearest on the same layer and calibration data, exact magnitude and 2:4 pruning,
SVD factors that reproduce a layer at full rank, activation-aware SVD against plain SVD on the same layer and data;
plus the layer layouts and the recipe document."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from engine.compress.calibration import calibration_ids, calibration_text, hessian_output_error
from engine.compress.catalog import CATALOG
from engine.compress.gptq import gptq_quantize, rtn_codes
from engine.compress.lowrank import (
    SCALE_FLOOR,
    activation_scales,
    rank_for_energy,
    rank_for_fraction,
    svd_factors,
)
from engine.compress.pipeline import block_linears, load_reference
from engine.compress.prune import follows_2_4, magnitude_prune, prune_2_4, sparsity_of
from engine.compress.recipe import GptqSettings, LowRankSettings, PruneSettings, Recipe, RtnSettings
from engine.quant.layouts import empty_from_layout, layout_of
from engine.quant.linear import DenseLinear, Int4Linear, make_linear
from engine.quant.lowrank_linear import LowRankLinear
from engine.quant.roundtrip import output_error
from engine.run.runtime import Engine
from engine.studies.base import eval_text
from engine.studies.precision import capture_inputs

BLOCK = 4
LAYERS = [f"layers.{BLOCK}.attention.wo", f"layers.{BLOCK}.feed_forward.w13", f"layers.{BLOCK}.feed_forward.w2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def captured() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(fp32 weight, real inputs) of a few layers, captured while the fp32 model reads 384 calibration tokens."""
    reference = load_reference(device="cpu")
    layers = {name: m for name, m in block_linears(reference.model).items() if name in LAYERS}
    inputs = capture_inputs(Engine(reference), layers, calibration_ids(reference.tokenizer, 384))
    return {name: (layers[name].weight.detach().float().clone(), inputs[name]) for name in LAYERS}


def test_the_calibration_text_is_not_the_evaluation_text() -> None:
    calibration, evaluation = calibration_text(), eval_text()
    assert len(calibration) > 4000
    sentences = [s.strip() for s in evaluation.split(".") if len(s.strip()) > 40]
    assert not any(s in calibration for s in sentences)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_has_less_output_error_than_round_to_nearest_on_the_same_layer_and_data(
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]], act_order: bool
) -> None:
    for name, (w, x) in captured.items():
        hessian = x.double().T @ x.double()
        gptq = gptq_quantize(w, hessian, 128, act_order=act_order)
        rtn = rtn_codes(w, 128)
        gptq_err = output_error(w, gptq.dequantized(), x)
        rtn_err = output_error(w, rtn.dequantized(), x)
        assert 0 < gptq_err < rtn_err, (name, gptq_err, rtn_err)
        # The Hessian alone gives the same figure the activations do (what the recipe records per layer).
        assert hessian_output_error(w, gptq.dequantized(), hessian) == pytest.approx(gptq_err, rel=1e-6)
        assert int(gptq.q.max()) <= 15 and gptq.scale.shape == (w.shape[0], -(-w.shape[1] // 128))


def test_gptq_codes_run_on_the_packed_int4_kernel_as_written(
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> None:
    w, x = captured[LAYERS[2]]
    codes = gptq_quantize(w, x.double().T @ x.double(), 128)
    module = Int4Linear.from_codes(codes.q, codes.scale, codes.zero, 128)
    # torch's packed kernel, behind the native one-row kernel where that builds (engine/quant/native.py)
    assert "_weight_int4pack_mm_for_cpu (group 128" in module.kernel or "_weight_int4pack_mm_for_cpu) (group 128" in (
        module.kernel
    )
    assert torch.equal(module.dequantized(), codes.dequantized())  # bf16 grid chosen before the codes: exact
    for rows in (16, 1):  # a batch, and one row (the native kernel's, where it runs)
        y = module(x[:rows].bfloat16()).float()
        ref = x[:rows] @ codes.dequantized().T
        assert float((y - ref).norm() / ref.norm()) < 0.02  # bf16 activations only


def test_gptq_refuses_a_hessian_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match=r"expected \(8, 8\)"):
        gptq_quantize(torch.randn(4, 8), torch.eye(7), 32)
    with pytest.raises(ValueError, match="group size 48"):
        gptq_quantize(torch.randn(4, 8), torch.eye(8), 48)


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.7])
def test_magnitude_pruning_hits_the_sparsity_exactly_on_a_weight_full_of_ties(
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]], sparsity: float
) -> None:
    w, _ = captured[LAYERS[1]]
    assert w.unique().numel() < w.numel() // 2  # Q4_1: many equal values, so the threshold falls inside a tie
    pruned = magnitude_prune(w, sparsity)
    zeroed = pruned == 0
    assert int(zeroed.sum()) == round(sparsity * w.numel())
    assert sparsity_of(pruned) == pytest.approx(sparsity, abs=1 / w.numel())
    assert float(w.abs()[zeroed].max()) <= float(w.abs()[~zeroed].min())  # the smallest went
    assert torch.equal(pruned[~zeroed], w[~zeroed])  # the rest is untouched


def test_2_4_pruning_keeps_the_two_largest_of_every_four(
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> None:
    w, _ = captured[LAYERS[2]]
    pruned = prune_2_4(w)
    assert follows_2_4(pruned) and not follows_2_4(w)
    runs, kept = w.abs().reshape(w.shape[0], -1, 4), (pruned != 0).reshape(w.shape[0], -1, 4)
    smallest_kept = torch.where(kept, runs, torch.inf).amin(-1)
    largest_dropped = torch.where(kept, -torch.inf, runs).amax(-1)
    assert bool((largest_dropped <= smallest_kept).all())
    assert sparsity_of(pruned) >= 0.5
    with pytest.raises(ValueError, match="multiple of 4"):
        prune_2_4(torch.randn(4, 6))


def test_a_full_rank_factorization_reproduces_the_layer(captured: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    for name, (w, x) in captured.items():
        full = svd_factors(w, rank=min(w.shape))
        module = LowRankLinear.from_factors(full.up, full.down)
        dense = make_linear(w, "fp32")
        assert full.energy_kept == pytest.approx(1.0)
        y, ref = module(x), dense(x)
        assert float((y - ref).norm() / ref.norm()) < 1e-5, name
        assert svd_factors(w, energy=1.0).rank == min(w.shape)


def test_rank_and_energy_choose_the_factor_size(captured: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    w, _ = captured[LAYERS[1]]  # 3072 x 576
    assert rank_for_fraction(w, 0.5) == 288
    half = svd_factors(w, rank=288)
    module = LowRankLinear.from_factors(half.up, half.down, "bf16")
    assert module.weight_bytes() == 288 * (3072 + 576) * 2 and module.rank == 288
    at_90 = svd_factors(w, energy=0.9)
    assert at_90.energy_kept >= 0.9 > svd_factors(w, rank=at_90.rank - 1).energy_kept
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # squared: 16, 4, 1, 1 of 22
    assert [rank_for_energy(s, e) for e in (0.5, 16 / 22, 0.8, 0.95, 1.0)] == [1, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="exactly one"):
        svd_factors(w, rank=4, energy=0.5)


def test_activation_aware_factors_have_less_output_error_than_plain_svd_at_the_same_rank(
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> None:
    for name, (w, x) in captured.items():
        scales = activation_scales((x.double() ** 2).mean(0))  # the diagonal of X^T X / tokens
        rank = rank_for_fraction(w, 0.5)
        plain, aware = svd_factors(w, rank=rank), svd_factors(w, rank=rank, scales=scales)
        assert aware.rank == plain.rank == rank and aware.down.shape == plain.down.shape
        plain_err = output_error(w, plain.up @ plain.down, x)
        aware_err = output_error(w, aware.up @ aware.down, x)
        assert 0 < aware_err < 0.95 * plain_err, (name, aware_err, plain_err)
    # Full rank: the scaling is folded back exactly, and the stored factors run on the same LowRankLinear.
    w, x = captured[LAYERS[1]]  # w13, 3072 x 576: tall, so the SVD is taken of the scaled weight transposed
    full = svd_factors(w, rank=min(w.shape), scales=activation_scales((x.double() ** 2).mean(0)))
    y, ref = LowRankLinear.from_factors(full.up, full.down)(x), make_linear(w, "fp32")(x)
    assert full.energy_kept == pytest.approx(1.0)
    assert float((y - ref).norm() / ref.norm()) < 1e-5


def test_activation_scales_floor_silent_channels_and_refuse_bad_input() -> None:
    scales = activation_scales(torch.tensor([0.0, 4.0, 4.0, 1e-12]))  # roots 0, 2, 2, 1e-6: mean ~1
    assert scales[1:3].tolist() == [2.0, 2.0]
    assert scales[0] == scales[3] == pytest.approx(SCALE_FLOOR * 1.0, rel=1e-5)
    w = torch.randn(6, 4)
    factors = svd_factors(w, rank=4, scales=scales)
    assert torch.isfinite(factors.down).all() and torch.allclose(factors.up @ factors.down, w, atol=1e-4)
    for bad in (torch.zeros(4), torch.tensor([1.0, -1.0]), torch.tensor([1.0, float("nan")]), torch.ones(2, 2)):
        with pytest.raises(ValueError):
            activation_scales(bad)
    with pytest.raises(ValueError, match="positive channel scales"):
        svd_factors(w, rank=2, scales=torch.ones(5))


def test_layouts_rebuild_each_storage_and_refuse_malformed_ones() -> None:
    int4 = make_linear(torch.randn(40, 576), "int4", group_size=128)
    lowrank = LowRankLinear.from_factors(torch.randn(40, 8), torch.randn(8, 576), "bf16")
    dense = make_linear(torch.randn(40, 576), "fp32")
    for module in (int4, lowrank, dense):
        layout = layout_of(module)
        empty = empty_from_layout(layout, 576, 40)
        assert type(empty) is type(module) and layout_of(empty) == layout
        assert {k: tuple(v.shape) for k, v in empty.state_dict().items()} == {
            k: tuple(v.shape) for k, v in module.state_dict().items()
        }
    assert layout_of(int4) == {"storage": "int4", "group_size": 128}
    assert isinstance(empty_from_layout({"storage": "bf16"}, 8, 8), DenseLinear)
    for bad in (
        {"storage": "int3"},
        {"storage": "int4"},
        {"storage": "lowrank", "rank": 0, "dtype": "fp32"},
        {"storage": "lowrank", "rank": 4, "dtype": "fp16"},
        {"storage": "fp32", "group_size": 32},
    ):
        with pytest.raises(ValueError):
            empty_from_layout(bad, 8, 8)


def test_settings_and_recipe_refuse_what_they_do_not_know() -> None:
    assert GptqSettings().group_size == 128 and RtnSettings(group_size=32).served_format == "int4"
    for bad in (
        lambda: GptqSettings(group_size=48),
        lambda: GptqSettings(bits=3),
        lambda: PruneSettings(),
        lambda: PruneSettings(sparsity=0.5, pattern="2:4"),
        lambda: PruneSettings(sparsity=1.0),
        lambda: LowRankSettings(rank_fraction=0.5, energy=0.9),
        lambda: LowRankSettings(rank_fraction=0.5, projections=()),
        lambda: LowRankSettings(energy=0.9, projections=("wq",)),
        lambda: LowRankSettings(rank_fraction=0.5, calibration_tokens=64),  # plain SVD reads no calibration
    ):
        with pytest.raises(ValidationError):
            bad()
    assert LowRankSettings(energy=0.9, format="bf16").served_format == "bf16"
    aware = LowRankSettings(rank_fraction=0.5, activation_aware=True, calibration_tokens=64)
    assert aware.describe() == "activation-aware low-rank, rank 0.5 of wqkv, wo, w13, w2"
    assert CATALOG["arank-0.5"] == (LowRankSettings(rank_fraction=0.5, activation_aware=True),)
    recipe = {
        "schema_version": 1,
        "settings": {"method": "prune", "pattern": "2:4"},
        "format": "fp32",
        "source_file": "m.gguf",
        "source_sha256": "0" * 64,
        "layers": [],
        "created_at": "2026-01-01T00:00:00Z",
        "compress_s": 1.0,
        "torch_version": torch.__version__,
        "device": "cpu",
    }
    parsed = Recipe.model_validate(recipe)
    assert isinstance(parsed.settings, PruneSettings) and parsed.summary() == "2:4 pruning, served as fp32"
    assert Recipe.model_validate_json(parsed.model_dump_json()) == parsed
    with pytest.raises(ValidationError):
        Recipe.model_validate(recipe | {"notes": "x"})
    with pytest.raises(ValidationError):
        Recipe.model_validate(recipe | {"schema_version": 2})
