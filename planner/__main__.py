"""`python -m planner detect [--json]`: print what this machine offers for inference."""

from __future__ import annotations

import argparse
import json
import sys

from planner.hardware import detect, summary_lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m planner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_detect = sub.add_parser("detect", help="detect CPU, ISA, RAM, disk and torch backends")
    p_detect.add_argument("--json", action="store_true", help="print the Hardware record as JSON")
    args = parser.parse_args(argv)

    if args.command == "detect":
        hw = detect()
        if args.json:
            json.dump(hw.to_dict(), sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            for line in summary_lines(hw):
                print(line)
            for note in hw.notes:
                print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
