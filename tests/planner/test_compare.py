"""Predicted vs measured: the planner's CPU path against the real bundled engine on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from planner.__main__ import main
from planner.catalog import load_catalog
from planner.compare import ComparisonRow, MeasuredRun, format_comparison
from planner.cpu_probe import measure
from planner.entrypoints import compare_run
from planner.errors import PlannerError

PROMPT = "Write a short poem about the sea and the wind over the hills."
# One torch thread on both sides: on a shared 2-core machine, 2-thread OpenMP runs swing
# several-fold with other load, which a prediction cannot know about.
THREADS = 1


def engine_json(result: object, info: object) -> dict:
    """What `python -m engine generate --json` prints, built from the same objects."""
    return result.to_dict() | {  # type: ignore[attr-defined]
        "load": {"quant": info.quant, "device": info.device, "weight_bytes": info.weight_bytes}
    }  # type: ignore[attr-defined]


SAMPLE = {
    "prompt_tokens": 44,
    "completion_tokens": 32,
    "timings": {"prefill_s": 0.25, "decode_s": 0.5, "prefill_tok_s": 176.0, "decode_tok_s": 62.0},
    "load": {"quant": "int4", "device": "cpu", "weight_bytes": 99_198_208},
}


def test_measured_run_from_engine_json() -> None:
    run = MeasuredRun.from_engine_json(SAMPLE)
    assert (run.quant, run.prompt_tokens, run.decode_tok_s, run.weight_bytes) == ("int4", 44, 62.0, 99_198_208)
    with pytest.raises(PlannerError, match="not a `python -m engine generate --json` result"):
        MeasuredRun.from_engine_json({"text": "hi"})


def test_comparison_row_arithmetic() -> None:
    row = ComparisonRow("decode", "tok/s", predicted=90.0, measured=60.0)
    assert (row.ratio, row.error, row.within(2.0), row.within(1.4)) == (1.5, 0.5, True, False)
    assert ComparisonRow("decode", "tok/s", 1.0, None).within(2.0) is None  # not measured is not a pass


def test_gpu_run_is_refused_for_the_cpu_prediction() -> None:
    with pytest.raises(PlannerError, match="needs a run with --device cpu"):
        compare_run(SAMPLE | {"load": SAMPLE["load"] | {"device": "cuda:0"}}, measure=lambda: measure(THREADS))


def test_cpu_prediction_within_2x_of_the_bundled_engine(int4) -> None:  # noqa: ANN001
    from engine.sampling import SamplingParams

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        runs = [int4.generate(PROMPT, SamplingParams(max_tokens=32, ignore_eos=True), chat=True) for _ in range(2)]
        cpu = measure.__wrapped__(THREADS)  # measured now, under the same load as the runs
    finally:
        torch.set_num_threads(before)
    best = max(runs, key=lambda r: r.decode_tok_s or 0)
    comparison = compare_run(engine_json(best, int4.info), measure=lambda: cpu)
    print("\n".join(format_comparison(comparison)))
    rows = {r.metric: r for r in comparison.rows}
    assert rows["decode"].measured == best.decode_tok_s and best.completion_tokens == 32
    assert rows["decode"].within(2.0), f"decode predicted {rows['decode'].predicted:.1f} vs {best.decode_tok_s:.1f}"
    assert rows["weight memory"].within(1.1)


def test_dispatch_calibration_still_holds() -> None:
    """engines.json's ops per layer for the bundled engine, recounted over one int4 decode step (the count
    bench/decode_ops.py prints per format and device)."""
    from bench.decode_ops import count_step

    step = count_step("int4", "cpu")
    assert step["ops_per_layer"] == pytest.approx(load_catalog().engines["bundled"].dispatch_ops_per_layer, rel=0.25)


def test_cli_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run.json"
    run.write_text(json.dumps(SAMPLE))
    assert main(["compare", "--measured", str(run), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["metric"] for r in data["rows"]] == ["weight memory", "prefill", "decode"]
    assert data["rows"][2]["measured"] == 62.0 and data["rows"][2]["error"] == pytest.approx(
        data["rows"][2]["predicted"] / 62.0 - 1
    )
    assert main(["compare", "--measured", str(tmp_path / "missing.json")]) == 1
    assert capsys.readouterr().err.startswith("error: cannot read the measured run")
