"""llama.cpp's HTTP server (`llama-server`) and its `llama-bench` as peers for the benchmarks.

    .venv/bin/python bench/_llama_server.py                  # find or build both; print the server's path, version
    .venv/bin/python bench/_llama_server.py --build 0.3.36   # build both from that llama-cpp-python sdist

Not a benchmark itself (`make bench` runs only bench/[!_]*.py). `find_or_build_llama_server()`
and `find_or_build_llama_bench()` return the binaries, both built at once from the llama.cpp
sources vendored in the llama-cpp-python sdist of the installed version, so the server, the
bench tool and the in-process peer (llama-cpp-python) run the same llama.cpp.
`LlamaServerProcess` runs the server on loopback for one benchmark and stops it afterwards.

The build uses GGML_NATIVE=ON: the binary is tuned for the CPU it was built on, so a copied
.venv needs `rm -r .venv/llama-server` on a different machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO_ROOT  # noqa: E402
from checks.load.targets import TargetError, free_port, wait_healthy  # noqa: E402

ENV_VAR = "PREFLIGHT_LLAMA_SERVER"
DIST_NAME = "llama-cpp-python"
TARGET = "llama-server"
BENCH_TARGET = "llama-bench"  # built beside the server; $PREFLIGHT_LLAMA_SERVER's folder is searched for it too
TARGETS = (TARGET, BENCH_TARGET)
CACHE_ROOT = REPO_ROOT / ".venv" / "llama-server"

# Wanted cache entries, in order. Any the vendored CMake files do not declare is dropped
# (LLAMA_CURL, for one, is gone from recent llama.cpp). The UI ones keep the build offline:
# by default it fetches a prebuilt web UI, and benchmarks run with --no-webui anyway.
WANTED_CMAKE_OPTIONS: tuple[tuple[str, str], ...] = (
    ("LLAMA_BUILD_SERVER", "ON"),
    ("LLAMA_CURL", "OFF"),
    ("GGML_NATIVE", "ON"),
    ("BUILD_SHARED_LIBS", "OFF"),
    ("CMAKE_BUILD_TYPE", "Release"),
    ("LLAMA_BUILD_TESTS", "OFF"),
    ("LLAMA_BUILD_EXAMPLES", "OFF"),
    ("LLAMA_BUILD_UI", "OFF"),
    ("LLAMA_USE_PREBUILT_UI", "OFF"),
    ("LLAMA_OPENSSL", "OFF"),
)

DOWNLOAD_TIMEOUT_S = 900.0
CONFIGURE_TIMEOUT_S = 600.0
BUILD_TIMEOUT_S = 3600.0
PROBE_TIMEOUT_S = 30.0
PROGRESS_EVERY_S = 30.0
TAIL_LINES = 20


class LlamaServerError(RuntimeError):
    """Finding, building, starting or stopping llama-server failed; the message names the step."""


def _say(message: str) -> None:
    print(f"[llama-server] {message}", file=sys.stderr, flush=True)


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _file_tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        with path.open(errors="replace") as fh:
            return "\n".join(line.rstrip("\n") for line in deque(fh, maxlen=lines))
    except OSError as exc:
        return f"(could not read {path}: {exc})"


def _run_step(step: str, cmd: list[str], log_path: Path, timeout_s: float, cwd: Path | None = None) -> None:
    """Run one build step with its output in `log_path`; report progress; raise with the log's tail on failure."""
    _say(f"{step}: {' '.join(cmd)}")
    t0 = time.perf_counter()
    deadline = t0 + timeout_s
    next_report = t0 + PROGRESS_EVERY_S
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while True:
            try:
                rc = proc.wait(timeout=min(5.0, max(0.1, deadline - time.perf_counter())))
                break
            except subprocess.TimeoutExpired:
                now = time.perf_counter()
                if now >= deadline:
                    proc.kill()
                    proc.wait()
                    raise LlamaServerError(
                        f"{step} timed out after {timeout_s:.0f} s; last output:\n{_file_tail(log_path)}"
                    ) from None
                if now >= next_report:
                    _say(f"{step}: {now - t0:.0f} s, {_file_tail(log_path, 1)}")
                    next_report = now + PROGRESS_EVERY_S
    if rc != 0:
        raise LlamaServerError(f"{step} failed (exit {rc}); last output:\n{_file_tail(log_path)}")
    _say(f"{step}: done in {time.perf_counter() - t0:.0f} s")


def installed_version() -> str:
    """The installed llama-cpp-python version: the sources the server is built from."""
    try:
        return metadata.version(DIST_NAME)
    except metadata.PackageNotFoundError:
        raise LlamaServerError(
            f"{DIST_NAME} is not installed; run `make bench` (it installs requirements-bench.txt)"
        ) from None


def cached_binary(version: str, tool: str = TARGET) -> Path:
    return CACHE_ROOT / version / "bin" / tool


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_or_build_llama_server() -> Path:
    """A llama-server executable: $PREFLIGHT_LLAMA_SERVER, the cached build, one on PATH, else a fresh build."""
    return _find_or_build(TARGET)


