"""planner.hardware on this machine (CPU only, no GPU) and its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
import torch

from planner import hardware
from planner.__main__ import main
from planner.hardware import Hardware, detect


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
