"""On-disk cache of converted weights, so a warm load skips GGUF parsing and quantization.

An entry is two files under the cache directory:
  <key>.safetensors  the model's state dict in its final low-precision form
  <key>.json         manifest: format, engine version, source hash, config,
                     tokenizer state, and the SHA-256 and size of the tensors file

The key combines the GGUF file's SHA-256, the weight format and the engine's
cache version, so a new file, format or converter never reuses an old entry.
The manifest is written last (atomically), and the tensors file is hashed on
every read: a truncated or bit-flipped entry raises `WeightCacheError`, and
the loader rebuilds it rather than run on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.errors import WeightCacheError

CACHE_VERSION = "3"
"""Bump when the converted layout changes: old entries then simply miss."""


def cache_dir() -> Path:
    """PREFLIGHT_CACHE_DIR, else the user cache directory (platformdirs)."""
    env = os.environ.get("PREFLIGHT_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "engine"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("preflight")) / "engine"


def entry_key(source_sha256: str, fmt: str, device_type: str) -> str:
    """Packed kernels differ by device, so the device type is part of the key."""
    return f"{source_sha256[:24]}-{fmt}-{device_type}-v{CACHE_VERSION}"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 4 MiB chunks (about 0.1 s for the 98 MB bundled model)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """Paths of one entry."""

    tensors: Path
    manifest: Path

    @classmethod
    def for_key(cls, key: str, root: Path | None = None) -> CacheEntry:
        base = root or cache_dir()
        return cls(tensors=base / f"{key}.safetensors", manifest=base / f"{key}.json")

    def exists(self) -> bool:
        return self.manifest.exists()

    def remove(self) -> None:
        for p in (self.manifest, self.tensors):
            p.unlink(missing_ok=True)


def save_entry(entry: CacheEntry, state: dict[str, torch.Tensor], manifest: dict[str, Any]) -> None:
    """Write tensors then manifest, each via a temp file + rename, so readers never see half an entry."""
    entry.tensors.parent.mkdir(parents=True, exist_ok=True)
    entry.remove()
    contiguous = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(dir=entry.tensors.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(contiguous, tmp)
        os.replace(tmp, entry.tensors)
    finally:
        Path(tmp).unlink(missing_ok=True)
    full = {**manifest, "tensors_sha256": file_sha256(entry.tensors), "tensors_bytes": entry.tensors.stat().st_size}
    fd, tmp = tempfile.mkstemp(dir=entry.manifest.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(full, fh)
    os.replace(tmp, entry.manifest)


def load_entry(entry: CacheEntry, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verified state dict and manifest of an entry; WeightCacheError when anything is off."""
    try:
        manifest = json.loads(entry.manifest.read_text())
    except (OSError, ValueError) as exc:
        raise WeightCacheError(f"cache manifest {entry.manifest} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("cache_version") != CACHE_VERSION:
        raise WeightCacheError(f"cache manifest {entry.manifest} has the wrong version")
    try:
        size = entry.tensors.stat().st_size
    except OSError as exc:
        raise WeightCacheError(f"cache tensors {entry.tensors} are missing") from exc
    if size != manifest.get("tensors_bytes") or file_sha256(entry.tensors) != manifest.get("tensors_sha256"):
        raise WeightCacheError(f"cache entry {entry.tensors.name} is corrupt (size or checksum mismatch)")
    try:
        # Own copies, not views of the mapped file: otherwise the small tensors keep the
        # whole entry mapped and resident beside the repacked weights (measured: +96 MiB).
        state = {name: t.clone() for name, t in load_file(entry.tensors, device=device).items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightCacheError(f"cache tensors {entry.tensors} cannot be read: {exc}") from exc
    return state, manifest
