"""The Hardware and Plan pages in Streamlit's AppTest (real planner, no mocks)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from streamlit.testing.v1 import AppTest

from planner.catalog import load_catalog
from planner.hardware import describe_nvml, detect, gpu_story
from planner.quality import quality_note
from planner.vllm_memory import version_choices
from tests.model_file_cases import CASES, assert_message, write_gguf


def test_hardware_page_tells_the_gpu_story(app: AppTest) -> None:
    app.switch_page("app_pages/hardware.py").run()
    assert not app.exception
    assert app.title[0].value == "Hardware"
    assert [m.label for m in app.metric] == [
        "Cores (physical / logical)",
        "RAM total",
        "RAM available",
        "Disk free (weights cache)",
    ]
    hw = detect()
    if not hw.gpus:
        story = app.info[0].value  # a sentence for a person; NVML's own words go in the details line
        assert story.startswith(gpu_story(hw)) and story.startswith("This machine has no GPU that Preflight can use: ")
        assert "nvidia-ml-py" in story and "Plan page" in story
        assert any(c.value == f"Details: {describe_nvml(hw)}" for c in app.caption)
    app.button(key="hardware_measure").click().run()
    assert not app.exception
    labels = [m.label for m in app.metric]
    assert labels[4:] == ["Bandwidth (largest working set)", "fp32 matmul", "bf16 matmul", "Dispatch per op"]
    assert app.metric[4].value.endswith("GB/s")
    assert any(c.value.startswith("measured with torch on ") for c in app.caption)
    assert app.subheader[-1].value == "Predicted vs measured"  # upload a `python -m engine generate --json` run


def test_plan_page_default_is_8b_on_one_h100(app: AppTest) -> None:
    app.switch_page("app_pages/plan.py").run()
    assert not app.exception and not app.error
    assert app.subheader[0].value == "Best: TensorRT-LLM, FP8 (W8A8)"
    assert [m.label for m in app.metric] == [
        "TTFT",
        "TPOT",
        "Output tok/s at this load",
        "Saturated output tok/s",
        "Meets SLO",
    ]
    assert app.metric[4].value == "yes"
    table = app.dataframe[0].value
    assert list(table["engine"][:2]) == ["TensorRT-LLM", "vLLM"] and table["meets SLO"][0]
    assert app.code[0].value.splitlines()[-1].startswith('trtllm-serve "$FP8_CHECKPOINT" --backend pytorch')
    app.selectbox(key="plan_option").set_value(1).run()  # the second option, by position
    last = app.code[0].value.splitlines()[-1]  # after the comment naming the release the KV cache was planned for
    assert last.startswith("vllm serve meta-llama/Llama-3.1-8B-Instruct --quantization fp8")
    assert len(app.get("vega_lite_chart")) == 2  # memory breakdown and roofline


def _how_predicted(app: AppTest) -> pd.DataFrame:
    (expander,) = [e for e in app.expander if e.label == "How each figure is predicted"]
    return expander.dataframe[0].value


def test_plan_page_shows_how_each_figure_is_predicted(app: AppTest) -> None:
    """Issue 22, Page: the top option, then any picked one, with each figure's assumptions and whose they are."""
    app.switch_page("app_pages/plan.py").run()
    assert not app.exception and not app.error
    assert "uncalibrated: catalog assumptions (planner/data/engines.json)" in [i.value for i in app.info]
    table = _how_predicted(app)
    assert list(table.columns) == ["figure", "value", "assumption", "setting", "source"]
    assert list(dict.fromkeys(table["figure"])) == [
        "Memory per device",
        "TTFT",
        "TPOT",
        "Output tok/s at this load",
        "Saturated output tok/s",
    ]
    assert not table["source"].eq("calibrated").any()
    options = app.dataframe[0].value
    ttft = table[table["figure"] == "TTFT"]["value"].iloc[0]
    assert ttft == f"{options['TTFT ms'][0]:,.1f} ms"  # the top option's, as the options table shows it
    app.selectbox(key="plan_option").set_value(1).run()
    ttft = _how_predicted(app)[lambda t: t["figure"] == "TTFT"]["value"].iloc[0]
    assert ttft == f"{options['TTFT ms'][1]:,.1f} ms"  # now the picked option's


def test_plan_page_405b_on_8_h100s_lists_what_cannot_run(app: AppTest) -> None:
    app.switch_page("app_pages/plan.py").run()
    app.selectbox(key="plan_model").set_value("llama-3.1-405b")
    app.number_input(key="plan_gpus").set_value(8)
    app.selectbox(key="plan_slo").set_value("mlperf-llama3.1-405b-server").run()
    assert not app.exception and not app.error
    unfit = app.dataframe[-1].value
    reasons = dict(zip(unfit["engine"] + " " + unfit["format"], unfit["why not"], strict=True))
    assert reasons["vLLM + Ray (multi-node) BF16"].startswith("needs 2 nodes x 8 GPUs = 16 GPUs")
    (capacity,) = [d.value for d in app.dataframe if "devices per replica" in d.value.columns]
    assert capacity["devices per replica"][0] == 8


