"""Probe for issue 16 item 6; prints the figures of docs/SECURITY.md. Not a test (pytest does not
collect it): run `python tests/probe_weight_cache.py` from the repository root.

1. A cache path that runs through a regular file (unwritable, also for root): does an fp32 load
   finish, and from where?
2. Three processes saving one entry 16 times each while a fourth loads it 40 times, five rounds:
   how many saves and loads failed, and how many temp files were left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from tests.engine.test_weight_cache import WORKER  # noqa: E402 - the same worker the regression test runs

ROUNDS = 5
ROLES = [("write", 16), ("write", 16), ("write", 16), ("read", 40)]


def probe_unwritable() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        blocker = Path(tmp) / "a-file"
        blocker.write_text("")
        env = dict(os.environ, PREFLIGHT_CACHE_DIR=str(blocker), PYTHONPATH=str(REPO))
        code = "from engine.model.loader import load_model; m = load_model(None, 'fp32', 'cpu'); print(m.source)"
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
        last = (done.stderr.strip().splitlines() or [""])[-1][:160]
        print(f"1. unwritable cache: exit {done.returncode}, loaded from: {done.stdout.strip() or '-'}; stderr: {last}")


def probe_race() -> None:
    failed = {"write": 0, "read": 0}
    left = 0
    for _ in range(ROUNDS):
        with tempfile.TemporaryDirectory() as root:
            env = dict(os.environ, PYTHONPATH=str(REPO))
            procs = [
                subprocess.Popen(
                    [sys.executable, "-c", WORKER, role, root, str(n)], env=env, stdout=subprocess.PIPE, text=True
                )
                for role, n in ROLES
            ]
            for proc in procs:
                for line in proc.communicate(timeout=600)[0].splitlines():
                    failed[line.split(":")[0]] += 1
            left += len(list(Path(root).glob("*.tmp")))
    saves = ROUNDS * sum(n for role, n in ROLES if role == "write")
    loads = ROUNDS * sum(n for role, n in ROLES if role == "read")
    print(
        f"2. shared entry: {failed['write']} of {saves} saves and {failed['read']} of {loads} loads failed, "
        f"{left} temp files left"
    )


if __name__ == "__main__":
    probe_unwritable()
    probe_race()
