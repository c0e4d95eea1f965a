"""The history flags every command that makes a document shares, and the save that honours them.

`python -m checks bench|run` and `python -m engine study` all keep their document in the
history (issue 18) unless told not to; one home for the flags, their help and the rule
that a history that cannot be written is a warning, never a failed run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from reports.identity import LABEL_MAX_CHARS

if TYPE_CHECKING:
    from reports.documents import Document

HISTORY_FLAGS = ("history", "no_history", "label")  # their `dest` names, for callers that echo their own args


def label_arg(text: str) -> str:
    """argparse type of --label: the label rule of `reports.identity`, as a usage error."""
    text = text.strip()
    if not 1 <= len(text) <= LABEL_MAX_CHARS:
        raise argparse.ArgumentTypeError(f"a label is 1 to {LABEL_MAX_CHARS} characters")
    return text


def add_history_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label", type=label_arg, default=None, help="your name for this run, shown in the history")
    parser.add_argument(
        "--history",
        type=Path,
        default=None,
        help="history folder (default: $PREFLIGHT_HOME/history, else the user data dir)",
    )
    parser.add_argument("--no-history", action="store_true", help="do not save this run in the history")


def save_to_history(doc: Document, args: argparse.Namespace) -> None:
    """Keep `doc` unless --no-history; a history that cannot be written is a warning only,
    since the run itself succeeded (and --out or --json, if given, holds it)."""
    if args.no_history:
        return
    # Imported here: every `python -m engine` command builds a parser with these flags, and the
    # documents' models cost ~0.1 s to import that `serve` and `generate` never need.
    from reports.history import History
    from reports.home import history_dir
    from reports.store import DocumentError

    try:
        path = History(history_dir(args.history)).save(doc)
    except DocumentError as exc:
        print(f"warning: not saved in the history: {exc}", file=sys.stderr)
        return
    print(f"saved in the history as {doc.id} ({path})", file=sys.stderr)
