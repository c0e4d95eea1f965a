"""Catalogs validated by schema, parameter counts against model cards, models from config.json / GGUF."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from planner.catalog import DATA_DIR, load_catalog
from planner.errors import CatalogError, ModelFileError, UnknownNameError
from planner.model_files import model_from_file, model_from_gguf, model_from_hf_config

# Published parameter counts (model cards), in billions, and our count from the shapes.
PUBLISHED_B = {
    "smollm2-135m": 0.135,
    "llama-3.2-1b": 1.24,
    "llama-3.2-3b": 3.21,
    "llama-3.1-8b": 8.03,
    "llama-3.1-70b": 70.6,
    "llama-3.1-405b": 406,
    "qwen2.5-7b": 7.61,
    "qwen2.5-72b": 72.7,
    "mistral-7b": 7.24,
    "mixtral-8x7b": 46.7,
}


def test_catalog_validates_and_every_entry_cites_a_source() -> None:
    cat = load_catalog()
    assert set(PUBLISHED_B) | {"deepseek-v3"} == set(cat.models)
    assert {
        "t4",
        "l4",
        "l40s",
        "a10g",
        "a100-40",
        "a100-80",
        "h100-sxm",
        "h100-pcie",
        "h200",
        "rtx-4090",
        "mi300x",
    } <= set(cat.gpus)
    assert {
        "bf16",
        "fp16",
        "fp8",
        "int8",
        "awq",
        "gptq",
        "q8_0",
        "q6_k",
        "q5_k_m",
        "q4_k_m",
        "q4_0",
        "q3_k_m",
        "q2_k",
    } <= set(cat.formats)
    for item in [
        *cat.models_file.models,
        *cat.gpus_file.gpus,
        *cat.formats.values(),
        *cat.engines.values(),
    ]:
        assert item.source.strip(), item.id


@pytest.mark.parametrize(("model_id", "billions"), PUBLISHED_B.items())
def test_parameter_counts_match_the_model_cards(model_id: str, billions: float) -> None:
    assert load_catalog().models[model_id].params_total / 1e9 == pytest.approx(billions, rel=0.01)


def test_exact_parameter_counts() -> None:
    models = load_catalog().models
    assert models["llama-3.1-8b"].params_total == 8_030_261_248  # 32 x 218,112,000 + 2 x 525,336,576 + 4096
    mixtral = models["mixtral-8x7b"]
    assert (mixtral.params_total, mixtral.params_active) == (46_702_792_704, 12_879_925_248)
    ds = models["deepseek-v3"]
    assert (ds.params_total, ds.params_active, ds.uses_mla) == (671e9, 37e9, True)


def _copy_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(DATA_DIR, data)
    return data


def _edit(path: Path, change) -> None:  # noqa: ANN001
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        ("gpus.json", lambda d: d["gpus"][0].update(bandwith_gb_s=1), "gpus.json: gpus.0.bandwith_gb_s: Extra inputs"),
        ("gpus.json", lambda d: d["gpus"][0].update(source=""), "gpus.json: gpus.0.source: String should have"),
        ("models.json", lambda d: d["models"][0].update(n_layers=0), "models.json: models.0.n_layers: Input should be"),
        ("formats.json", lambda d: d["formats"][0].update(quality="tiny"), "formats.json: formats.0.quality: Input"),
        ("models.json", lambda d: d["models"].append(d["models"][0]), "duplicate model ids: smollm2-135m"),
        ("engines.json", lambda d: d["engines"][0]["formats"].append("q9"), "lists unknown formats: q9"),
        ("models.json", lambda d: d["models"][0].update(n_kv_heads=2), "9 heads are not a multiple of 2 KV heads"),
        (
            "measured_quality.json",
            lambda d: d["formats"][2].update(kl=0.1),
            "measured_quality.json: formats.2.kl: Extra inputs",
        ),
        (
            "measured_quality.json",
            lambda d: d["formats"].pop(2),
            "formats without a row in measured_quality.json: bundled-int8",
        ),
        ("measured_quality.json", lambda d: d.update(reference="fp64"), "no row for the reference 'fp64'"),
        (
            "engines.json",
            lambda d: next(e for e in d["engines"] if e["id"] == "bundled")["formats"].remove("bundled-fp8-e5m2"),
            "engine bundled must list exactly the formats with an engine_quant",
        ),
    ],
)
def test_schema_rejects_bad_catalogs(tmp_path: Path, file: str, change, message: str) -> None:  # noqa: ANN001
    data = _copy_data(tmp_path)
    _edit(data / file, change)
    with pytest.raises(CatalogError, match=message.replace("(", r"\(")):
        load_catalog(data)


def test_unknown_model_suggests_close_ids() -> None:
    with pytest.raises(UnknownNameError) as err:
        load_catalog().model("llama-8b")
    assert str(err.value) == "unknown model 'llama-8b': did you mean llama-3.1-8b, llama-3.2-3b, llama-3.2-1b?"
    assert load_catalog().model("Llama-3.1-70B-Instruct").id == "llama-3.1-70b"
    assert load_catalog().gpu("H100 SXM").id == "h100-sxm"


def _llama_config(**extra: object) -> dict:
    return {
        "model_type": "llama",
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
        **extra,
    }


def test_hf_config_matches_the_catalog(tmp_path: Path) -> None:
    path = tmp_path / "Llama-3.1-8B" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(_llama_config()))
    spec = model_from_file(path)
    ref = load_catalog().models["llama-3.1-8b"]
    assert (spec.id, spec.head_dim, spec.params_total) == ("Llama-3.1-8B", 128, ref.params_total)


def test_hf_config_moe_mla_and_sliding_window(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps(
            _llama_config(
                model_type="mixtral",
                vocab_size=32000,
                num_local_experts=8,
                num_experts_per_tok=2,
                max_position_embeddings=32768,
            )
        )
    )
    mixtral = model_from_hf_config(cfg)
    assert (mixtral.params_total, mixtral.params_active) == (46_702_792_704, 12_879_925_248)

    cfg.write_text(json.dumps(_llama_config(model_type="qwen2", sliding_window=131072, use_sliding_window=False)))
    assert model_from_hf_config(cfg).sliding_window is None and model_from_hf_config(cfg).qkv_bias

    layer_types = ["sliding_attention"] * 5 + ["full_attention"]
    cfg.write_text(json.dumps(_llama_config(sliding_window=1024, layer_types=layer_types * 5 + layer_types[:2])))
    spec = model_from_hf_config(cfg)
    assert (spec.sliding_window, spec.swa_layers) == (1024, 27)

    cfg.write_text(json.dumps(_llama_config(kv_lora_rank=512, qk_rope_head_dim=64)))
    assert model_from_hf_config(cfg).uses_mla


def test_gguf_metadata_of_the_bundled_model() -> None:
    from engine.model.gguf_file import bundled_model_path  # tests may import the engine; planner does not

    spec = model_from_gguf(bundled_model_path())
    ref = load_catalog().models["smollm2-135m"]
    shape = (
        "n_layers",
        "hidden_size",
        "n_heads",
        "n_kv_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
        "max_context",
        "tied_embeddings",
    )
    assert [getattr(spec, k) for k in shape] == [getattr(ref, k) for k in shape]
    assert spec.params_total == ref.params_total == 134_515_008  # counted from the file's tensor shapes


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json at all", "cannot read .* as a config.json"),
        (b'{"model_type": "llama"}', "model.bin: lacks num_hidden_layers or n_layer; lacks hidden_size or n_embd"),
        (b"GGUF\x03\x00\x00\x00", "cannot read GGUF file .*: truncated or corrupt"),
    ],
)
def test_bad_model_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        model_from_file(path)


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="model file not found"):
        model_from_file(tmp_path / "nope.gguf")
