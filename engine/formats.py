"""The weight formats the bundled engine runs: one Literal, and every list of them derived from it.

The CLI's `--quant` choices, `ServerOptions.quant`, the studies, the loader, a benchmark's
`bundled:QUANT` target and the dashboard's selectors all read `WEIGHT_FORMATS`, so a format is
added or renamed here once. The order is the one users see: full precision first, then
narrower. No torch here on purpose: checks and the widgets import this without loading the engine.
"""

from typing import Literal, get_args

WeightFormat = Literal["fp32", "bf16", "int8", "int4", "fp8", "fp8-e5m2"]
WEIGHT_FORMATS: tuple[WeightFormat, ...] = get_args(WeightFormat)
