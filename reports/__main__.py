"""`python -m reports list | show | delete | export | compare | schema`: Preflight's saved documents.

`export --format svg` writes a compress study's Pareto charts as SVG files for docs.

Exit codes follow the checklist's: 0 done, 1 a regression found by `compare
--fail-on-regression`, 2 bad input (a missing id, a corrupt file, an unwritable output).
Every error is one `error:` line on stderr.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reports import store
from reports.compare import THRESHOLD_PCT, compare
from reports.compare_markdown import comparison_to_markdown
from reports.documents import SHORT_KIND, SHORT_KINDS, Document
from reports.exports import FORMATS, export
from reports.history import Filters, History, HistoryEntry, dump_entries, entry_for
from reports.home import history_dir
from reports.readiness_report import ReadinessReport
from reports.schema_files import SCHEMA_DIR, write_schemas
from reports.study_export import pareto_svgs
from reports.study_report import StudyReport

SVG = "svg"  # not one of FORMATS: it writes a file per chart, not one document
_RELATIVE = re.compile(r"^(\d+)([hdw])$")


def parse_since(text: str) -> datetime:
    """'7d', '24h', '2w' (ago) or an ISO date/time (UTC when no zone is given)."""
    m = _RELATIVE.match(text.strip())
    if m:
        n, unit = int(m.group(1)), m.group(2)
        return datetime.now(UTC) - timedelta(**{{"h": "hours", "d": "days", "w": "weeks"}[unit]: n})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--since {text!r}: give 7d, 24h, 2w or a date like 2026-12-01") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _history(args: argparse.Namespace) -> History:
    return History(history_dir(args.history))


def _table(entries: list[HistoryEntry]) -> str:
    rows = [("ID", "KIND", "STARTED (UTC)", "VERDICT", "TARGET", "MODEL", "LABEL / HEADLINE")]
    for e in entries:
        if e.unreadable is not None:
            rows.append((e.file, "?", "-", "UNREADABLE", "-", "-", e.unreadable))
            continue
        started = e.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if e.started_at else "-"
        rows.append(
            (
                e.id or e.file,
                e.kind or "?",
                started,
                e.verdict or "-",
                e.target or "-",
                e.model or "-",
                " / ".join(x for x in (e.label, e.headline) if x),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)


def _cmd_list(args: argparse.Namespace) -> int:
    entries = _history(args).entries(Filters(target=args.target, since=args.since, kind=args.kind))
    if args.json:
        print(dump_entries(entries))
    elif not entries:
        print(f"no documents in {history_dir(args.history)}", file=sys.stderr)
    else:
        print(_table(entries))
    return 0


def _load(args: argparse.Namespace, ref: str) -> Document:
    return _history(args).load(ref)


def _cmd_show(args: argparse.Namespace) -> int:
    doc = _load(args, args.ref)
    if args.json:
        print(store.to_json(doc))
    elif isinstance(doc, ReadinessReport | StudyReport):
        print(export(doc, "md"), end="")
    else:
        print(_table([entry_for(doc, f"{doc.id}.json")]))
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    history = _history(args)
    path = history.resolve(args.ref, files=False)
    if not args.yes:
        if not sys.stdin.isatty():
            raise store.DocumentError(f"delete {path.name}: not a terminal to ask on; add --yes to delete")
        answer = input(f"delete {path}? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("kept", file=sys.stderr)
            return 0
    print(f"deleted {history.delete(path.stem)}", file=sys.stderr)
    return 0


def _export_svgs(doc: Document, folder: Path, overwrite: bool) -> int:
    """A study's Pareto charts as SVG files into `folder` (for docs): every file is checked before any is written."""
    if not isinstance(doc, StudyReport):
        raise store.DocumentError(f"a {SHORT_KIND[doc.KIND]} document has no svg export; a compress study has")
    if folder.exists() and not folder.is_dir():
        raise store.DocumentError(f"{folder} is a file; --out of the svg export is a folder")
    files = {folder / name: svg for name, svg in pareto_svgs(doc).items()}
    for path in files:
        store.check_writable(path, overwrite=overwrite)
    for path, svg in files.items():
        print(f"wrote {store.write_text(path, svg, overwrite=overwrite)}", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    doc = _load(args, args.ref)
    if args.format == SVG:
        return _export_svgs(doc, args.out, args.force)
    store.check_writable(args.out, overwrite=args.force)
    print(f"wrote {store.write_text(args.out, export(doc, args.format), overwrite=args.force)}", file=sys.stderr)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    for out in (args.json, args.markdown):
        if out is not None:
            store.check_writable(out, overwrite=args.force)
    result = compare(_load(args, args.a), _load(args, args.b), threshold_pct=args.threshold_pct)
    text = comparison_to_markdown(result)
    print(text, end="")
    if args.json is not None:
        store.write_text(args.json, result.model_dump_json(indent=1), overwrite=args.force)
    if args.markdown is not None:
        store.write_text(args.markdown, text, overwrite=args.force)
    if args.fail_on_regression and not result.comparable:
        print("error: the runs are not comparable; no regression verdict (see the reasons above)", file=sys.stderr)
        return 2
    return 1 if args.fail_on_regression and result.regressions() else 0


def _cmd_schema(args: argparse.Namespace) -> int:
    for path in write_schemas(args.dir):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reports", description="Preflight's saved reports and results.")
    sub = parser.add_subparsers(dest="command", required=True)
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument(
        "--history",
        type=Path,
        default=None,
        help="history folder (default: $PREFLIGHT_HOME/history, else the user data folder)",
    )

    ls = sub.add_parser("list", parents=[home], help="the saved documents, newest first")
    ls.add_argument("--target", default=None, help="only targets containing this text")
    ls.add_argument("--since", type=parse_since, default=None, help="only runs since: 7d, 24h, 2w or an ISO date")
    ls.add_argument("--kind", choices=SHORT_KINDS, default=None)
    ls.add_argument("--json", action="store_true", help="print the listing as JSON")

    show = sub.add_parser("show", parents=[home], help="print one document (an id, id prefix or file)")
    show.add_argument("ref", metavar="ID|FILE")
    show.add_argument("--json", action="store_true", help="print the whole document as JSON")

    delete = sub.add_parser("delete", parents=[home], help="delete one document from the history")
    delete.add_argument("ref", metavar="ID")
    delete.add_argument("--yes", action="store_true", help="do not ask")

    out = sub.add_parser(
        "export", parents=[home], help="write a document as HTML, Markdown, JUnit XML or JSON, or charts as SVG"
    )
    out.add_argument("ref", metavar="ID|FILE")
    out.add_argument(
        "--format",
        choices=[*FORMATS, SVG],
        required=True,
        help="html (self-contained, opens offline), md and junit (reports), json; "
        "svg: a compress study's two Pareto charts, pareto-size.svg and pareto-speed.svg, into the folder --out",
    )
    out.add_argument("--out", type=Path, required=True, help="the file to write (svg: the folder)")
    out.add_argument("--force", action="store_true", help="overwrite --out")

    cmp_ = sub.add_parser("compare", parents=[home], help="A against B, with significance from the raw records")
    cmp_.add_argument("a", metavar="A", help="the baseline: an id, id prefix or file")
    cmp_.add_argument("b", metavar="B", help="the candidate: an id, id prefix or file")
    cmp_.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="exit 1 on a significant regression past the threshold or a check PASS -> FAIL",
    )
    cmp_.add_argument(
        "--threshold-pct",
        type=float,
        default=THRESHOLD_PCT,
        help=f"smallest change that counts as a regression (default: {THRESHOLD_PCT:g})",
    )
    cmp_.add_argument("--json", type=Path, default=None, help="also write the comparison as JSON")
    cmp_.add_argument("--markdown", type=Path, default=None, help="also write the comparison as Markdown")
    cmp_.add_argument("--force", action="store_true", help="overwrite --json / --markdown")

    schema = sub.add_parser("schema", help="write the JSON Schema file of every document kind")
    schema.add_argument("--dir", type=Path, default=SCHEMA_DIR, help=f"folder to write to (default: {SCHEMA_DIR})")
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "list": _cmd_list,
    "show": _cmd_show,
    "delete": _cmd_delete,
    "export": _cmd_export,
    "compare": _cmd_compare,
    "schema": _cmd_schema,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threshold_pct", 0) < 0:
        print("error: --threshold-pct must be 0 or more", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except store.DocumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
