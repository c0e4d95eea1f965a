"""A directory of compressed weights: what `python -m engine compress` writes and `--weights DIR` loads.

    DIR/weights.safetensors  the model's state dict in its served layout (as a cache entry stores it)
    DIR/manifest.json        format, layout version, source model hash, config, tokenizer, each linear
                             layer's layout, and the SHA-256 and size of the tensors and of the recipe
    DIR/recipe.json          how the weights were made (method, settings, calibration, per-layer figures)
    DIR/weights.lock         the lock readers and writers take (engine/model/weight_cache.py)

A directory is a weight-cache entry with its own file names, so it is written and verified by the same
code: tensors through a temp file and an atomic rename, the manifest last, and on every read the tensors'
size and hash checked against the manifest. The recipe is checked against the hash the manifest
carries. Anything off is a `WeightsDirError` that names the directory and what is wrong; unlike a
cache entry there is nothing to rebuild it from, so the load fails instead of converting again.

The recipe stays a plain JSON object here: its typed model lives with the compressors
(engine/compress/recipe.py), which the engine core does not import.
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

from engine.errors import WeightCacheError, WeightsDirError
from engine.model.weight_cache import CacheEntry, file_sha256, load_entry, save_entry

RECIPE_FILE = "recipe.json"
PRODUCE_HINT = "write it again with `python -m engine compress ... --out DIR`"


@dataclass(frozen=True, slots=True)
class WeightsDir:
    """A verified directory: the state dict, the manifest and the recipe."""

    path: Path
    state: dict[str, torch.Tensor]
    manifest: dict[str, Any]
    recipe: dict[str, Any]


def write_weights_dir(directory: Path, state: dict[str, torch.Tensor], manifest: dict[str, Any], recipe: str) -> None:
    """Write the recipe (JSON text), then tensors and manifest; WeightsDirError when the directory cannot be written."""
    entry = CacheEntry.in_directory(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="recipe.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(recipe)
            os.replace(tmp, directory / RECIPE_FILE)
        finally:
            Path(tmp).unlink(missing_ok=True)
        save_entry(entry, state, {**manifest, "recipe_sha256": hashlib.sha256(recipe.encode()).hexdigest()})
    except (OSError, WeightCacheError) as exc:
        raise WeightsDirError(f"cannot write the weights directory {directory}: {exc}") from exc


def stored_format(directory: Path) -> str:
    """The format a weights directory is served in, from its manifest alone (no tensors read or hashed): what a
    caller that starts a server on it records before the server verifies the directory itself."""
    manifest = CacheEntry.in_directory(directory).manifest
    try:
        found = json.loads(manifest.read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError) as exc:
        raise WeightsDirError(f"{directory} is not a readable weights directory ({exc}); {PRODUCE_HINT}") from exc
    if not isinstance(found, str):
        raise WeightsDirError(f"{manifest} names no weight format; {PRODUCE_HINT}")
    return found


def read_weights_dir(directory: Path, device: str = "cpu") -> WeightsDir:
    """The verified contents of a weights directory; WeightsDirError, naming the directory, when anything is off."""
    if not directory.is_dir():
        raise WeightsDirError(f"weights directory {directory} does not exist (or is not a directory)")
    entry = CacheEntry.in_directory(directory)
    if not entry.exists():
        raise WeightsDirError(
            f"{directory} holds no {entry.manifest.name}: "
            "not a weights directory written by `python -m engine compress`"
        )
    try:
        state, manifest = load_entry(entry, device)
    except WeightCacheError as exc:
        raise WeightsDirError(f"weights directory {directory} cannot be loaded: {exc}; {PRODUCE_HINT}") from exc
    recipe_path = directory / RECIPE_FILE
    try:
        recipe_sha = file_sha256(recipe_path)
        recipe = json.loads(recipe_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsDirError(
            f"weights directory {directory}: {RECIPE_FILE} is unreadable ({exc}); {PRODUCE_HINT}"
        ) from exc
    if recipe_sha != manifest.get("recipe_sha256") or not isinstance(recipe, dict):
        raise WeightsDirError(
            f"weights directory {directory}: {RECIPE_FILE} does not match its manifest (changed or corrupt); "
            + PRODUCE_HINT
        )
    return WeightsDir(directory, state, manifest, recipe)