def test_plan_page_bad_input_is_shown_not_raised(app: AppTest) -> None:
    app.switch_page("app_pages/plan.py").run()
    app.number_input(key="plan_input").set_value(8000)
    app.number_input(key="plan_output").set_value(1000).run()
    assert not app.exception
    assert app.error[0].value == (
        "input_tokens + output_tokens = 9000 exceeds context 8192: raise the context or shorten the request"
    )
    app.number_input(key="plan_input").set_value(1024)
    app.text_input(key="plan_model_path").set_value("/nonexistent/model.gguf").run()
    assert not app.exception
    assert app.error[0].value == "model file not found: /nonexistent/model.gguf"


def test_plan_page_plans_a_cached_prompt_start(app: AppTest) -> None:
    """The "Cached prompt tokens" input: the prompt's start the prefix cache serves costs no prefill; a whole
    prompt cached is one clear error, not an exception."""
    app.switch_page("app_pages/plan.py").run()
    plain = app.metric[0].value
    app.number_input(key="plan_input").set_value(2048)
    app.number_input(key="plan_cached_input").set_value(0).run()
    uncached = app.metric[0].value
    app.number_input(key="plan_cached_input").set_value(1536).run()
    assert not app.exception and not app.error
    assert float(app.metric[0].value.split()[0]) < float(uncached.split()[0]) and plain
    assert "prefill computes 512" in " ".join(str(v) for v in _how_predicted(app).to_numpy().ravel())
    app.number_input(key="plan_cached_input").set_value(2048).run()
    assert not app.exception
    assert app.error[0].value.startswith("cached_input_tokens 2048 must be below the prompt's 2048 tokens")


def test_plan_page_for_this_cpu(app: AppTest) -> None:
    app.switch_page("app_pages/plan.py").run()
    app.selectbox(key="plan_model").set_value("smollm2-135m")
    app.selectbox(key="plan_gpu").set_value("cpu")
    app.number_input(key="plan_concurrency").set_value(1).run()
    assert not app.exception and not app.error
    engines = set(app.dataframe[0].value["engine"])
    assert engines <= {"llama.cpp (llama-server)", "Preflight bundled engine"}
    assert any(c.value.startswith("CPU figures measured with torch") for c in app.caption)
    # a bundled option's reasons quote its measured quality (planner/quality.py, issue 19)
    options = app.selectbox(key="plan_option").options
    app.selectbox(key="plan_option").set_value(next(i for i, o in enumerate(options) if "Preflight" in o)).run()
    label = options[app.selectbox(key="plan_option").value]  # "#7 Preflight bundled engine bundled int4"
    fmt = load_catalog().format(" ".join(label.split()[-2:]))
    line = f"- quality ({fmt.quality}): {quality_note(fmt, load_catalog())}"
    assert line.startswith("- quality (") and "measured on the bundled SmolLM2-135M-Instruct.Q4_1" in line
    assert any(line in m.value.splitlines() for m in app.markdown)


def test_plan_page_shows_each_bad_model_file_as_one_error(app: AppTest, tmp_path: Path) -> None:
    """Issue 16, item 16: the page shows the CLI's message in st.error, never a traceback."""
    app.switch_page("app_pages/plan.py").run()
    for name, write, expected in CASES:
        folder = tmp_path / name
        folder.mkdir()
        path = write(folder)
        app.text_input(key="plan_model_path").set_value(str(path)).run()
        assert not app.exception, name
        assert len(app.error) == 1, name
        assert_message(app.error[0].value, expected, path)


def test_plan_page_notes_a_gguf_sized_by_its_largest_layer(app: AppTest, tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "varied.gguf", **{"attention.head_count_kv": [2, 2, 0, 1]})
    app.switch_page("app_pages/plan.py").run()
    app.number_input(key="plan_context").set_value(128)
    app.number_input(key="plan_input").set_value(64)
    app.number_input(key="plan_output").set_value(32)
    app.text_input(key="plan_model_path").set_value(str(path)).run()
    assert not app.exception and not app.error
    assert any(c.value.startswith("llama.attention.head_count_kv varies by layer (0 to 2)") for c in app.caption)


def test_a_plan_option_becomes_the_target_of_a_benchmark_or_a_checklist(app: AppTest) -> None:
    """Plan -> target (issue 21): a remote option pre-fills the URL its launch command serves on, with its
    server preset; a bundled option sets the bundled engine in its format."""
    app.switch_page("app_pages/plan.py").run()
    options = app.selectbox(key="plan_option").options  # the labels; the values are the options' positions
    app.selectbox(key="plan_option").set_value(next(i for i, o in enumerate(options) if " SGLang " in o)).run()
    assert any("http://127.0.0.1:30000/v1" in c.value for c in app.caption)
    app.button(key="plan_check").click().run()
    assert not app.exception and app.title[0].value == "Readiness checklist"
    assert (app.session_state["target_kind"], app.session_state["target_preset"]) == ("Remote endpoint", "SGLang")
    assert any(m.value.startswith("**Target:** `http://127.0.0.1:30000/v1`") for m in app.markdown)

    app.switch_page("app_pages/plan.py").run()
    app.selectbox(key="plan_gpu").set_value("cpu").run()
    assert not [n for n in app.number_input if n.key == "plan_gpus"]  # no GPU count or price for this CPU
    options = app.selectbox(key="plan_option").options
    app.selectbox(key="plan_option").set_value(next(i for i, o in enumerate(options) if "Preflight" in o)).run()
    app.button(key="plan_benchmark").click().run()
    assert not app.exception and app.title[0].value == "Benchmark"
    assert app.session_state["target_kind"] == "Bundled engine"
    assert any(m.value.startswith(f"**Target:** `bundled:{app.session_state['target_quant']}") for m in app.markdown)


