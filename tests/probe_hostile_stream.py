"""Probe (issue 16, items 7 and 8): what a hostile SSE stream costs the load generator's client.

Not a test (pytest does not collect it): a figure for docs/SECURITY.md, run by hand

    .venv/bin/python tests/probe_hostile_stream.py --mib 50                 # with the default limits
    .venv/bin/python tests/probe_hostile_stream.py --mib 50 --lift-limits   # the parser's own cost, all 50 MiB
    .venv/bin/python tests/probe_hostile_stream.py --nested

`--mib N`: one request against a planted server that sends `data: ` and N MiB with no line end;
prints the client thread's CPU seconds (the server runs on another thread and is not counted)
and the record (before the fix there were no limits to lift). `--nested`: a 4-request run
whose every answer holds one event nested 100,000 deep; prints how many records the run
kept, or the exception that lost them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

# Run as a script, Python puts tests/ first on the path, where tests/checks/ would hide the real `checks`.
REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from checks.load.client import StreamClient  # noqa: E402
from checks.load.endpoint import Endpoint  # noqa: E402
from checks.load.loadgen import RunLimits, run_load_sync  # noqa: E402
from checks.load.profiles import LoadProfile  # noqa: E402
from checks.load.prompts import PromptRequest  # noqa: E402
from tests.fault_server import Behaviour, FaultServer, Script  # noqa: E402

PROMPT = PromptRequest("say three words", None, max_tokens=8, input_tokens=3, ignore_eos=True, source="probe")


def endless_line(mib: int, lifted: bool) -> None:
    limits = {"max_event_bytes": 2**40, "max_response_bytes": 2**40} if lifted else {}
    with FaultServer(Script(Behaviour.ENDLESS_LINE, line_bytes=mib * 2**20)) as server:
        endpoint = Endpoint(server.base_url, "fault-model", request_timeout_s=3600, **limits)  # type: ignore[arg-type]

        async def one() -> object:
            async with StreamClient(endpoint, time.perf_counter()) as client:
                return await client.send(0, PROMPT, 0.0)

        cpu0, wall0 = time.thread_time(), time.perf_counter()
        record = asyncio.run(one())
        cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    print(f"{mib} MiB without a line end: client CPU {cpu:.2f} s, wall {wall:.2f} s")
    print(f"record: ok={record.ok} kind={record.error_kind} excerpt={record.error_excerpt!r}")  # type: ignore[attr-defined]


def nested() -> None:
    with FaultServer(Script(Behaviour.DEEP_NESTING)) as server:
        endpoint = Endpoint(server.base_url, "fault-model", request_timeout_s=60)
        try:
            result = run_load_sync(endpoint, [PROMPT], LoadProfile.parse("concurrency:2"), RunLimits(requests=4))
        except BaseException as exc:  # the probe reports whatever escaped: that is the fault being measured
            print(f"the run raised {type(exc).__name__}: 0 records kept")
            return
    kinds = [r.error_kind for r in result.records]
    print(f"{len(result.records)} records kept: {kinds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=None, help="send one line of this many MiB")
    parser.add_argument("--lift-limits", action="store_true", help="--mib with the byte limits lifted: parse it all")
    parser.add_argument("--nested", action="store_true", help="a run against deeply nested events")
    args = parser.parse_args()
    if args.mib is not None:
        endless_line(args.mib, args.lift_limits)
    if args.nested:
        nested()


if __name__ == "__main__":
    main()
