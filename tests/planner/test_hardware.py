"""planner.hardware: this machine (CPU only, no GPU) and its CLI; NVML absent, failing, or a fake
with two GPUs; and the GPU table the Hardware page shows."""

from __future__ import annotations

import json
import types
from pathlib import Path

import psutil
import pynvml
import pytest
import torch

from planner import hardware, nvml
from planner.__main__ import main
from planner.catalog import load_catalog
from planner.devices import resolve_device
from planner.errors import PlannerError
from planner.hardware import Hardware, describe_accelerator, describe_nvml, detect, gpu_story, summary_lines
from planner.tables import gpu_frame


def test_detect_reports_this_machine(weights_cache_dir: Path) -> None:
    hw = detect()
    assert isinstance(hw, Hardware)
    assert hw.cpu_model and hw.cpu_model != "unknown CPU"
    assert hw.logical_cores == psutil.cpu_count(logical=True)
    assert hw.physical_cores is not None and 1 <= hw.physical_cores <= hw.logical_cores
    assert hw.ram_total_bytes is not None and hw.ram_total_bytes > 0
    assert hw.ram_available_bytes is not None and 0 < hw.ram_available_bytes <= hw.ram_total_bytes
    assert hw.disk_path == str(weights_cache_dir)
    assert hw.disk_free_bytes is not None and hw.disk_free_bytes > 0
    assert hw.torch_version == torch.__version__
    assert hw.cuda_available == torch.cuda.is_available()
    assert hw.cuda_device_count == len(hw.gpus) == torch.cuda.device_count()
    assert set(hw.isa) <= set(hardware.ISA_FLAGS)
    assert hw.notes == ()


def test_hardware_is_frozen() -> None:
    hw = detect()
    with pytest.raises(AttributeError):
        hw.cpu_model = "other"  # type: ignore[misc]


def test_isa_flags_match_cpuinfo() -> None:
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    expected = [name for name, aliases in hardware.ISA_FLAGS.items() if flags.intersection(aliases)]
    assert list(detect().isa) == expected


@pytest.mark.parametrize(
    ("cpuinfo", "model", "isa"),
    [
        (
            "model name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n",
            "Test CPU 9000",
            ("avx2", "avx512f", "avx512_bf16", "amx_tile"),
        ),
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes\n", None, ("neon",)),
        ("flags\t\t: fpu sse2\n", None, ()),
    ],
)
def test_parse_cpuinfo(cpuinfo: str, model: str | None, isa: tuple[str, ...]) -> None:
    assert hardware._isa(cpuinfo) == isa
    if model is not None:
        assert hardware._cpu_model(cpuinfo) == model
    else:
        assert hardware._cpu_model(cpuinfo)  # falls back to platform, never empty


def test_disk_free_for_a_cache_dir_that_does_not_exist_yet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "not" / "yet" / "made"
    monkeypatch.setenv("PREFLIGHT_CACHE_DIR", str(missing))
    hw = detect()
    assert hw.disk_path == str(missing)
    assert hw.disk_free_bytes is not None and hw.disk_free_bytes > 0


def test_cli_detect_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detect", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cpu_model"] == detect().cpu_model
    assert data["cuda_available"] is torch.cuda.is_available()
    assert isinstance(data["isa"], list)


def test_cli_detect_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detect"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"CPU: {detect().cpu_model}")
    assert "RAM:" in out and "torch:" in out


def fake_pynvml(gpus: list[dict], init_error: Exception | None = None, fail_on: str | None = None) -> types.ModuleType:
    """A stand-in pynvml with the real exception classes and the calls planner.nvml makes."""
    m = types.ModuleType("fake_pynvml")
    for name in ("NVMLError", "NVMLError_LibraryNotFound", "NVMLError_NotSupported", "NVMLError_Unknown"):
        setattr(m, name, getattr(pynvml, name))

    def call(name: str, value: object) -> object:
        if fail_on == name:
            raise pynvml.NVMLError_Unknown()
        return value

    def init() -> None:
        if init_error is not None:
            raise init_error

    def cc(h: int) -> tuple[int, int]:
        if gpus[h].get("cc") is None:
            raise pynvml.NVMLError_NotSupported()
        return gpus[h]["cc"]

    m.nvmlInit = init
    m.nvmlShutdown = lambda: None
    m.nvmlSystemGetDriverVersion = lambda: call("driver", b"550.54.15")
    m.nvmlSystemGetCudaDriverVersion = lambda: 12040
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetName = lambda h: call("name", gpus[h]["name"])
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=gpus[h]["total"], used=gpus[h]["used"], free=0)
    m.nvmlDeviceGetCudaComputeCapability = cc
    return m


H100 = {"name": "NVIDIA H100 80GB HBM3", "total": 85520809984, "used": 512 * 2**20, "cc": (9, 0)}


def test_this_machine_without_a_gpu_says_why() -> None:
    hw = detect()
    if hw.nvml_status == "ok":
        pytest.skip("this machine has a working NVIDIA driver")
    assert hw.gpus == () and hw.gpu_count == 0
    assert hw.driver_version is None and hw.cuda_driver_version is None
    assert "LibraryNotFound" in hw.nvml_reason
    assert "no NVIDIA driver library" in hw.nvml_reason
    assert summary_lines(hw)[-1] == describe_nvml(hw) == f"NVML: unavailable: {hw.nvml_reason}"
    assert hw.notes == ()  # a missing GPU is a fact, not a failed probe


