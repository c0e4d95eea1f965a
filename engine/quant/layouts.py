"""A linear layer's storage as a small JSON-friendly dict, and back to an empty module of that storage.

A weights directory (engine/model/weights_dir.py) holds layers that differ from the model's format:
GPTQ int4 at group 128 while the format's own int4 default is group 32, or a projection factored
into two low-rank factors. Its manifest therefore records each layer's layout, read off the module
that was saved (`layout_of`), and the loader rebuilds an empty module from it (`empty_from_layout`)
before adopting the tensors. Forms:

- {"storage": "int4", "group_size": G}
- {"storage": "lowrank", "rank": R, "dtype": "fp32" | "bf16"}
- {"storage": FORMAT} for every other storage (fp32, bf16, int8, fp8, fp8-e5m2, q8_0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.formats import WEIGHT_FORMATS
from engine.quant.linear import DenseLinear, Int4Linear, Q80Linear, QuantLinear, empty_linear
from engine.quant.lowrank_linear import FACTOR_DTYPES, LowRankLinear

Layout = dict[str, Any]


def layout_of(module: QuantLinear) -> Layout:
    """The layout that rebuilds `module`'s storage."""
    if isinstance(module, Int4Linear):
        return {"storage": "int4", "group_size": module.group_size}
    if isinstance(module, LowRankLinear):
        return {"storage": "lowrank", "rank": module.rank, "dtype": module.dtype_name}
    if isinstance(module, DenseLinear | Q80Linear) or module.fmt in WEIGHT_FORMATS:
        return {"storage": module.fmt}
    raise ValueError(f"no layout for a {type(module).__name__} layer")


def empty_from_layout(layout: Mapping[str, Any], in_features: int, out_features: int) -> QuantLinear:
    """An unloaded module (on `meta`) of the layout's storage; ValueError for a malformed layout."""
    storage = layout.get("storage")
    options = {k: v for k, v in layout.items() if k != "storage"}
    if storage == "int4":
        _expect(layout, {"group_size"})
        return empty_linear("int4", in_features, out_features, group_size=int(options["group_size"]))
    if storage == LowRankLinear.fmt:
        _expect(layout, {"rank", "dtype"})
        rank, dtype = options["rank"], options["dtype"]
        if not isinstance(rank, int) or not 1 <= rank <= min(in_features, out_features) or dtype not in FACTOR_DTYPES:
            raise ValueError(f"malformed low-rank layout {dict(layout)} for a {out_features}x{in_features} layer")
        return LowRankLinear.empty(in_features, out_features, rank=rank, dtype=dtype)
    if storage in (*WEIGHT_FORMATS, Q80Linear.fmt):
        _expect(layout, set())
        return empty_linear(str(storage), in_features, out_features)
    raise ValueError(f"unknown layer storage {storage!r} in layout {dict(layout)}")


def _expect(layout: Mapping[str, Any], keys: set[str]) -> None:
    if set(layout) != {"storage", *keys}:
        raise ValueError(f"layout {dict(layout)} should have exactly the keys {', '.join(sorted({'storage', *keys}))}")