def find_or_build_llama_bench() -> Path:
    """A llama-bench executable: beside $PREFLIGHT_LLAMA_SERVER, the cached build, one on PATH, else a fresh build."""
    return _find_or_build(BENCH_TARGET)


def _find_or_build(tool: str) -> Path:
    override = os.environ.get(ENV_VAR)
    if override:
        path = Path(override).expanduser()
        if not _is_executable(path):
            raise LlamaServerError(f"{ENV_VAR}={override} is not an executable file; fix it or unset it")
        beside = path.with_name(tool)
        if _is_executable(beside):
            return beside
        raise LlamaServerError(
            f"no {tool} beside {ENV_VAR}={override}; build both with `bench/_llama_server.py --build VERSION`"
        )
    version = installed_version()
    cached = cached_binary(version, tool)
    if _is_executable(cached):
        return cached
    on_path = shutil.which(tool)
    if on_path:
        return Path(on_path)
    return build_llama_tools(version, cached.parent)[tool]


def _declared_cmake_options(source_dir: Path) -> set[str]:
    """Every `option(NAME ...)` the vendored CMake files declare."""
    pattern = re.compile(r"\b(?:cmake_dependent_)?option\s*\(\s*([A-Za-z0-9_]+)", re.IGNORECASE)
    names: set[str] = set()
    for path in [*source_dir.rglob("CMakeLists.txt"), *source_dir.rglob("*.cmake")]:
        names.update(pattern.findall(path.read_text(errors="replace")))
    return names


def cmake_options(source_dir: Path) -> list[str]:
    """The -D flags of WANTED_CMAKE_OPTIONS that this llama.cpp knows (CMAKE_* are always known)."""
    declared = _declared_cmake_options(source_dir)
    kept, dropped = [], []
    for name, value in WANTED_CMAKE_OPTIONS:
        (kept if name.startswith("CMAKE_") or name in declared else dropped).append(f"-D{name}={value}")
    if dropped:
        _say(f"this llama.cpp does not declare {', '.join(dropped)}; left out")
    return kept


def _download_sdist(version: str, work: Path) -> Path:
    spec = f"{DIST_NAME}=={version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", spec, "-d", str(work)]
    _run_step(f"download the {spec} sdist", cmd, work / "download.log", DOWNLOAD_TIMEOUT_S)
    sdists = sorted(work.glob("*.tar.gz"))
    if len(sdists) != 1:
        raise LlamaServerError(f"download of {spec} gave {len(sdists)} sdists in {work}, expected 1")
    return sdists[0]


def _extract_vendored_llama_cpp(sdist: Path, work: Path) -> Path:
    _say(f"extract {sdist.name}")
    try:
        with tarfile.open(sdist) as tar:
            tar.extractall(work / "src", filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise LlamaServerError(f"extract {sdist}: {exc}") from exc
    found = sorted((work / "src").glob("*/vendor/llama.cpp/CMakeLists.txt"))
    if not found:
        raise LlamaServerError(f"{sdist.name} has no vendor/llama.cpp/CMakeLists.txt")
    return found[0].parent


def build_llama_tools(version: str, bin_dir: Path) -> dict[str, Path]:
    """Build llama-server and llama-bench from the vendored llama.cpp of llama-cpp-python `version` into `bin_dir`."""
    for tool in ("cmake", "c++"):
        if not shutil.which(tool):
            raise LlamaServerError(f"building {TARGET} needs `{tool}` on PATH (Debian: apt-get install cmake g++)")
    names = " and ".join(TARGETS)
    _say(f"building {names} from llama-cpp-python {version}; this takes several minutes")
    t0 = time.perf_counter()
    installed: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="preflight-llama-server-") as tmp:
        work = Path(tmp)
        source = _extract_vendored_llama_cpp(_download_sdist(version, work), work)
        build = work / "build"
        options = cmake_options(source)
        _say(f"cmake options: {' '.join(options)}")
        configure = ["cmake", "-S", str(source), "-B", str(build), *options]
        _run_step("cmake configure", configure, work / "configure.log", CONFIGURE_TIMEOUT_S)
        jobs = str(os.cpu_count() or 1)
        compile_cmd = ["cmake", "--build", str(build), "--target", *TARGETS, "--config", "Release", "--parallel", jobs]
        _run_step(f"build {names}", compile_cmd, work / "build.log", BUILD_TIMEOUT_S)
        bin_dir.mkdir(parents=True, exist_ok=True)
        for tool in TARGETS:
            built = next((p for p in build.rglob(tool) if _is_executable(p)), None)
            if built is None:
                raise LlamaServerError(f"build {tool}: no {tool} executable under {build}")
            dest = bin_dir / tool
            staging = dest.with_name(dest.name + ".partial")
            shutil.copy2(built, staging)
            os.replace(staging, dest)
            installed[tool] = dest
    _say(f"installed {', '.join(map(str, installed.values()))} ({time.perf_counter() - t0:.0f} s in all)")
    return installed