def test_nvml_package_missing() -> None:
    def missing() -> None:
        raise ImportError("No module named 'pynvml'")

    report = nvml.probe(missing)
    assert report.status == "unavailable" and report.gpus == ()
    assert "pip install 'nvidia-ml-py>=13'" in report.reason


def test_nvml_library_not_found() -> None:
    hw = detect(lambda: fake_pynvml([], init_error=pynvml.NVMLError_LibraryNotFound()))
    assert hw.nvml_status == "unavailable"
    assert hw.nvml_reason.startswith("NVML could not start: NVMLError_LibraryNotFound")
    assert hw.gpus == ()


def test_nvml_two_gpus() -> None:
    second = H100 | {"cc": None, "used": 0}
    hw = detect(lambda: fake_pynvml([H100, second]))
    assert hw.nvml_status == "ok" and hw.nvml_reason is None
    assert (hw.driver_version, hw.cuda_driver_version) == ("550.54.15", "12.4")
    assert [(g.index, g.name, g.compute_capability, g.source) for g in hw.gpus] == [
        (0, "NVIDIA H100 80GB HBM3", "9.0", "nvml"),
        (1, "NVIDIA H100 80GB HBM3", None, "nvml"),  # NotSupported is None, not 0
    ]
    assert hw.gpus[0].total_memory_bytes == 85520809984 and hw.gpus[0].used_memory_bytes == 512 * 2**20
    assert describe_nvml(hw) == "NVML: driver 550.54.15, CUDA 12.4, 2 GPU(s)"


def test_nvml_query_failure_is_an_error_not_a_crash() -> None:
    hw = detect(lambda: fake_pynvml([H100], fail_on="name"))
    assert hw.nvml_status == "error" and hw.gpus == ()
    assert hw.nvml_reason.startswith("NVML query failed: NVMLError_Unknown")


@pytest.mark.parametrize(("v", "text"), [(12040, "12.4"), (11080, "11.8"), (13000, "13.0")])
def test_cuda_version_text(v: int, text: str) -> None:
    assert nvml.cuda_version_text(v) == text


def test_detected_gpu_maps_to_the_catalog() -> None:
    hw = detect(lambda: fake_pynvml([H100, H100]))
    device = resolve_device("detected", 1, load_catalog(), hw=hw)
    assert (device.gpu_id, device.count, device.kind) == ("h100-sxm", 2, "gpu")


def test_detected_gpu_missing_from_the_catalog() -> None:
    hw = detect(lambda: fake_pynvml([{"name": "NVIDIA GeForce RTX 5090", "total": 1, "used": 0, "cc": (12, 0)}]))
    with pytest.raises(
        PlannerError, match="detected GPU 'NVIDIA GeForce RTX 5090' is not in planner/data/gpus.json"
    ) as e:
        resolve_device("detected", 1, load_catalog(), hw=hw)
    assert str(e.value).endswith("give its figures inline: --gpu custom:mem=24GiB,bw=936GB/s,bf16=71TF")


def test_gpu_frame_has_one_row_per_gpu_and_says_what_was_not_measured() -> None:
    second = H100 | {"cc": None, "used": 0}
    frame = gpu_frame(detect(lambda: fake_pynvml([H100, second])))
    assert list(frame.columns) == ["index", "name", "memory total", "memory used", "compute capability", "source"]
    assert list(frame["index"]) == [0, 1]
    first = {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "memory total": "79.6 GiB",
        "memory used": "0.5 GiB",
        "compute capability": "9.0",
        "source": "nvml",
    }
    assert frame.iloc[0].to_dict() == first
    assert frame.iloc[1]["compute capability"] == "not measured"


def test_the_gpu_story_is_a_sentence_for_each_case() -> None:
    """The Hardware page's words (planner.hardware.gpu_story); NVML's own message stays in describe_nvml."""
    no_driver = detect(lambda: fake_pynvml([], init_error=pynvml.NVMLError_LibraryNotFound()))
    no_gpu = detect(lambda: fake_pynvml([]))
    broken = detect(lambda: fake_pynvml([H100], fail_on="name"))
    two = detect(lambda: fake_pynvml([H100, H100]))
    if no_driver.cuda_available or no_driver.mps_available:
        pytest.skip("torch sees an accelerator on this machine")
    expected = (
        "This machine has no GPU that Preflight can use: no NVIDIA driver is installed, so no NVIDIA GPU "
        "can be used, and torch sees no CUDA"
    )
    assert gpu_story(no_driver).startswith(expected)
    assert "the NVIDIA driver 550.54.15 is installed but reports no GPU" in gpu_story(no_gpu)
    assert "the NVIDIA driver did not answer" in gpu_story(broken)
    assert gpu_story(two) == f"2 GPU(s): {describe_accelerator(two)}."
    assert all("NVMLError" not in gpu_story(hw) for hw in (no_driver, no_gpu, broken, two))
