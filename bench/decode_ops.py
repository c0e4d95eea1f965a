"""ATen ops in one eager decode step of the bundled model, per weight format, on this machine's device.

    .venv/bin/python bench/decode_ops.py [--device cpu|cuda] [--formats fp32,bf16,int8,int4,fp8] [--top 8]
        [--json OUT]

The planner prices a bundled-engine pass as its ops times a per-op cost (`dispatch_ops_per_layer`
and `gpu_graph_op_us` in planner/data/engines.json). That count was taken once, over an int4 step on
CPU, and serves every format and device; on CUDA the int8 and fp8 layers take other branches
(engine/quant/linear.py: int8 widens its weight on every call, fp8 quantizes activations per token
before `torch._scaled_mm`, the Q8_0 head runs as float32 row blocks), which is where the planner's
H200 figures for those formats are furthest off (docs/BENCHMARKS.md). A decode step replayed from a
CUDA graph launches the kernels of the eager ops it captured, so this eager count, taken on the
device, is the figure to price each format with.

Counted with `TorchDispatchMode` (every op that reaches the dispatcher, views included) over the
second token of a short prompt, with the format's real weights from the GGUF; the table gives the
step's ops, ops per layer and the most frequent ops. It needs no timing, so it can run beside other work.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import conditions, format_table  # noqa: E402

PROMPT_IDS = list(range(1, 17))  # token ids only: the count does not depend on which


def count_step(fmt: str, device: str) -> dict[str, Any]:
    """The ops of one decode step of `fmt` on `device`, by name, after a prefill of PROMPT_IDS."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from engine.model.loader import load_model
    from engine.run.kv_cache import KVCache

    ops: Counter[str] = Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            ops[str(func.overloadpacket.__name__)] += 1
            return func(*args, **(kwargs or {}))

    loaded = load_model(None, fmt, device, True)
    model = loaded.model
    cache = KVCache(model.config, 1, len(PROMPT_IDS) + 4, model.act_dtype, device)
    with torch.inference_mode():
        model(torch.tensor([PROMPT_IDS], device=device), 0, cache)
        cache.advance(len(PROMPT_IDS))
        with Count():
            model(torch.tensor([[PROMPT_IDS[-1]]], device=device), cache.length, cache)
    total = sum(ops.values())
    return {
        "format": fmt,
        "device": str(loaded.device),
        "ops": total,
        "layers": model.config.n_layers,
        "ops_per_layer": total / model.config.n_layers,
        "by_op": dict(ops.most_common()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--formats", default="fp32,bf16,int8,int4,fp8")
    parser.add_argument("--top", type=int, default=8, help="most frequent ops shown per format")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    try:
        results = [count_step(fmt, args.device) for fmt in args.formats.split(",")]
    except ValueError as exc:  # an unknown format, or a device this machine does not have
        parser.error(str(exc))
    print(f"revision: {conditions()['revision']}")
    rows = [
        [
            r["format"],
            r["device"],
            f"{r['ops']:,}",
            f"{r['ops_per_layer']:.1f}",
            ", ".join(f"{name} {n}" for name, n in list(r["by_op"].items())[: args.top]),
        ]
        for r in results
    ]
    print(format_table(["format", "device", "ops a step", "per layer", "most frequent"], rows))
    if args.json:
        args.json.write_text(json.dumps({"conditions": conditions(), "steps": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
