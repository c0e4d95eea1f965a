"""Saving and loading Preflight's documents: atomic writes, one clear line for every bad file.

Every saved document is a pydantic model with two class-level identifiers, `KIND`
(what it is, e.g. "preflight.readiness-report") and `SCHEMA_VERSION` (an integer),
which it also writes as the fields `kind` and `schema_version`. Loading checks both
before validating, so a benchmark result handed where a report is expected, or a file
from a newer Preflight, is named as such instead of failing on a missing field.

Writes go to a temporary file in the same folder and are then moved into place, so
a crash never leaves half a report; an existing file is kept unless `overwrite`.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

MAX_DOCUMENT_BYTES = 512 * 1024 * 1024  # a report with every record of a long run stays far below this


class DocumentError(Exception):
    """A document cannot be saved or loaded; the message is one line that says why.

    A failed write also carries its parts, for a page that words it as a sentence: the `path`, the `reason`
    in words ("the disk is full") and what to do (`fix`). They are attributes, not args, so the message stays
    the one line and the error still pickles across the job's process boundary."""

    def __init__(
        self, message: str, *, path: Path | None = None, reason: str | None = None, fix: str | None = None
    ) -> None:
        super().__init__(message)
        self.path, self.reason, self.fix = path, reason, fix


# errno of a failed write -> (what happened, what to do), in words a person acts on
WRITE_FAILURES: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("the disk is full", "free some space"),
    errno.EDQUOT: ("the disk quota is used up", "free some space"),
    errno.EFBIG: ("the file is larger than this process may write", "raise the file size limit (ulimit -f)"),
    errno.EROFS: ("the file system is read-only", "make the folder writable"),
    errno.EACCES: ("permission denied", "make the folder writable"),
}


def write_error(path: Path, exc: OSError) -> DocumentError:
    """One line for a write that failed, naming the cause in words; the system's own words follow in brackets."""
    known = WRITE_FAILURES.get(exc.errno or 0)
    system = exc.strerror or str(exc)
    reason, fix = known or (system[:1].lower() + system[1:], "check the folder")
    detail = f" ({system})" if known else ""
    return DocumentError(f"cannot write {path}: {reason}{detail}", path=Path(path), reason=reason, fix=fix)


Migration = Callable[[dict[str, Any]], dict[str, Any]]  # version n's JSON -> version n + 1's


class Versioned(Protocol):
    KIND: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int]
    MIGRATIONS: ClassVar[dict[int, Migration]]  # from-version -> its step to the next; one per older version


D = TypeVar("D", bound=BaseModel)
Upgrade = Callable[[Any], Any]  # parsed JSON of an older layout -> the current layout (see load's docstring)


def to_json(doc: BaseModel) -> str:
    return doc.model_dump_json(indent=1)


def save(doc: BaseModel, path: Path, *, overwrite: bool = False, mode: int = 0o644) -> Path:
    """Write `doc` as JSON to `path` atomically; DocumentError if it exists (unless overwrite) or cannot be written."""
    return write_text(path, to_json(doc), overwrite=overwrite, mode=mode)


def write_text(path: Path, text: str, *, overwrite: bool = False, mode: int = 0o644) -> Path:
    """Write `text` to `path` atomically (an export, or a document's JSON); same rules as `save`.

    `mode` is set before the file appears under its name, so a private file (0600) is
    never readable by others, not even for a moment."""
    path = Path(path)
    if not overwrite and path.exists():
        raise DocumentError(f"{path} exists; choose another file or allow overwriting")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(Path(tmp), path)
    except OSError as exc:  # ENOSPC or EFBIG land here, from write, flush or fsync: the temp file goes below
        raise write_error(path, exc) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}  # os.link's "not here"


def _link_new(tmp: Path, path: Path) -> None:
    """Move tmp to path only if path does not exist, atomically where the file system has hard links."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise DocumentError(f"{path} exists; choose another file or allow overwriting") from None
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise  # a full disk, say: the caller removes the temp file, and no empty file is left under the name
        with open(path, "x", encoding="utf-8"):  # some network and FUSE file systems: exclusive create, then replace
            pass
        try:
            os.replace(tmp, path)
        except OSError:
            path.unlink(missing_ok=True)  # never an empty file where the document should be
            raise


def check_writable(path: Path, *, overwrite: bool = False) -> None:
    """Fail before a long run, not after it: the folder must be writable and the file absent unless overwrite."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise DocumentError(f"{path} exists; choose another file or allow overwriting")
    if path.is_dir():
        raise DocumentError(f"{path} is a folder; give a file name")
    folder = path.parent
    probe_dir = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if probe_dir is None or not os.access(probe_dir, os.W_OK | os.X_OK):
        raise DocumentError(f"cannot write {path}: {probe_dir or folder} is not writable")


