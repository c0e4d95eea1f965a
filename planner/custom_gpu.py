"""A GPU given inline, `custom:mem=24GiB,bw=936GB/s,bf16=71TF`, for hardware the catalog lacks.

So that nobody is stuck at "unknown GPU": the three figures the roofline needs (memory, memory
bandwidth, dense BF16 tensor rate) are enough to plan, and `fp8=` / `int8=` unlock those formats.
Units are required, because a bare number is where GB/GiB and TF/PF slips hide. The text parses
into the same GpuSpec the catalog builds, so every planner path treats it like a catalog GPU.
"""

from __future__ import annotations

import re

from planner.catalog import GpuSpec
from planner.errors import CustomGpuError

PREFIX = "custom"
EXAMPLE = "custom:mem=24GiB,bw=936GB/s,bf16=71TF"
REQUIRED = ("mem", "bw", "bf16")
OPTIONAL = ("fp8", "int8", "vendor")
VENDORS = ("nvidia", "amd")

# unit (lower case) -> multiplier to the base unit: bytes, bytes/s, FLOP/s
MEMORY_UNITS = {"gib": 2**30, "gb": 1e9}
BANDWIDTH_UNITS = {"gb/s": 1e9, "tb/s": 1e12}
RATE_UNITS = {"tf": 1e12, "tflops": 1e12, "tops": 1e12}
UNIT_TEXT = {"mem": "GiB or GB", "bw": "GB/s or TB/s", "rate": "TF or TFLOPS (TOPS for int8)"}

# Plausible ranges (base units): a value outside is almost always a unit slip, so say so.
RANGES = {
    "mem": (2**29, 4096 * 2**30),  # 0.5 GiB .. 4 TiB
    "bw": (10e9, 100e12),  # 10 GB/s .. 100 TB/s
    "rate": (0.1e12, 100_000e12),  # 0.1 .. 100,000 TFLOPS
}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-z/]*)\s*$")


def is_custom(choice: str) -> bool:
    """True for a `--gpu` value meant as an inline device (`custom` alone is one, missing its figures)."""
    text = choice.strip().lower()
    return text == PREFIX or text.startswith(PREFIX + ":")


def _value(key: str, raw: str, units: dict[str, float], kind: str, given: str) -> float:
    """One figure in base units, from '24GiB'-style text; raises with the field and the units it takes."""
    match = _NUMBER_UNIT.match(raw.lower())
    if not match:
        raise CustomGpuError(
            f"custom GPU: {key}={raw!r} is not a number with a unit ({UNIT_TEXT[kind]}); got {given!r}"
        )
    number, unit = float(match.group(1)), match.group(2)
    if not unit:
        raise CustomGpuError(f"custom GPU: {key}={raw} needs a unit: {UNIT_TEXT[kind]} (e.g. {EXAMPLE}); got {given!r}")
    if unit not in units or (unit == "tops" and key != "int8"):
        raise CustomGpuError(f"custom GPU: {key}={raw} has unit {unit!r}; use {UNIT_TEXT[kind]}; got {given!r}")
    value = number * units[unit]
    low, high = RANGES[kind]
    if not low <= value <= high:
        raise CustomGpuError(
            f"custom GPU: {key}={raw} is outside the plausible range for {key} (check the unit: {UNIT_TEXT[kind]}); "
            f"got {given!r}"
        )
    return value


def _fields(text: str) -> dict[str, str]:
    """key -> raw value from the part after 'custom:'; rejects unknown, repeated and malformed items."""
    body = text.strip()[len(PREFIX) :].removeprefix(":")
    fields: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip().lower()
        if not sep or not raw.strip():
            raise CustomGpuError(f"custom GPU: {item!r} is not key=value (e.g. {EXAMPLE}); got {text!r}")
        if key not in REQUIRED + OPTIONAL:
            known = ", ".join(REQUIRED + OPTIONAL)
            raise CustomGpuError(f"custom GPU: unknown field {key!r} (known: {known}); got {text!r}")
        if key in fields:
            raise CustomGpuError(f"custom GPU: {key}= is given twice; got {text!r}")
        fields[key] = raw.strip()
    missing = [f"{k}=" for k in REQUIRED if k not in fields]
    if missing:
        raise CustomGpuError(
            f"custom GPU needs mem=, bw= and bf16= (missing {', '.join(missing)}); got {text!r}, e.g. {EXAMPLE}"
        )
    return fields


def parse_custom_gpu(text: str) -> GpuSpec:
    """The GpuSpec for `custom:mem=...,bw=...,bf16=...[,fp8=...][,int8=...][,vendor=nvidia|amd]`.

    FP16 is taken at the BF16 rate (true of every tensor-core GPU with BF16). With no compute capability
    known, format floors pass; a format whose rate is not given (fp8=, int8=) is then what rules it out.
    """
    fields = _fields(text)
    mem = _value("mem", fields["mem"], MEMORY_UNITS, "mem", text)
    bw = _value("bw", fields["bw"], BANDWIDTH_UNITS, "bw", text)
    rates = {
        k: _value(k, fields[k], RATE_UNITS, "rate", text) if k in fields else None for k in ("bf16", "fp8", "int8")
    }
    vendor = fields.get("vendor", "nvidia").lower()
    if vendor not in VENDORS:
        raise CustomGpuError(f"custom GPU: vendor={fields['vendor']} is not one of {', '.join(VENDORS)}; got {text!r}")
    name = f"custom GPU ({mem / 2**30:g} GiB, {bw / 1e9:g} GB/s, {rates['bf16'] / 1e12:g} TF BF16)"  # type: ignore[operator]
    return GpuSpec(
        id="custom",
        name=name,
        vendor=vendor,
        memory_bytes=int(mem),
        bandwidth_bytes_s=bw,
        flops={"fp16": rates["bf16"], **rates},
        compute_capability=None,
        interconnect="pcie",  # the conservative link for tensor parallelism: nothing says it has NVLink
        price_per_hour=0.0,
        source=f"given inline: {text.strip()}",
    )


def format_custom_gpu(
    mem_gib: float, bw_gb_s: float, bf16_tflops: float, fp8_tflops: float = 0.0, int8_tops: float = 0.0
) -> str:
    """The `--gpu` text for these figures (the Plan page's custom fields); a zero optional rate is left out."""
    parts = [f"mem={mem_gib:g}GiB", f"bw={bw_gb_s:g}GB/s", f"bf16={bf16_tflops:g}TF"]
    if fp8_tflops:
        parts.append(f"fp8={fp8_tflops:g}TF")
    if int8_tops:
        parts.append(f"int8={int8_tops:g}TOPS")
    return f"{PREFIX}:{','.join(parts)}"