def test_plan_page_takes_a_custom_gpu(app: AppTest) -> None:
    """Issue 22: a GPU the catalog lacks, by its figures; the plan names it, and a rate left at 0 rules its
    format out with a reason instead of a traceback."""
    app.switch_page("app_pages/plan.py").run()
    app.selectbox(key="plan_gpu").set_value("custom").run()
    assert [n.key for n in app.number_input if n.key.startswith("plan_custom_")] == [
        "plan_custom_mem",
        "plan_custom_bw",
        "plan_custom_bf16",
        "plan_custom_fp8",
        "plan_custom_int8",
    ]
    app.number_input(key="plan_context").set_value(4096)
    app.number_input(key="plan_concurrency").set_value(8).run()
    assert not app.exception and not app.error
    assert app.subheader[0].value.startswith("Best: ")
    unfit = app.dataframe[-1].value
    reasons = dict(zip(unfit["engine"] + " " + unfit["format"], unfit["why not"], strict=True))
    assert reasons["vLLM FP8 (W8A8)"].startswith("custom GPU (24 GiB, 936 GB/s, 71 TF BF16) has no FP8 tensor rate")
    app.number_input(key="plan_custom_fp8").set_value(142).run()
    assert not app.exception and not app.error
    assert "vLLM FP8 (W8A8)" not in set(app.dataframe[-1].value["engine"] + " " + app.dataframe[-1].value["format"])


def _memory_rows(app: AppTest) -> pd.DataFrame:
    table = _how_predicted(app)
    return table[table["figure"] == "Memory per device"]


def test_plan_page_plans_the_vllm_version_picked(app: AppTest) -> None:
    """Issue 22: the page offers engines.json's vLLM releases, starts at the planner default and says so,
    and plans the one picked through the same planner call; the figures name the release they assume."""
    table = load_catalog().engines_file.vllm_versions
    choices = version_choices(table)
    app.switch_page("app_pages/plan.py").run()
    box = app.selectbox(key="plan_engine_version")
    assert box.value == table.default and box.options == list(choices.values())
    assert box.options[0].endswith(f"(planner default: {table.default})")
    app.selectbox(key="plan_option").set_value(1).run()  # vLLM FP8, second
    assert app.selectbox(key="plan_option").options[1].startswith("#2 vLLM ")
    default_line = f"Figures assume vLLM {table.default} (planner default"
    assert any(c.value.startswith(default_line) for c in app.caption)
    before = _memory_rows(app)
    older = next(v for v in choices if v != table.default and not v.startswith("V"))
    app.selectbox(key="plan_engine_version").set_value(older).run()
    assert not app.exception and not app.error
    options = app.selectbox(key="plan_option").options
    app.selectbox(key="plan_option").set_value(next(i for i, o in enumerate(options) if " vLLM FP8" in o)).run()
    after = _memory_rows(app)
    version = after[after["assumption"] == "vllm_memory_version"]["setting"].iloc[0]
    assert version.startswith(f"vLLM {older}: ") and f"Figures assume {version}" in [c.value for c in app.caption]
    assert app.code[0].value.splitlines()[-2] == f"# KV cache planned for {version}"
    assert after["value"].iloc[0] != before["value"].iloc[0]  # another release's sampler pass, another KV cache


def test_plan_page_takes_tp_links_the_vllm_sampler_and_a_logged_graph_estimate(app: AppTest) -> None:
    """The settings a user reads off their own setup reach the plan as the CLI's flags do: two H100s planned
    without peer-to-peer charge no per-rank buffers; a CUDA-graph estimate shows among vLLM's assumptions."""
    app.switch_page("app_pages/plan.py").run()
    app.number_input(key="plan_gpus").set_value(2).run()
    app.selectbox(key="plan_tp_transport").set_value("host")
    app.selectbox(key="plan_vllm_sampler").set_value("pytorch")
    app.number_input(key="plan_cuda_graph_reserve").set_value(1.25).run()
    assert not app.exception and not app.error
    options = app.selectbox(key="plan_option").options
    tp2 = next(i for i, o in enumerate(options) if " vLLM " in o and "TP2" in o)
    app.selectbox(key="plan_option").set_value(tp2).run()
    settings = " ".join(str(v) for v in _memory_rows(app)["setting"])
    assert "host: " in settings and "1.25 GiB per GPU of CUDA-graph memory charged as given" in settings
    assert "with v1-pytorch-sampler's sampler pass" not in settings  # the default release already sorts
