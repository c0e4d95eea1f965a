"""Hand-written CPU kernels (engine/quant/*.cpp), built on this machine on first use and cached.

Why: at one activation row torch's kernels are far from the memory's pace on the two matmuls that
make a decode step. The Q8_0 head (a 28 MB table, ~30% of a step) through `torch._int_mm` per
block read at ~16 GB/s; `q8_0_kernel.cpp` reads it at ~60. The int4 layers' packed kernel widens
every code to float (25 GB/s); `int4_kernel.cpp` keeps the codes bytes and uses VNNI. Figures:
docs/BENCHMARKS.md.

Two kinds of library, one way to build them:
- `q8_0`: a plain C function called through ctypes (the head runs outside compiled packages).
- `int4`: a torch operator, `torch.ops.preflight.int4_mm`, taking exactly the arguments of
  `aten._weight_int4pack_mm_for_cpu`, so that the compiled decode packages (AOTInductor) call it
  like an aten op. After loading it is held against torch's kernel on random weights; a packed
  layout other than the one it reads (another torch build) is a reason, never wrong numbers.

Each source is compiled with the C++ compiler compiled decode already needs (g++, c++ or clang++)
into a shared library beside the weight cache, keyed by the source, the compiler, its flags and
the torch version, under the cache's lock (two processes build once). Building takes about a
second (q8_0) or five (int4, torch's operator headers), once per machine; loading, milliseconds. The
kernels run their threads on torch's own OpenMP runtime (the process's libgomp) with torch's
thread count, so the two never oversubscribe.

Where a kernel cannot work (a CPU without the AVX-512 features it needs, no compiler, a failed
build, or PREFLIGHT_NATIVE_KERNELS=0) its `*_unavailable_reason()` says why and the module keeps
torch's kernel: slower, never an error.
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
from typing import Any

import torch

from engine.cache_files import cache_dir, file_lock
from engine.errors import first_line

NATIVE_ENV = "PREFLIGHT_NATIVE_KERNELS"  # "0" keeps every module on torch's kernels
COMPILERS = (("g++", "-fopenmp"), ("c++", "-fopenmp"), ("clang++", "-fopenmp=libgomp"))
BUILD_TIMEOUT_S = 300
NON_FINITE = 3  # the Q8_0 kernel's answer when the activations hold an inf or NaN
INT4_CHECK_TOLERANCE = 0.02  # largest difference from torch's int4 kernel, relative to the largest output


@dataclass(frozen=True, slots=True)
class KernelSource:
    """One kernel library: its source, the CPU features its instructions need, and how it links."""

    name: str
    source: Path
    abi_symbol: str
    abi: int  # what `abi_symbol()` must answer; bump with the source's
    isa_flags: tuple[str, ...]
    required_cpu: tuple[str, ...]  # keys of torch.cpu.get_capabilities()
    torch_op: bool  # includes torch's headers and registers operators (links libtorch)


Q8_0 = KernelSource(
    name="q8_0",
    source=Path(__file__).with_name("q8_0_kernel.cpp"),
    abi_symbol="preflight_q8_0_abi",
    abi=2,
    isa_flags=("-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni", "-mfma"),
    required_cpu=("avx512_f", "avx512_bw", "avx512_dq", "avx512_vl", "avx512_vnni"),
    torch_op=False,
)
INT4 = KernelSource(
    name="int4",
    source=Path(__file__).with_name("int4_kernel.cpp"),
    abi_symbol="preflight_int4_abi",
    abi=1,
    isa_flags=("-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni", "-mavx512vbmi", "-mfma"),
    required_cpu=("avx512_f", "avx512_bw", "avx512_dq", "avx512_vl", "avx512_vnni", "avx512_vbmi"),
    torch_op=True,
)


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


def _torch_lib() -> str:
    return str(Path(torch.__file__).parent / "lib")


def _build_command(kernel: KernelSource, compiler: str, openmp: str, out: Path) -> list[str]:
    command = [compiler, "-O3", "-std=c++17", "-shared", "-fPIC", *kernel.isa_flags, openmp]
    if kernel.torch_op:
        from torch.utils.cpp_extension import include_paths

        abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
        command += ["-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *(f"-I{path}" for path in include_paths())]
    command += [str(kernel.source), "-o", str(out), f"-L{_torch_lib()}", f"-Wl,-rpath,{_torch_lib()}"]
    if kernel.torch_op:
        command += ["-ltorch_cpu", "-ltorch", "-lc10"]
    return command


def _library_key(kernel: KernelSource, compiler: str, openmp: str) -> str:
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    parts = [kernel.source.read_text(), compiler, version.splitlines()[0] if version else "", openmp]
    parts += [*kernel.isa_flags, str(kernel.torch_op), torch.__version__]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def q8_0_unavailable_reason() -> str | None:
    """Why the native Q8_0 kernel cannot run here, or None when `q8_0_library()` gives one."""
    return _q8_0()[1]


def q8_0_library() -> NativeLibrary | None:
    """The native Q8_0 kernel library, built once per machine (None when it cannot be: see the reason)."""
    return _q8_0()[0]


def int4_unavailable_reason() -> str | None:
    """Why `torch.ops.preflight.int4_mm` cannot run here, or None when `int4_op()` gives it."""
    return _int4()[1]


def int4_op() -> Any | None:
    """`torch.ops.preflight.int4_mm` (registered once per process), or None: see the reason."""
    return _int4()[0]


@functools.cache
def _q8_0() -> tuple[NativeLibrary | None, str | None]:
    library, reason = _library(Q8_0)
    if library is not None:
        c_ptr, c_i64 = ctypes.c_void_p, ctypes.c_int64
        matmul = library.handle.preflight_q8_0_matmul
        matmul.argtypes = [c_ptr, c_ptr, c_ptr, c_ptr, c_i64, c_i64, c_i64, ctypes.c_int]
        matmul.restype = ctypes.c_int
    return library, reason


@functools.cache
def _int4() -> tuple[Any | None, str | None]:
    op = _registered_int4() if _turned_off() is None else None
    if op is None:  # not loaded in this process yet (a second library registering `preflight` would abort it)
        library, reason = _library(INT4)
        if library is None:
            return None, reason
        op = torch.ops.preflight.int4_mm
    disagreement = _int4_disagreement(op)
    if disagreement is not None:
        return None, f"the native int4 kernel disagrees with torch's on this build ({disagreement}); torch's runs"
    return op, None


def _turned_off() -> str | None:
    return f"native kernels turned off ({NATIVE_ENV}=0)" if os.environ.get(NATIVE_ENV, "1") == "0" else None


def _registered_int4() -> Any | None:
    """`torch.ops.preflight.int4_mm` when a library of ours registered it in this process already, else None."""
    try:
        return torch.ops.preflight.int4_mm
    except (AttributeError, RuntimeError):
        return None


def _library(kernel: KernelSource) -> tuple[NativeLibrary | None, str | None]:
    off = _turned_off()
    if off is not None:
        return None, off
    capabilities = torch.cpu.get_capabilities()
    missing = [flag for flag in kernel.required_cpu if not capabilities.get(flag, False)]
    if missing:
        return None, f"the native {kernel.name} kernel needs AVX-512 VNNI; this CPU lacks {', '.join(missing)}"
    found = _compiler()
    if found is None:
        return None, f"the native {kernel.name} kernel needs a C++ compiler (g++ or clang++) on PATH"
    try:
        return _load_or_build(kernel, *found), None
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        return None, f"the native {kernel.name} kernel could not be built or loaded ({first_line(exc)})"


def _load_or_build(kernel: KernelSource, compiler: str, openmp: str) -> NativeLibrary:
    """Load the cached library, building it first under the cache entry's lock when it is missing or unusable."""
    directory = cache_dir() / "native"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kernel.name}-{_library_key(kernel, compiler, openmp)}.so"
    with file_lock(path.with_suffix(".lock"), exclusive=True):
        if path.exists():
            try:
                return NativeLibrary(path, _open(kernel, path), built=False)
            except RuntimeError:
                path.unlink()  # truncated or foreign: build it again, once
        _build(kernel, compiler, openmp, path)
        return NativeLibrary(path, _open(kernel, path), built=True)