def server_version(binary: Path) -> str:
    """`llama-server --version` (it prints to stderr), which also proves the binary runs."""
    try:
        proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LlamaServerError(f"{binary} --version: {exc}") from exc
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise LlamaServerError(f"{binary} --version exited {proc.returncode}:\n{_tail(out)}")
    return out


def supported_flags(binary: Path, candidates: tuple[str, ...]) -> set[str]:
    """Which of `candidates` this llama-server's --help lists."""
    try:
        proc = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LlamaServerError(f"{binary} --help: {exc}") from exc
    words = set(re.findall(r"--?[A-Za-z][\w-]*", proc.stdout + proc.stderr))
    return {flag for flag in candidates if flag in words}


DEFAULT_LAYOUT = "default (repacking on)"  # llama.cpp's weights as it repacks them for the CPU's SIMD units
NO_REPACK_LAYOUT = "repacking off"  # what no_repack_args asks for


def no_repack_args(binary: Path) -> tuple[str, ...] | None:
    """The arguments that turn llama.cpp's weight repacking off for this binary, None when it has no switch.

    llama-server spells it `--no-repack`, llama-bench `--repack 0`; each binary's --help says which.

    Its repacked (AVX-512 / AMX) layouts are the default; on a Xeon with AMX that path crashed in the
    first prefill (docs/BENCHMARKS.md), so a peer that dies is run again with repacking off.
    """
    found = supported_flags(binary, ("--repack", "--no-repack"))
    if "--no-repack" in found:
        return ("--no-repack",)
    if "--repack" in found:
        return ("--repack", "0")
    return None


@dataclass(frozen=True, slots=True)
class LlamaServerOptions:
    """How one llama-server run is started; `threads` applies to decode and to batch (prefill) alike."""

    model_path: Path
    threads: int
    ctx: int = 2048
    slots: int = 1
    startup_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0
    extra_args: tuple[str, ...] = ()
    binary: Path | None = None

    def __post_init__(self) -> None:
        if self.threads < 1 or self.slots < 1 or self.ctx < 1:
            raise ValueError("threads, slots and ctx must each be at least 1")
        if not Path(self.model_path).is_file():
            raise ValueError(f"model file {self.model_path} does not exist; pass the path of a GGUF file")


class LlamaServerProcess:
    """llama-server on 127.0.0.1 and a free port for the length of a `with` block.

    Entering starts it and waits for GET /health to answer 200 (fails at once if it exits,
    with the last lines of its log); leaving terminates it, then kills it if it lingers.
    """

    def __init__(self, options: LlamaServerOptions) -> None:
        self.options = options
        self.binary = options.binary or find_or_build_llama_server()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._logdir: tempfile.TemporaryDirectory[str] | None = None
        self.log_path: Path | None = None

    def command(self) -> list[str]:
        o = self.options
        flags = supported_flags(self.binary, ("--cont-batching", "--no-webui"))
        return [
            str(self.binary),
            *("--host", "127.0.0.1", "--port", str(self.port)),
            *("-m", str(o.model_path), "-c", str(o.ctx), "--parallel", str(o.slots)),
            *("--threads", str(o.threads), "--threads-batch", str(o.threads)),
            *sorted(flags),
            *o.extra_args,
        ]

    def __enter__(self) -> LlamaServerProcess:
        cmd = self.command()
        self._logdir = tempfile.TemporaryDirectory(prefix="preflight-llama-server-log-")
        self.log_path = Path(self._logdir.name) / "server.log"
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def exit_status(self) -> int | None:
        """None while it runs; its exit status once it has died (negative: the signal that killed it)."""
        return self._proc.poll() if self._proc is not None else None

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        return _file_tail(self.log_path, lines) if self.log_path else "(not started)"

    def _wait_healthy(self) -> None:
        if self._proc is None:
            raise LlamaServerError("llama-server was not started")
        try:
            wait_healthy(self.base_url, self._proc.poll, self.options.startup_timeout_s, "llama-server", self.log_tail)
        except TargetError as exc:
            raise LlamaServerError(str(exc)) from None

    def stop(self) -> None:
        """Terminate our own child, kill it if it outlives the grace period, then drop its log."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.options.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=self.options.stop_timeout_s)
        if self._logdir is not None:
            self._logdir.cleanup()
            self._logdir, self.log_path = None, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--build",
        metavar="VERSION",
        default=None,
        help="build both tools from this llama-cpp-python version's sdist into the cache (no install of it needed)",
    )
    args = parser.parse_args()
    try:
        if args.build:
            build_llama_tools(args.build, cached_binary(args.build).parent)
        binary = find_or_build_llama_server() if not args.build else cached_binary(args.build)
        version = server_version(binary)
    except LlamaServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(binary)
    print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
