"""The reports history: every report, benchmark result and engine study a run saved, in one private folder.

The files are the truth. Each document is `<id>.json`, written atomically with mode 0600
in a 0700 folder (a report can hold a server log tail and error excerpts). Listing reads
every file once and keeps what it learnt in `.index.json`, keyed by name, size and
modification time, so a history of large reports lists in milliseconds; a stale or
corrupt index is rebuilt, never trusted over the files.

A file that is not a readable document (cut short, foreign, from a newer Preflight) is
listed as unreadable with the reason. It never breaks the listing and is never deleted
by anything but an explicit `delete` of that file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from reports import documents, store
from reports.benchmark_result import BenchmarkResult
from reports.home import DIR_MODE, FILE_MODE
from reports.identity import ID_PATTERN
from reports.readiness_report import ReadinessReport
from reports.redaction import redact_url
from reports.study_report import StudyReport

INDEX_NAME = ".index.json"
INDEX_VERSION = 2  # 2: entries carry `profile`; an index of an older version is rebuilt from the files


class HistoryEntry(BaseModel):
    """One line of `python -m reports list`: enough to pick a document without opening it."""

    model_config = ConfigDict(extra="forbid")

    file: str
    id: str | None = None
    kind: documents.ShortKind | None = None
    started_at: datetime | None = None
    target: str | None = None
    model: str | None = None
    label: str | None = None
    verdict: str | None = None
    headline: str | None = None
    profile: str | None = None  # a benchmark of one run: its load profile ('sync', 'concurrency:4', ...)
    unreadable: str | None = None


class _Cached(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int
    mtime_ns: int
    entry: HistoryEntry


class _Index(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[2] = INDEX_VERSION
    files: dict[str, _Cached] = {}


def target_label(target: str) -> str:
    """How the history names a target given as a run's `--target` ('bundled:int4' or a URL): URLs redacted."""
    return target if target.startswith("bundled") else redact_url(target)


def _target_of(doc: documents.Document) -> str:
    if isinstance(doc, StudyReport):
        return doc.target
    if isinstance(doc, ReadinessReport):
        t = doc.target
        return target_label(f"bundled:{t.quant}" if t.kind == "bundled" and t.quant else t.base_url)
    t = doc.target
    return target_label(f"bundled:{t.quant}" if t.kind == "bundled" else t.base_url)


def _headline(doc: documents.Document) -> tuple[str | None, str]:
    """(verdict, one-line headline) of a document; a study has no verdict, only what it measured."""
    if isinstance(doc, StudyReport):
        return None, f"{doc.study} study: {len(doc.rows)} measured points"
    if isinstance(doc, ReadinessReport):
        counts = doc.status_counts()
        return doc.verdict.value, ", ".join(f"{n} {s.value}" for s, n in counts.items() if n)
    verdict = "INVALID" if not doc.valid else ("CANCELLED" if doc.cancelled else "VALID")
    run = doc.runs[0] if doc.runs else None
    if run is None:
        return verdict, "no runs"
    s = run.summary
    more = f" (+{len(doc.runs) - 1} runs)" if len(doc.runs) > 1 else ""
    tput = f"{s.output_throughput:.1f} tok/s" if s.output_throughput is not None else "tok/s n/a"
    ttft = f"TTFT p95 {s.p95_ttft_ms:.0f} ms" if s.p95_ttft_ms is not None else "TTFT n/a"
    return verdict, f"{run.profile}{more}: {s.completed} ok, {s.failed} failed, {tput}, {ttft}"


def entry_for(doc: documents.Document, file: str) -> HistoryEntry:
    verdict, headline = _headline(doc)
    if isinstance(doc, StudyReport):
        model = doc.model
    else:
        model = doc.target.model if isinstance(doc, ReadinessReport) else doc.endpoint.model
    return HistoryEntry(
        file=file,
        id=doc.id,
        kind=documents.SHORT_KIND[doc.KIND],
        started_at=doc.started_at,
        target=_target_of(doc),
        model=model,
        label=doc.label,
        verdict=verdict,
        headline=headline,
        profile=doc.runs[0].profile if isinstance(doc, BenchmarkResult) and len(doc.runs) == 1 else None,
    )


@dataclass(frozen=True)
class Filters:
    """What `reports list` narrows to; None means no filter."""

    target: str | None = None
    since: datetime | None = None
    kind: str | None = None

    def keep(self, e: HistoryEntry) -> bool:
        if self.target is not None and (e.target is None or self.target.lower() not in e.target.lower()):
            return False
        if self.kind is not None and e.kind != self.kind:
            return False
        return self.since is None or (e.started_at is not None and e.started_at >= self.since)


