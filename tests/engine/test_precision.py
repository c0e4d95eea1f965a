"""The precision study (engine/studies/precision.py): scheme round trips on the real weights, the study on the real
model at a small size, and its heatmap on the Reports page (the view the Engine studies page shows)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
import torch

from engine.model.gguf_file import GGUFModelFile
from engine.quant.functions import FP8_E5M2_MAX, dequantize_fp8, fp8_to_float, quantize_fp8
from engine.quant.roundtrip import PRECISION_SCHEMES, output_error, roundtrip, weight_errors
from engine.studies.registry import STUDIES, StudyOptions, StudyResult, format_study
from engine.study_cli import study_command, study_document
from reports.history import History
from reports.home import history_dir
from tests.ui.app_session import open_app

# One torch thread (see tests/engine/test_studies.py); 24 activation tokens and one 48-token window keep it small.
SMALL = StudyOptions(device="cpu", threads=1, precision_act_tokens=24, eval_max_tokens=48, eval_window=48)


@pytest.fixture(scope="module")
def gguf() -> GGUFModelFile:
    return GGUFModelFile()


@pytest.fixture(scope="module")
def study() -> StudyResult:
    return STUDIES["precision"](SMALL, progress=None)


def _rel_fro(w: torch.Tensor, scheme: str) -> float:
    return weight_errors(w, roundtrip(w, scheme))["weight_rel_fro"]


def test_e5m2_round_trips_its_own_values_exactly() -> None:
    # Every finite float8_e5m2 value, times a power-of-two row scale (exact in float32), comes back unchanged.
    values = torch.arange(256, dtype=torch.uint8).view(torch.float8_e5m2).float()
    values = values[torch.isfinite(values)]
    w = torch.stack([values, values * 2.0**-10])
    q, scale = quantize_fp8(w, scale=torch.tensor([1.0, 2.0**-10]), dtype=torch.float8_e5m2)
    assert q.dtype == torch.float8_e5m2
    assert torch.equal(dequantize_fp8(q, scale), w)
    assert torch.equal(fp8_to_float(q), q.float())  # the lookup table matches torch's own cast
    # Beyond the largest finite value it saturates instead of becoming inf.
    big, _ = quantize_fp8(torch.tensor([[1e6, -1e6]]), scale=torch.tensor([1.0]), dtype=torch.float8_e5m2)
    assert big.float().tolist() == [[FP8_E5M2_MAX, -FP8_E5M2_MAX]]


def test_reconstruction_error_orders_on_real_layers(gguf: GGUFModelFile) -> None:
    # A block linear the file stores as Q4_1: int4-g32 re-finds its grid exactly, g128 cannot.
    wo = gguf.tensor("blk.7.attn_output.weight")
    assert _rel_fro(wo, "int4-g32") < 1e-6 < _rel_fro(wo, "int4-g128")
    assert _rel_fro(wo, "int8") < _rel_fro(wo, "int4-g128")
    assert _rel_fro(wo, "fp8-e4m3") < _rel_fro(wo, "fp8-e5m2")  # one more mantissa bit
    # The Q8_0 embedding / head is off any 4-bit grid: more bits or smaller groups, less error.
    head = gguf.tensor("token_embd.weight")[:4096]
    errors = {s: _rel_fro(head, s) for s in PRECISION_SCHEMES}
    assert errors["int8"] < errors["int4-g32"] < errors["int4-g128"]
    assert errors["fp8-e4m3"] < errors["fp8-e5m2"]
    x = torch.randn(8, head.shape[1])
    assert output_error(head, roundtrip(head, "int4-g32"), x) < output_error(head, roundtrip(head, "int4-g128"), x)


def test_precision_study_compares_every_layer_and_scheme(study: StudyResult) -> None:
    model = {r["scheme"]: r for r in study.rows if r["scope"] == "model"}
    layers = [r for r in study.rows if r["scope"] == "layer"]
    assert list(model) == ["fp32", *PRECISION_SCHEMES]
    assert model["fp32"]["mean_kl_nats"] == 0.0 and model["fp32"]["top1_agreement"] == 1.0
    n_layers = study.conditions["linear_layers"]
    assert n_layers == 30 * 4 + 1  # wqkv, wo, w13, w2 per block and the tied head
    assert len(layers) == n_layers * len(PRECISION_SCHEMES)
    for row in layers:
        assert row["weight_rel_fro"] >= 0 and row["weight_max_abs"] >= 0 and row["output_rel_err"] >= 0
    for scheme in ("fp8-e4m3", "fp8-e5m2", "int8", "int4-g128"):
        row = model[scheme]
        assert row["mean_kl_nats"] > 0 and 0 < row["top1_agreement"] <= 1 and math.isfinite(row["perplexity"])
        named = row["most_sensitive"].split(", ")
        worst = max((r for r in layers if r["scheme"] == scheme), key=lambda r: r["output_rel_err"])
        assert named[0] == worst["layer"] and len(named) == 5
    # int4-g32 keeps the file's Q4_1 grid on every block linear, and the head stays Q8_0 end to end.
    assert all(r["output_rel_err"] == 0 for r in layers if r["scheme"] == "int4-g32" and r["kind"] != "head")
    assert model["int4-g32"]["mean_kl_nats"] < 1e-6
    assert model["int4-g128"]["mean_kl_nats"] > model["int8"]["mean_kl_nats"]
    text = format_study(study)
    assert "int4-g128" in text and "L0.wqkv" not in text.split("=" * 20)[1]  # the console keeps the model rows
    assert any(note.startswith("Most sensitive under int8") for note in study.notes)
    assert any(note.startswith("Among the most sensitive under every scheme") for note in study.notes)
    assert study_command("precision", SMALL).endswith("--threads 1 --eval-tokens 48 --eval-window 48 --act-tokens 24")


def test_studies_page_offers_precision_and_reports_page_draws_its_heatmap(study: StudyResult) -> None:
    at = open_app("app_pages/studies.py")
    at.selectbox(key="engine_study_name").set_value("precision").run()
    assert not at.exception and not at.error
    assert at.multiselect(key="engine_study_precision_schemes").value == list(PRECISION_SCHEMES)
    assert not at.button(key="engine_study_run").disabled
    at.multiselect(key="engine_study_precision_schemes").set_value([]).run()
    assert "precision schemes must be some of" in at.error[0].value

    doc = study_document("precision", SMALL, study, datetime.now(UTC))
    History(history_dir()).save(doc)
    at.switch_page("app_pages/reports.py").run()
    assert not at.exception, at.exception
    charts = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert any("Output error per layer and scheme" in spec for spec in charts), "no heatmap"
    model_table = next(t.value for t in at.dataframe if "most_sensitive" in t.value.columns)  # then the full frame
    assert model_table["scheme"].tolist() == ["fp32", *PRECISION_SCHEMES]
    assert "output_rel_err" in model_table.columns


def test_fp8_e5m2_is_a_served_format_that_loads_from_the_cache_and_generates() -> None:
    from engine.quant.linear import Fp8E5M2Linear
    from engine.run.runtime import Engine, LoadOptions
    from engine.sampling import SamplingParams

    Engine.load(LoadOptions("fp8-e5m2", None, "cpu", True))  # converts from the GGUF and writes the cache entry
    engine = Engine.load(LoadOptions("fp8-e5m2", None, "cpu", True))
    assert engine.info.source == "cache" and engine.info.quant == "fp8-e5m2"
    head = engine.loaded.model.embedding.head
    wo = engine.loaded.model.layers[0].attention.wo
    for module in (head, wo):
        assert isinstance(module, Fp8E5M2Linear) and module.weight.dtype == torch.float8_e5m2
        assert module.kernel.startswith("fp8-e5m2: dequantize-on-the-fly")
    result = engine.stream("The capital of France is", SamplingParams(max_tokens=4, ignore_eos=True)).drain()
    assert result.completion_tokens == 4 and result.text.strip()
