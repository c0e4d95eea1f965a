"""The resource timeline's data, as a benchmark result saves it: samples and their summary.

`checks.load.resources.ResourceMonitor` takes the samples in a sampler thread, so
they stay light stdlib dataclasses; pydantic validates them as fields of the saved
document, and `__pydantic_config__` makes an unknown key in a file an error. The
summary is computed once per run and is a frozen pydantic model. A figure that no
sample measured is None, never 0 (STYLE.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU at one instant. None where the device does not report the field."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    index: int
    name: str
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    utilization_percent: float | None


@dataclass(frozen=True, slots=True)
class ResourceSample:
    """Host, watched-process and GPU readings at run-clock time `t_s`."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    t_s: float
    host_cpu_percent: float
    host_ram_used_bytes: int
    host_ram_total_bytes: int
    proc_rss_bytes: int | None  # watched process + descendants; None without a pid or once it has exited
    proc_cpu_percent: float | None  # same tree, percent of one core
    gpus: tuple[GpuSample, ...] = ()


class GpuSummary(BaseModel):
    """One GPU over the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int
    name: str
    peak_memory_used_bytes: int | None
    memory_total_bytes: int | None
    mean_utilization_percent: float | None
    sample_count: int


class ResourceSummary(BaseModel):
    """Peaks and means over a run's timeline; None for a figure that no sample measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_count: int
    peak_host_cpu_percent: float | None
    peak_host_ram_used_bytes: int | None
    host_ram_total_bytes: int | None
    peak_proc_rss_bytes: int | None = Field(description="watched process tree")
    mean_proc_cpu_percent: float | None = Field(description="watched process tree, percent of one core")
    gpus: list[GpuSummary] = Field(default_factory=list)