class History:
    """The documents under `root` (see the module docstring). Nothing is created until something is saved."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # --- writing ---------------------------------------------------------------------------------------

    def save(self, doc: documents.Document) -> Path:
        """Write `doc` as `<id>.json`; DocumentError if that id is already there or the folder is not writable."""
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            why = store.write_error(self.root, exc)
            message = f"cannot create the history folder {self.root}: {why.reason}"
            raise store.DocumentError(message, path=self.root, reason=why.reason, fix=why.fix) from None
        return store.save(doc, self.root / f"{doc.id}.json", mode=FILE_MODE)

    def delete(self, ref: str) -> Path:
        """Remove the document `ref` names (an id or an id prefix in this history); its path."""
        path = self.resolve(ref, files=False)
        try:
            path.unlink()
        except OSError as exc:
            raise store.DocumentError(f"cannot delete {path}: {exc.strerror or exc}") from None
        return path

    # --- reading ---------------------------------------------------------------------------------------

    def _files(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.suffix == ".json" and not p.name.startswith("."))

    def _read_index(self) -> _Index:
        try:
            return _Index.model_validate_json((self.root / INDEX_NAME).read_bytes())
        except (OSError, ValueError, ValidationError, RecursionError):
            return _Index()  # missing or corrupt: rebuilt from the files below

    def _write_index(self, index: _Index) -> None:
        with contextlib.suppress(store.DocumentError):  # a read-only history still lists, only more slowly
            store.write_text(self.root / INDEX_NAME, index.model_dump_json(), overwrite=True, mode=FILE_MODE)

    def entries(self, filters: Filters | None = None) -> list[HistoryEntry]:
        """Every file, newest first, unreadable ones last; the index is refreshed as a side effect."""
        old, new = self._read_index(), _Index()
        out: list[HistoryEntry] = []
        for path in self._files():
            try:
                st = path.stat()
            except OSError as exc:
                out.append(HistoryEntry(file=path.name, unreadable=f"cannot read: {exc.strerror or exc}"))
                continue
            hit = old.files.get(path.name)
            if hit is None or (hit.size, hit.mtime_ns) != (st.st_size, st.st_mtime_ns):
                hit = _Cached(size=st.st_size, mtime_ns=st.st_mtime_ns, entry=self._inspect(path))
            new.files[path.name] = hit
            out.append(hit.entry)
        if new != old:
            self._write_index(new)
        keep = filters or Filters()
        readable = sorted(
            (e for e in out if e.unreadable is None and keep.keep(e)),
            key=lambda e: (e.started_at is not None, e.started_at),
            reverse=True,
        )
        return readable + [e for e in out if e.unreadable is not None]  # always shown: a filter cannot hide them

    @staticmethod
    def _inspect(path: Path) -> HistoryEntry:
        try:
            return entry_for(documents.load(path), path.name)
        except store.DocumentError as exc:
            return HistoryEntry(file=path.name, unreadable=str(exc).removeprefix(str(path)).lstrip(": "))

    def resolve(self, ref: str, *, files: bool = True) -> Path:
        """The file `ref` names: an existing file path (when `files`), else an id or unique id prefix here."""
        if files and (os.sep in ref or ref.endswith(".json")) and Path(ref).is_file():
            return Path(ref)
        if not re.match(ID_PATTERN, ref):
            raise store.DocumentError(f"{ref!r} is neither a report file nor a history id")
        exact = self.root / f"{ref}.json"
        if exact.is_file():
            return exact
        matches = [e for e in self.entries() if e.id is not None and e.id.startswith(ref)]
        if len(matches) == 1:
            return self.root / matches[0].file
        if matches:
            raise store.DocumentError(f"{ref!r} matches {len(matches)} documents: {', '.join(sorted(_ids(matches)))}")
        raise store.DocumentError(f"no document {ref!r} in the history at {self.root}")

    def latest(self, target: str, kind: documents.ShortKind) -> HistoryEntry | None:
        """The newest readable document of `kind` for exactly `target` ('bundled:int4', a redacted URL)."""
        return next((e for e in self.entries(Filters(kind=kind)) if e.unreadable is None and e.target == target), None)

    def load(self, ref: str) -> documents.Document:
        return documents.load(self.resolve(ref))


def _ids(entries: Iterable[HistoryEntry]) -> list[str]:
    return [e.id for e in entries if e.id is not None]


def dump_entries(entries: list[HistoryEntry]) -> str:
    """The listing as JSON (`reports list --json`): a list of entries, dates in ISO 8601."""
    return json.dumps([e.model_dump(mode="json") for e in entries], indent=1)