def parse(text: str | bytes, model: type[D], source: str = "document", *, upgrade: Upgrade | None = None) -> D:
    """Validate JSON text as `model` (which must carry KIND and SCHEMA_VERSION); DocumentError otherwise.

    `upgrade`, when given, sees the parsed JSON first; see `load`.
    """
    data = loads(text, source)
    return from_data(data if upgrade is None else upgrade(data), model, source)


def loads(text: str | bytes, source: str = "document") -> Any:
    """Parsed JSON, or DocumentError with one line (a deep nesting is an error, not a crash)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise DocumentError(f"{source}: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DocumentError(f"{source}: not a JSON document ({exc})") from None


def from_data(data: Any, model: type[D], source: str = "document") -> D:
    kind, version = getattr(model, "KIND"), getattr(model, "SCHEMA_VERSION")  # noqa: B009 - Protocol members
    if not isinstance(data, dict):
        raise DocumentError(f"{source}: expected a JSON object (a {kind}), found {type(data).__name__}")
    found_kind = data.get("kind")
    if found_kind != kind:
        what = f"a {found_kind!r} document" if isinstance(found_kind, str) else "not a Preflight document (no 'kind')"
        raise DocumentError(f"{source} is {what}, not a {kind}")
    found = data.get("schema_version")
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise DocumentError(f"{source}: schema_version must be a positive integer, found {found!r}")
    if found > version:
        raise DocumentError(
            f"{source} has schema_version {found}, written by a newer Preflight; this one reads up to {version}"
        )
    if found < version:
        data = migrate(data, model, source)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise DocumentError(f"{source}: {where}: {first['msg']}{more}") from None


def migrate(data: dict[str, Any], model: type[BaseModel], source: str = "document") -> dict[str, Any]:
    """Bring an older version's JSON up to `model`'s SCHEMA_VERSION, one ordered step at a time.

    Each step is a plain function from version n's layout to n + 1's, registered in the
    model's MIGRATIONS and tested with a committed file of version n
    (tests/fixtures/*.vN.json). A missing step is an error that names the version, never
    a silent best effort.
    """
    kind, version = getattr(model, "KIND"), getattr(model, "SCHEMA_VERSION")  # noqa: B009 - Protocol members
    steps: dict[int, Migration] = getattr(model, "MIGRATIONS", {})
    found = data.get("schema_version")
    if not isinstance(found, int) or isinstance(found, bool) or not 1 <= found <= version:
        raise DocumentError(f"{source}: cannot migrate schema_version {found!r} of a {kind}")
    for step_from in range(found, version):
        step = steps.get(step_from)
        if step is None:
            raise DocumentError(f"{source}: no migration of a {kind} from schema_version {step_from}")
        data = step(data)
        if data.get("schema_version") != step_from + 1:
            raise DocumentError(f"{source}: migrating from schema_version {step_from} did not reach {step_from + 1}")
    return data


def load(path: Path, model: type[D], *, upgrade: Upgrade | None = None) -> D:
    """Read and validate a saved document; DocumentError with one line for a missing, corrupt or foreign file.

    `upgrade` rewrites the parsed JSON of an older layout into the current one before
    the kind and version checks. It must return anything it does not recognise as is,
    so that from_data can say what is wrong with it.
    """
    return parse(read_bytes(path), model, str(path), upgrade=upgrade)


def read_bytes(path: Path) -> bytes:
    """A document file's bytes, refusing what no document is (a folder, a file over MAX_DOCUMENT_BYTES)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise DocumentError(f"{path}: {size} bytes is larger than any Preflight document ({MAX_DOCUMENT_BYTES})")
        return path.read_bytes()
    except FileNotFoundError:
        raise DocumentError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DocumentError(f"{path} is a folder, not a document") from None
    except OSError as exc:
        raise DocumentError(f"cannot read {path}: {exc.strerror or exc}") from None
