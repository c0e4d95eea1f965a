"""`python -m reports schema`: rewrite the committed JSON Schema files from the document models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reports.schema_files import SCHEMA_DIR, write_schemas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports", description="Preflight's document files.")
    sub = parser.add_subparsers(dest="command", required=True)
    schema = sub.add_parser("schema", help="write the JSON Schema file of every document kind")
    schema.add_argument("--dir", type=Path, default=SCHEMA_DIR, help=f"folder to write to (default: {SCHEMA_DIR})")
    args = parser.parse_args(argv)
    if args.command == "schema":
        for path in write_schemas(args.dir):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
