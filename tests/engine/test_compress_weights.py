"""Compressed models as served weights: a weights directory written, verified and loaded back (`--weights DIR`)
generates what the in-memory model generates; a bad directory is one clear error; `generate`, `compress` and
`serve` take it from the command line; quality against fp32 is computed on the evaluation text."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from engine.cli import main
from engine.compress.evaluate import quality_against, reference_scores
from engine.compress.pipeline import Compressed, compress, load_reference
from engine.compress.prune import follows_2_4
from engine.compress.recipe import LowRankSettings, PruneSettings, Recipe, RtnSettings
from engine.errors import WeightsDirError
from engine.model.loader import LoadedModel
from engine.quant.linear import DenseLinear, Int4Linear
from engine.quant.lowrank_linear import LowRankLinear
from engine.run.runtime import Engine, LoadOptions
from engine.sampling import SamplingParams
from engine.serving.options import ServerOptions
from tests.server_harness import MODEL, start_server

PROMPT = "The capital of France is"
GREEDY = SamplingParams(max_tokens=8, ignore_eos=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reference() -> LoadedModel:
    return load_reference(device="cpu")


@pytest.fixture(scope="module")
def rtn(reference: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Compressed, Path]:
    """Round-to-nearest int4 at group 128 (not the format's own group 32), saved: the int4 layout path."""
    compressed = compress(RtnSettings(group_size=128), reference)
    out = tmp_path_factory.mktemp("rtn-g128")
    compressed.save(out)
    return compressed, out


@pytest.fixture(scope="module")
def lowrank(reference: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Compressed, Path]:
    compressed = compress(LowRankSettings(rank_fraction=0.5, projections=("wo", "w2")), reference)
    out = tmp_path_factory.mktemp("lowrank")
    compressed.save(out)
    return compressed, out


def _tokens(engine: Engine) -> list[int]:
    return engine.stream(PROMPT, GREEDY).drain().token_ids


def _reload(directory: Path, quant: str | None = None) -> Engine:
    return Engine.load(LoadOptions(quant, None, "cpu", weights_dir=str(directory)))


def test_gptq_style_int4_at_group_128_round_trips_and_generates_the_same_tokens(
    rtn: tuple[Compressed, Path],
) -> None:
    compressed, directory = rtn
    reloaded = _reload(directory)
    assert _tokens(reloaded) == _tokens(Engine(compressed.loaded))
    info = reloaded.info
    assert info.source == "weights" and info.quant == "int4" and info.weights_dir == str(directory)
    assert info.weight_bytes == compressed.loaded.weight_bytes
    assert info.weights_label == "int4 (rtn)"
    wo = reloaded.loaded.model.layers[3].attention.wo
    assert isinstance(wo, Int4Linear) and wo.group_size == 128
    assert any("group 128" in note for note in info.kernel_notes)
    assert Recipe.model_validate(info.recipe) == compressed.recipe
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["layers"]["layers.0.feed_forward.w2"] == {"storage": "int4", "group_size": 128}
    assert _reload(directory, "int4").info.quant == "int4"  # naming the directory's own format is fine


def test_low_rank_factors_round_trip_and_generate_the_same_tokens(lowrank: tuple[Compressed, Path]) -> None:
    compressed, directory = lowrank
    reloaded = _reload(directory)
    assert _tokens(reloaded) == _tokens(Engine(compressed.loaded))
    block = reloaded.loaded.model.layers[0]
    assert isinstance(block.attention.wo, LowRankLinear) and block.attention.wo.rank == 288
    assert isinstance(block.attention.wqkv, DenseLinear)  # not chosen: stays dense
    dense_wo = 576 * 576 * 4
    assert block.attention.wo.weight_bytes() == 288 * (576 + 576) * 4 == dense_wo  # half rank of a square: no saving
    assert reloaded.info.weight_bytes == compressed.loaded.weight_bytes
    assert {r.rank for r in compressed.recipe.layers} == {288}
    assert len(compressed.recipe.layers) == 60


def test_activation_aware_low_rank_records_its_option_and_calibration(reference: LoadedModel, tmp_path: Path) -> None:
    settings = LowRankSettings(rank_fraction=0.5, projections=("wo",), activation_aware=True, calibration_tokens=64)
    compressed = compress(settings, reference)
    recipe = compressed.recipe
    assert recipe.settings == settings and recipe.summary().startswith("activation-aware low-rank, rank 0.5 of wo")
    assert recipe.calibration is not None and recipe.calibration.tokens == 64
    assert len(recipe.layers) == 30 and all(r.rank == 288 for r in recipe.layers)
    assert all(r.calib_output_rel_err is not None and 0 < r.calib_output_rel_err < 1 for r in recipe.layers)
    compressed.save(tmp_path)
    written = Recipe.model_validate_json((tmp_path / "recipe.json").read_text())
    assert written.settings.activation_aware and written == recipe  # type: ignore[union-attr]
    assert isinstance(compressed.loaded.model.layers[2].attention.wo, LowRankLinear)  # the same storage as plain SVD


def test_compress_lowrank_takes_the_activation_aware_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import build_parser
    from engine.compress.command import settings_from_args

    flags = ["compress", "lowrank", "--rank-fraction", "0.5", "--out", str(tmp_path)]
    args = build_parser().parse_args([*flags, "--activation-aware", "--calibration-tokens", "64"])
    assert settings_from_args(args) == LowRankSettings(rank_fraction=0.5, activation_aware=True, calibration_tokens=64)
    assert settings_from_args(build_parser().parse_args(flags)) == LowRankSettings(rank_fraction=0.5)
    assert main([*flags, "--calibration-tokens", "64"]) == 1  # refused before any model is loaded
    assert "calibration tokens need activation_aware" in capsys.readouterr().err


@pytest.mark.slow
def test_2_4_pruning_in_bf16_keeps_its_pattern_through_the_directory(reference: LoadedModel, tmp_path: Path) -> None:
    compressed = compress(PruneSettings(pattern="2:4", format="bf16"), reference)
    compressed.save(tmp_path)
    reloaded = _reload(tmp_path)
    assert reloaded.info.quant == "bf16"
    w13 = reloaded.loaded.model.layers[7].feed_forward.w13
    assert w13.weight.dtype == torch.bfloat16 and follows_2_4(w13.weight.float())
    assert all(r.sparsity is not None and r.sparsity >= 0.5 for r in compressed.recipe.layers)
    assert _tokens(reloaded) == _tokens(Engine(compressed.loaded))


def test_a_bad_weights_directory_is_one_clear_error(rtn: tuple[Compressed, Path], tmp_path: Path) -> None:
    _, directory = rtn
    with pytest.raises(WeightsDirError, match="does not exist"):
        _reload(tmp_path / "missing")
    with pytest.raises(WeightsDirError, match="holds no manifest.json"):
        _reload(tmp_path)
    with pytest.raises(WeightsDirError, match="are in int4, not fp32"):
        _reload(directory, "fp32")

    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    recipe = json.loads((copy / "recipe.json").read_text())
    (copy / "recipe.json").write_text(json.dumps(recipe | {"compress_s": 0.0}))
    with pytest.raises(WeightsDirError, match="recipe.json does not match its manifest"):
        _reload(copy)
    shutil.copy(directory / "recipe.json", copy / "recipe.json")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(manifest | {"source_sha256": "0" * 64}))
    with pytest.raises(WeightsDirError, match="made from another model file"):
        _reload(copy)
    shutil.copy(directory / "manifest.json", copy / "manifest.json")
    with (copy / "weights.safetensors").open("r+b") as fh:
        fh.seek(-100, 2)
        byte = fh.read(1)
        fh.seek(-100, 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(WeightsDirError, match="corrupt"):
        _reload(copy)


def test_quality_against_fp32_is_computed_on_the_evaluation_text(
    reference: LoadedModel, rtn: tuple[Compressed, Path]
) -> None:
    scores = reference_scores(Engine(reference), max_tokens=160, window=80)
    same = quality_against(Engine(reference), scores)
    assert same["mean_kl_nats"] == 0.0 and same["top1_agreement"] == 1.0
    lossy = quality_against(Engine(rtn[0].loaded), scores)
    assert lossy["mean_kl_nats"] > 0 and 0 < lossy["top1_agreement"] <= 1
    assert math.isfinite(lossy["perplexity"]) and lossy["perplexity"] != same["perplexity"]


@pytest.mark.slow
def test_generate_and_compress_take_weights_on_the_command_line(
    rtn: tuple[Compressed, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compressed, directory = rtn
    argv = [
        "generate",
        "--weights",
        str(directory),
        "--device",
        "cpu",
        "--eager",
        "--prompt",
        PROMPT,
        "--max-tokens",
        "8",
    ]
    assert main([*argv, "--ignore-eos", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["token_ids"] == _tokens(Engine(compressed.loaded))
    assert out["load"]["weights_dir"] == str(directory) and out["load"]["recipe"]["settings"]["method"] == "rtn"

    assert main([*argv, "--quant", "bf16"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the weights in") and "are in int4, not bf16" in err and "\n" not in err

    out_dir = tmp_path / "pruned"
    flags = ["--format", "bf16", "--out", str(out_dir), "--threads", "1"]
    assert main(["compress", "prune", "--sparsity", "0.25", *flags]) == 0
    printed = capsys.readouterr().out
    assert "magnitude pruning, sparsity 0.25, served as bf16: 120 block linears" in printed
    recipe = Recipe.model_validate_json((out_dir / "recipe.json").read_text())
    assert all(layer.sparsity == pytest.approx(0.25, abs=1e-6) for layer in recipe.layers)

    with pytest.raises(SystemExit) as exited:  # argparse: one kind of pruning at a time
        main(["compress", "prune", "--sparsity", "0.5", "--pattern", "2:4", "--out", str(out_dir)])
    assert exited.value.code == 2
    capsys.readouterr()
    assert main(["compress", "lowrank", "--rank-fraction", "1.5", "--out", str(out_dir)]) == 1
    assert "rank_fraction: Input should be less than or equal to 1" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_loads_a_weights_directory(lowrank: tuple[Compressed, Path], tmp_path: Path) -> None:
    compressed, directory = lowrank
    expected = Engine(compressed.loaded).generate(PROMPT, SamplingParams(max_tokens=6, ignore_eos=True)).text
    server = start_server(["--weights", str(directory), "--max-model-len", "128"], tmp_path / "serve.log")
    try:
        r = server.post(
            "/v1/completions",
            {"model": MODEL, "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "ignore_eos": True},
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == expected
        assert "fp32 (lowrank)" in server.log_tail()
    finally:
        server.stop()


def test_server_options_take_the_format_from_the_weights_directory() -> None:
    assert ServerOptions().load_quant == "int4"
    assert ServerOptions(weights="DIR").load_quant is None
    assert ServerOptions(weights="DIR", quant="int4").load_quant == "int4"


def test_the_benchmark_s_bundled_target_serves_a_weights_directory(lowrank: tuple[Compressed, Path]) -> None:
    from checks.load.benchmark import BenchmarkConfig, make_target
    from checks.load.targets import BundledTarget, TargetError

    _, directory = lowrank
    config = BenchmarkConfig(target="bundled", weights=str(directory), threads=1, requests=4, eager=True)
    target = make_target(config, lambda _msg: None)
    assert isinstance(target, BundledTarget)
    command = target.command()
    assert command[command.index("--weights") + 1] == str(directory) and "--quant" not in command
    doc = target.describe()
    assert doc.quant == "fp32" and doc.weights_dir == str(directory)  # the directory's format, not the target's
    assert config.redacted()["weights"] == str(directory)
    with pytest.raises(ValueError, match="use a bundled target with it"):
        BenchmarkConfig(target="http://127.0.0.1:9/v1", weights=str(directory), requests=4)
    with pytest.raises(TargetError, match="not a readable weights directory"):
        make_target(BenchmarkConfig(target="bundled", weights=str(directory / "nope"), requests=4), print)


def test_the_checklist_serves_a_weights_directory_and_its_report_names_it(
    lowrank: tuple[Compressed, Path], tmp_path: Path
) -> None:
    from checks.cli import main
    from reports import store
    from reports.readiness_report import ReadinessReport

    _, directory = lowrank
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    args = ["run", "--target", "bundled", "--weights", str(directory), "--only", "performance", "--eager"]
    args += ["--threads", "1", "--profile", "concurrency:1", "--requests", "3", "--input-len", "16"]
    args += ["--output-len", "4", "--out", str(out), "--markdown", str(md), "--quiet"]
    assert main(args) in (0, 1)  # ready or not against the chat SLO on this CPU: served either way
    report = store.load(out, ReadinessReport)
    assert report.target.quant == "fp32" and report.target.weights_dir == str(directory)
    assert report.benchmark is not None and report.benchmark.target.weights_dir == str(directory)
    text = md.read_text()
    assert f"- Weight format: fp32 from {directory}" in text
    again = next(line for line in text.splitlines() if line.startswith("python -m checks run"))
    assert "--target bundled:fp32 " in again and f" --weights {directory} " in again and again.endswith(" --eager")


def test_the_sidebar_takes_a_weights_directory_for_benchmark_and_checklist() -> None:
    from tests.ui.app_session import open_app

    at = open_app("app_pages/benchmark.py")
    at.text_input(key="target_weights").input("/models/gptq-g128").run()
    assert not at.exception
    line = next(m.value for m in at.markdown if m.value.startswith("**Target:**"))
    assert "weights /models/gptq-g128 (their own format)" in line
    at.switch_page("app_pages/checklist.py").run()
    assert not at.exception
    line = next(m.value for m in at.markdown if m.value.startswith("**Target:**"))
    assert "weights /models/gptq-g128 (their own format)" in line
