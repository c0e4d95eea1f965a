"""NVML detection: this machine (no GPU), NVML absent or failing, and a fake NVML with two GPUs."""

from __future__ import annotations

import types

import pynvml
import pytest

from planner import nvml
from planner.catalog import load_catalog
from planner.devices import resolve_device
from planner.errors import PlannerError
from planner.hardware import describe_nvml, detect, summary_lines


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
    hw = detect(lambda: fake_pynvml([{"name": "NVIDIA B200", "total": 1, "used": 0, "cc": (10, 0)}]))
    with pytest.raises(PlannerError, match="detected GPU 'NVIDIA B200' is not in planner/data/gpus.json"):
        resolve_device("detected", 1, load_catalog(), hw=hw)
