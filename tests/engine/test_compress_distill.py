"""Distillation of an int4 model toward fp32 (engine/compress/distill.py), on the real model and calibration text:
a few steps lower the KL on the window it trains on, only the grid moves, the directory it writes loads back as the
model that was evaluated, the time budget bounds the steps, and bad inputs are one clear error.

One distillation (the module fixture) serves most tests: reading int4 codes back out of the packed kernel layout,
which a distillation and a save each do for all 120 layers, is most of what a test here costs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from engine.cli import main
from engine.compress.calibration import calibration_ids
from engine.compress.distill import TrainableInt4, distill, int4_layers
from engine.compress.evaluate import quality_against, scores_over
from engine.compress.pipeline import Compressed, compress, load_reference
from engine.compress.recipe import DistillSettings, Recipe, RtnSettings
from engine.model.loader import LoadedModel
from engine.run.runtime import Engine, LoadOptions
from engine.sampling import SamplingParams

WINDOW = 64  # one window of the calibration text
STEPS = 3
SOURCE = RtnSettings(group_size=128)
PROBED = ("layers.2.feed_forward.w2", "layers.2.attention.wo")  # K = 1536: twelve whole groups; K = 576: a ragged one

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class Distilled:
    compressed: Compressed
    directory: Path
    kl_before: float
    kl_after: float
    grid_before: dict[str, torch.Tensor]  # every layer's scales_and_zeros before training
    codes_before: dict[str, torch.Tensor]  # the PROBED layers' codes before training


@pytest.fixture(scope="module")
def reference() -> LoadedModel:
    return load_reference(device="cpu")


@pytest.fixture(scope="module")
def distilled(reference: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Distilled:
    """Round-to-nearest g128, scored on its training window, distilled for a few steps, scored again, saved."""
    start = compress(SOURCE, reference)
    layers = int4_layers(start.loaded.model)
    grid_before = {name: m.scales_and_zeros.clone() for name, m in layers.items()}
    codes_before = {name: layers[name].codes() for name in PROBED}
    scores = scores_over(Engine(reference), calibration_ids(reference.tokenizer, WINDOW), WINDOW)
    before = quality_against(Engine(start.loaded), scores)["mean_kl_nats"]
    settings = DistillSettings(minutes=10, max_steps=STEPS, window=WINDOW, calibration_tokens=WINDOW)
    out = distill(settings, reference, start)
    after = quality_against(Engine(out.loaded), scores)["mean_kl_nats"]
    directory = tmp_path_factory.mktemp("distilled")
    out.save(directory)
    return Distilled(out, directory, before, after, grid_before, codes_before)


def test_a_few_steps_lower_the_kl_on_the_training_window(distilled: Distilled) -> None:
    assert distilled.kl_after < 0.9 * distilled.kl_before, (distilled.kl_before, distilled.kl_after)
    d = distilled.compressed.recipe.distillation
    assert d is not None and d.steps == STEPS and d.stopped_by == "max_steps" and d.tokens_seen == STEPS * WINDOW
    assert len(d.loss_per_pass) == STEPS and d.loss_per_pass[0] == d.loss_first and d.loss_per_pass[-1] == d.loss_last
    assert d.loss_last < d.loss_first  # one window: every step sees the same tokens
    assert d.trained == ["int4 group scales and zeros", "RMSNorm weights"]


def test_only_the_grid_moves_and_training_computes_the_served_weight(distilled: Distilled) -> None:
    layers = int4_layers(distilled.compressed.loaded.model)
    assert all(not torch.equal(m.scales_and_zeros, distilled.grid_before[name]) for name, m in layers.items())
    for name in PROBED:
        module = layers[name]
        assert torch.equal(module.codes(), distilled.codes_before[name])
        trainable = TrainableInt4(module)
        assert torch.equal(trainable.weight(), module.dequantized())  # what a step multiplies by is what is served
        served, weight = trainable.served()
        assert torch.equal(served.scales_and_zeros, module.scales_and_zeros)
        assert torch.equal(weight, module.dequantized())


def test_the_distilled_directory_loads_back_as_the_model_that_was_evaluated(distilled: Distilled) -> None:
    compressed = distilled.compressed
    reloaded = Engine.load(LoadOptions(None, None, "cpu", weights_dir=str(distilled.directory)))
    assert reloaded.info.weights_label == "int4 (distill)" and reloaded.info.quant == "int4"
    recipe = Recipe.model_validate(reloaded.info.recipe)
    assert recipe == compressed.recipe
    assert recipe.source is not None and recipe.source.settings == SOURCE and recipe.source.distillation is None
    assert recipe.summary().startswith("round-to-nearest, group 128, then logit distillation toward fp32")
    assert recipe.calibration is not None and recipe.calibration.tokens == WINDOW
    ours, theirs = int4_layers(compressed.loaded.model), int4_layers(reloaded.loaded.model)
    for name, module in ours.items():
        assert module.scales_and_zeros.dtype == torch.bfloat16  # the layout's storage: the trained grid, rounded
        assert torch.equal(theirs[name].scales_and_zeros, module.scales_and_zeros)
    assert all(torch.equal(theirs[name].codes(), ours[name].codes()) for name in PROBED)
    norm = reloaded.loaded.model.layers[5].ffn_norm.weight
    assert torch.equal(norm, compressed.loaded.model.layers[5].ffn_norm.weight)
    greedy, prompt = SamplingParams(max_tokens=8, ignore_eos=True), "The capital of France is"
    expected = Engine(compressed.loaded).stream(prompt, greedy).drain().token_ids
    assert reloaded.stream(prompt, greedy).drain().token_ids == expected


def test_the_command_line_distills_a_directory_and_the_budget_bounds_the_steps(
    distilled: Distilled, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "again"
    flags = ["--minutes", "1e-6", "--max-steps", "1000", "--window", "32", "--calibration-tokens", "64"]
    argv = ["compress", "distill", "--from", str(distilled.directory), *flags, "--freeze-norms", "--threads", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "then logit distillation toward fp32 (1e-06 min budget), served as int4: 120 block linears" in printed
    assert "distillation: 1 steps (32 tokens)" in printed and "stopped by budget" in printed
    recipe = Recipe.model_validate_json((out / "recipe.json").read_text())
    d = recipe.distillation
    assert d is not None and d.steps == 1 and d.stopped_by == "budget"  # the first step always runs, no more
    assert d.trained == ["int4 group scales and zeros"] and d.budget_s == pytest.approx(6e-5)
    assert recipe.source is not None and recipe.source.source is not None  # distilled twice: the whole way recorded
    assert recipe.source.settings.method == "distill" and recipe.source.source.settings == SOURCE


def test_bad_inputs_are_one_clear_error(
    reference: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path / "out")]
    cases = [
        (["--from", str(tmp_path / "missing"), "--minutes", "1"], "does not exist"),
        (["--from", "rtn", "--minutes", "0"], "minutes: Input should be greater than 0"),
        (["--from", "rtn", "--act-order", "--minutes", "1"], "--act-order is a GPTQ setting"),
        (["--from", str(tmp_path), "--group", "64", "--minutes", "1"], "the directory"),
    ]
    for flags, message in cases:
        assert main(["compress", "distill", *flags, *out]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(
        ValueError, match="distillation trains the grid of int4 layers.*layers.0.attention.wqkv is fp32"
    ):
        int4_layers(reference.model)
    with pytest.raises(ValueError, match="starts from a compressed model"):
        compress(DistillSettings(minutes=1), reference)