def _build(kernel: KernelSource, compiler: str, openmp: str, path: Path) -> None:
    """Compile into a temp file beside `path`, then rename: no process ever loads half a library."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.so")
    try:
        done = subprocess.run(
            _build_command(kernel, compiler, openmp, tmp), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
        )
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines()
            raise RuntimeError(f"{Path(compiler).name} exited with {done.returncode}: {' '.join(errors[:1])}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _open(kernel: KernelSource, path: Path) -> ctypes.CDLL:
    """dlopen the library (which also registers a torch op library's operators) and check its ABI."""
    try:
        handle = ctypes.CDLL(str(path))
        abi = getattr(handle, kernel.abi_symbol)()
    except (OSError, AttributeError) as exc:
        raise RuntimeError(f"{path.name} cannot be loaded: {exc}") from exc
    if abi != kernel.abi:
        raise RuntimeError(f"{path.name} has ABI {abi}, expected {kernel.abi}")
    return handle


def _int4_disagreement(op: Any) -> str | None:
    """None when the op gives torch's int4 result on random packed weights at 1, 2, 3 and 16 rows (one row, one
    pair, a pair and a single, eight pairs), else how far off.

    This is the check that the packed layout the kernel reads is the one this torch build writes.
    """
    generator = torch.Generator().manual_seed(0)
    n, k, group = 128, 256, 32
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=generator)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    pairs = (torch.rand(k // group, n, 2, generator=generator) * 0.1).to(torch.bfloat16)
    x = torch.randn(16, k, generator=generator).to(torch.bfloat16)
    for rows in (x[:1], x[:2], x[:3], x):
        want = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, packed, group, pairs).float()
        try:
            got = op(rows, packed, group, pairs).float()
        except RuntimeError as exc:
            return str(exc).splitlines()[0][:200]
        worst = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
        scale = float(want.abs().max()) or 1.0
        if not worst <= INT4_CHECK_TOLERANCE * scale:
            return f"off by {worst:.3g} against outputs up to {scale:.3g} at {rows.shape[0]} row(s)"
    return None


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
