"""llama.cpp's peers run in the weight layout that works on the machine: a crash is detected, never assumed.

Its repacked (AVX-512 / AMX) layout crashed in the first prefill on a Xeon with AMX. No CPU here
has AMX, so a stand-in `llama-bench` (a small script with llama-bench's flags and JSON) plays a
peer whose default layout dies on a signal while `--repack 0` works, and one whose
default works: bench/_llama_bench.py must time each layout that runs and name the one that crashed.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from bench._llama_bench import measure_layouts, no_repack_args

STAND_IN = """#!{python}
import json, os, resource, signal, sys
args = sys.argv[1:]
if "--help" in args:
    print("usage: llama-bench [options]\\n  -r, --repetitions <n>\\n  {repack_help}")
    sys.exit(0)
repack_off = "--repack" in args and args[args.index("--repack") + 1] == "0"
if {crash_by_default} and not repack_off:
    print("load_tensors: repacking for AMX", file=sys.stderr, flush=True)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # die as the real one does, without leaving a core file
    os.kill(os.getpid(), signal.SIGSEGV)
reps = int(args[args.index("-r") + 1])
p, n = int(args[args.index("-p") + 1]), int(args[args.index("-n") + 1])
speed = 100.0 if repack_off else 150.0
tests = [
    {{"n_prompt": p, "n_gen": 0, "avg_ts": 3 * speed, "samples_ts": [3 * speed + i for i in range(reps)]}},
    {{"n_prompt": 0, "n_gen": n, "avg_ts": speed, "samples_ts": [speed + i for i in range(reps)]}},
]
print(json.dumps(tests))
"""


def _stand_in(tmp_path: Path, *, crash_by_default: bool, repack_switch: bool = True) -> Path:
    path = tmp_path / "llama-bench"
    help_line = "--repack <0|1>  repack weights (default: 1)" if repack_switch else ""
    path.write_text(STAND_IN.format(python=sys.executable, repack_help=help_line, crash_by_default=crash_by_default))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_a_default_layout_that_crashes_is_named_and_repacking_off_is_timed(tmp_path: Path) -> None:
    binary = _stand_in(tmp_path, crash_by_default=True)
    default, off = measure_layouts(binary, tmp_path / "model.gguf", threads=2, tokens=8, prefill_tokens=16, repeats=3)
    assert default.layout == "default (repacking on)"
    assert default.crash is not None and "signal" in default.crash and "repacking for AMX" in default.crash
    assert default.decode is None and default.prefill is None
    assert off.layout == "repacking off" and off.crash is None
    assert off.args[-2:] == ["--repack", "0"]
    assert (off.decode, off.prefill) == (101.0, 301.0)  # the median of the three samples


def test_both_layouts_are_timed_when_both_work(tmp_path: Path) -> None:
    binary = _stand_in(tmp_path, crash_by_default=False)
    default, off = measure_layouts(binary, tmp_path / "model.gguf", threads=2, tokens=8, prefill_tokens=16, repeats=1)
    assert (default.crash, off.crash) == (None, None)
    assert (default.decode, off.decode) == (150.0, 100.0)


def test_a_build_without_the_switch_runs_its_default_only(tmp_path: Path) -> None:
    binary = _stand_in(tmp_path, crash_by_default=False, repack_switch=False)
    assert no_repack_args(binary) is None
    runs = measure_layouts(binary, tmp_path / "model.gguf", threads=1, tokens=4, prefill_tokens=8, repeats=1)
    assert [r.layout for r in runs] == ["default (repacking on)"]
    assert os.access(binary, os.X_OK)
