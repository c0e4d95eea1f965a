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

Several processes may share one cache (a dashboard and the servers it starts,
two test runs). Each entry has a `<key>.lock` file: writers hold it exclusively
and readers shared (`fcntl.flock`), so a reader never sees one writer's tensors
beside another's manifest, and nobody deletes an entry another process is
writing. Writes go through uniquely named temp files and an atomic rename;
nothing is removed first, since the rename replaces. Lock files stay (deleting
one while another process waits on it would split the lock in two).

A cache that cannot be written (read-only, full, a path through a file) raises
`WeightCacheError` from `save_entry`, with the temp files removed; the loader
logs it and runs on the weights it has just converted.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.cache_files import cache_dir, file_lock
from engine.errors import WeightCacheError

CACHE_VERSION = "4"  # 4: int8 / int4 keep the Q8_0 table (and int8 Q8_0 weights) as blocks
"""Bump when the converted layout changes: old entries then simply miss."""


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
    lock: Path

    @classmethod
    def for_key(cls, key: str, root: Path | None = None) -> CacheEntry:
        base = root or cache_dir()
        return cls(tensors=base / f"{key}.safetensors", manifest=base / f"{key}.json", lock=base / f"{key}.lock")

    @classmethod
    def in_directory(cls, directory: Path) -> CacheEntry:
        """An entry that is a whole directory of its own: a weights directory (engine/model/weights_dir.py)."""
        return cls(
            tensors=directory / "weights.safetensors",
            manifest=directory / "manifest.json",
            lock=directory / "weights.lock",
        )

    @property
    def temp_prefix(self) -> str:
        """Temp files of this entry are `<key>.<random>.tmp`, so a writer can find a crashed writer's leftovers."""
        return self.manifest.stem + "."

    def exists(self) -> bool:
        try:
            return self.manifest.is_file()
        except OSError:  # an unreadable directory holds no entry we could use
            return False


@contextmanager
def locked(entry: CacheEntry, exclusive: bool) -> Iterator[None]:
    """Hold the entry's lock: exclusive to write, shared to read."""
    with file_lock(entry.lock, exclusive):
        yield


def _new_temp(entry: CacheEntry, temps: list[Path]) -> Path:
    """A new uniquely named temp file beside the entry, recorded in `temps` so the caller removes it on failure."""
    fd, name = tempfile.mkstemp(dir=entry.tensors.parent, prefix=entry.temp_prefix, suffix=".tmp")
    os.close(fd)
    temps.append(Path(name))
    return temps[-1]


def save_entry(entry: CacheEntry, state: dict[str, torch.Tensor], manifest: dict[str, Any]) -> None:
    """Write tensors then manifest under the entry's exclusive lock; WeightCacheError if the cache cannot be written.

    The manifest carries the hash of the bytes this process wrote (taken from its own temp
    file, not from the shared path), and no temp file outlives a failure.
    """
    contiguous = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    try:
        entry.tensors.parent.mkdir(parents=True, exist_ok=True)
        with locked(entry, exclusive=True):
            for stale in entry.tensors.parent.glob(entry.temp_prefix + "*.tmp"):  # a killed writer's leftovers
                stale.unlink(missing_ok=True)
            temps: list[Path] = []
            try:
                tensors_tmp = _new_temp(entry, temps)
                save_file(contiguous, tensors_tmp)
                full = {
                    **manifest,
                    "tensors_sha256": file_sha256(tensors_tmp),
                    "tensors_bytes": tensors_tmp.stat().st_size,
                }
                manifest_tmp = _new_temp(entry, temps)
                manifest_tmp.write_text(json.dumps(full))
                os.replace(tensors_tmp, entry.tensors)
                os.replace(manifest_tmp, entry.manifest)
            finally:
                for tmp in temps:  # after the renames these are already gone
                    tmp.unlink(missing_ok=True)
    except (OSError, SafetensorError) as exc:
        raise WeightCacheError(f"cannot write the weight cache entry in {entry.tensors.parent}: {exc}") from exc


def load_entry(entry: CacheEntry, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verified state dict and manifest of an entry; WeightCacheError when anything is off."""
    with locked(entry, exclusive=False):
        return _read_entry(entry, device)


def _read_entry(entry: CacheEntry, device: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        manifest = json.loads(entry.manifest.read_text())
    except (OSError, ValueError) as exc:
        raise WeightCacheError(f"cache manifest {entry.manifest} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("cache_version") != CACHE_VERSION:
        found = manifest.get("cache_version") if isinstance(manifest, dict) else None
        raise WeightCacheError(
            f"cache manifest {entry.manifest} has layout version {found!r}; this engine reads {CACHE_VERSION!r}"
        )
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
