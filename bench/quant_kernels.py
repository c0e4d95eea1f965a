"""The engine's weight kernels on this CPU: each format's Linear module at SmolLM2-135M's shapes.

    .venv/bin/python bench/quant_kernels.py [--threads 2] [--repeats 30] [--formats fp32,bf16,int8,int4,fp8]

Times the modules the engine really builds (`engine.quant.linear.make_linear`, post_load done),
so the table says what a decode step (M = 1 row) and a 256-token prefill (M = 256) pay per
projection in each format, and each figure's ratio to fp32 dense at the same shape: the
yardstick the kernel choices in `engine/quant/functions.py` were made against. The raw
kernel variants that were compared by hand when those choices were made are recorded in
docs/BENCHMARKS.md ("Quantized matmul kernels on CPU").

Each figure is the minimum over `--repeats` timed calls after two warm-up calls, in ms;
weights are random (kernel time does not depend on the values), activations are float32 as
the engine's CPU residual stream is (`engine.quant.functions.compute_dtype`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench._common import conditions, format_table  # noqa: E402
from engine.formats import WEIGHT_FORMATS  # noqa: E402
from engine.quant.linear import make_linear  # noqa: E402

# (N, K) of SmolLM2-135M's projections: q/o, k/v, gate/up, down, and the tied output head.
SHAPES = ((576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576))
ROWS = (1, 256)


def time_ms(fn: object, repeats: int) -> float:
    """Minimum wall time of `fn()` over `repeats` calls, after two warm-up calls."""
    for _ in range(2):
        fn()  # type: ignore[operator]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best * 1000


def measure(formats: list[str], repeats: int) -> dict[tuple[str, int], list[float]]:
    """(format, M) -> ms per shape, in SHAPES order."""
    out: dict[tuple[str, int], list[float]] = {}
    torch.manual_seed(0)
    for n, k in SHAPES:
        weight = torch.randn(n, k) * 0.02
        for fmt in formats:
            module = make_linear(weight, fmt, device="cpu")
            for m in ROWS:
                x = torch.randn(m, k)
                with torch.inference_mode():
                    out.setdefault((fmt, m), []).append(time_ms(lambda module=module, x=x: module(x), repeats))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--formats", default=",".join(WEIGHT_FORMATS))
    args = parser.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    unknown = [f for f in formats if f not in WEIGHT_FORMATS]
    if unknown or "fp32" not in formats:
        parser.error(f"--formats must be some of {', '.join(WEIGHT_FORMATS)} and include fp32 (the yardstick)")
    torch.set_num_threads(args.threads)
    for key, value in conditions().items():
        print(f"{key:<22}{value}")
    print(f"{'threads':<22}{args.threads}\nrepeats               {args.repeats} (minimum reported, ms)\n")
    times = measure(formats, args.repeats)
    header = ["M", "format", *(f"{n}x{k}" for n, k in SHAPES), "sum", "x fp32"]
    rows = []
    for m in ROWS:
        base = sum(times[("fp32", m)])
        for fmt in formats:
            ms = times[(fmt, m)]
            rows.append([str(m), fmt, *(f"{t:.3f}" for t in ms), f"{sum(ms):.2f}", f"{sum(ms) / base:.2f}"])
    print(format_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
