"""Hand-written CPU kernels (engine/quant/*.cpp), built on this machine on first use and cached.

Why: torch has no kernel for llama.cpp's Q8_0 blocks, and the int4 / int8 output head (a 28 MB
Q8_0 table, ~30% of a decode step) through `torch._int_mm` per block plus float passes reads it
at ~16 GB/s. `q8_0_kernel.cpp` reads it once, at the memory's pace (docs/BENCHMARKS.md).

How: the source is compiled with the C++ compiler that compiled decode already needs (g++, c++ or
clang++) into a shared library beside the weight cache, keyed by the source, the compiler, its
flags and the torch version, under the cache's lock (two processes build once). Loading takes
milliseconds and building about a second. The library runs its threads on torch's own OpenMP
runtime (the process's libgomp), with torch's thread count, so the two never oversubscribe.

Where it cannot work (a CPU without AVX-512 VNNI, no compiler, a failed build, or
PREFLIGHT_NATIVE_KERNELS=0) `q8_0_unavailable_reason()` says why and the module keeps torch's path;
that is a slower kernel, never an error.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

Q8_0_SOURCE = Path(__file__).with_name("q8_0_kernel.cpp")
Q8_0_ABI = 2  # what `preflight_q8_0_abi()` must answer; bump with the source's
NATIVE_ENV = "PREFLIGHT_NATIVE_KERNELS"  # "0" keeps every module on torch's kernels
ISA_FLAGS = ("-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni", "-mfma")
REQUIRED_CPU = ("avx512_f", "avx512_bw", "avx512_dq", "avx512_vl", "avx512_vnni")  # torch.cpu.get_capabilities()
COMPILERS = (("g++", "-fopenmp"), ("c++", "-fopenmp"), ("clang++", "-fopenmp=libgomp"))
BUILD_TIMEOUT_S = 180
NON_FINITE = 3  # the kernel's answer when the activations hold an inf or NaN


@dataclass(frozen=True, slots=True)
class NativeLibrary:
    """A loaded kernel library and where it came from."""

    path: Path
    handle: ctypes.CDLL
    built: bool  # compiled in this process rather than found in the cache


def _compiler() -> tuple[str, str] | None:
    for name, openmp in COMPILERS:
        path = shutil.which(name)
        if path:
            return path, openmp
    return None


def _build_command(compiler: str, openmp: str, source: Path, out: Path) -> list[str]:
    torch_lib = str(Path(torch.__file__).parent / "lib")
    return [
        compiler,
        "-O3",
        "-std=c++17",
        "-shared",
        "-fPIC",
        *ISA_FLAGS,
        openmp,
        str(source),
        "-o",
        str(out),
        f"-L{torch_lib}",
        f"-Wl,-rpath,{torch_lib}",
    ]


def _library_key(compiler: str, openmp: str) -> str:
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    parts = [Q8_0_SOURCE.read_text(), compiler, version.splitlines()[0] if version else "", openmp, *ISA_FLAGS]
    parts.append(torch.__version__)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def q8_0_unavailable_reason() -> str | None:
    """Why the native Q8_0 kernel cannot run here, or None when `q8_0_library()` gives one."""
    return _q8_0()[1]


def q8_0_library() -> NativeLibrary | None:
    """The native Q8_0 kernel library, built once per machine (None when it cannot be: see the reason)."""
    return _q8_0()[0]


@functools.cache
def _q8_0() -> tuple[NativeLibrary | None, str | None]:
    if os.environ.get(NATIVE_ENV, "1") == "0":
        return None, f"native kernels turned off ({NATIVE_ENV}=0)"
    capabilities = torch.cpu.get_capabilities()
    missing = [flag for flag in REQUIRED_CPU if not capabilities.get(flag, False)]
    if missing:
        return None, f"the native Q8_0 kernel needs AVX-512 VNNI; this CPU lacks {', '.join(missing)}"
    found = _compiler()
    if found is None:
        return None, "the native Q8_0 kernel needs a C++ compiler (g++ or clang++) on PATH"
    try:
        library = _load_or_build(*found)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"the native Q8_0 kernel could not be built or loaded ({first[:300]})"
    return library, None


def _load_or_build(compiler: str, openmp: str) -> NativeLibrary:
    """Load the cached library, building it first under the cache entry's lock when it is missing or unusable."""
    from engine.model.weight_cache import CacheEntry, cache_dir, locked

    directory = cache_dir() / "native"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"q8_0-{_library_key(compiler, openmp)}.so"
    with locked(CacheEntry.for_key(path.stem, directory), exclusive=True):
        if path.exists():
            try:
                return NativeLibrary(path, _open(path), built=False)
            except RuntimeError:
                path.unlink()  # truncated or foreign: build it again, once
        _build(compiler, openmp, path)
        return NativeLibrary(path, _open(path), built=True)


def _build(compiler: str, openmp: str, path: Path) -> None:
    """Compile into a temp file beside `path`, then rename: no process ever loads half a library."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.so")
    try:
        done = subprocess.run(
            _build_command(compiler, openmp, Q8_0_SOURCE, tmp), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
        )
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines()
            raise RuntimeError(f"{Path(compiler).name} exited with {done.returncode}: {' '.join(errors[:1])}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _open(path: Path) -> ctypes.CDLL:
    try:
        handle = ctypes.CDLL(str(path))
        abi = handle.preflight_q8_0_abi()
    except (OSError, AttributeError) as exc:
        raise RuntimeError(f"{path.name} cannot be loaded: {exc}") from exc
    if abi != Q8_0_ABI:
        raise RuntimeError(f"{path.name} has ABI {abi}, expected {Q8_0_ABI}")
    c_ptr, c_i64 = ctypes.c_void_p, ctypes.c_int64
    handle.preflight_q8_0_matmul.argtypes = [c_ptr, c_ptr, c_ptr, c_ptr, c_i64, c_i64, c_i64, ctypes.c_int]
    handle.preflight_q8_0_matmul.restype = ctypes.c_int
    return handle


def q8_0_matmul(
    library: NativeLibrary, weight: torch.Tensor, scale: torch.Tensor, x: torch.Tensor
) -> torch.Tensor | None:
    """x @ W.T for Q8_0 blocks kept output-major: (M, N) float32, or None when x holds an inf or NaN.

    weight int8 (N, G, 32) and scale float32 (N, G) (Q80Linear's layout when this kernel runs), x float32
    (M, G * 32), all on the CPU. None hands non-finite activations back to torch's kernel, which carries
    them into the output as float arithmetic does (the native kernel quantizes x and cannot).
    """
    n, groups, block = weight.shape
    if (
        weight.dtype != torch.int8
        or scale.dtype != torch.float32
        or x.dtype != torch.float32
        or block != 32
        or scale.shape != (n, groups)
        or x.ndim != 2
        or x.shape[1] != groups * block
        or x.device.type != "cpu"
    ):
        raise ValueError("q8_0_matmul: buffers do not have the Q8_0 shapes and dtypes")
    weight, scale, x = weight.contiguous(), scale.contiguous(), x.contiguous()
    out = torch.empty(x.shape[0], n, dtype=torch.float32)
    code = library.handle.preflight_q8_0_matmul(
        weight.data_ptr(),
        scale.data_ptr(),
        x.data_ptr(),
        out.data_ptr(),
        x.shape[0],
        n,
        groups,
        torch.get_num_threads(),
    )
    if code == NON_FINITE:
        return None
    if code:
        raise ValueError(f"q8_0_matmul: the kernel refused its inputs (code {code})")
    return out
