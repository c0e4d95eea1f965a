"""The bundled engine's formats scored against fp32 by the quant study, for the planner's quality notes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/planner_quality.py [--threads 1] [--write]

Runs the engine's own quant study (engine/studies/quant.py) over every weight format the engine
serves, with its default quality settings (the whole of engine/data/eval.txt in windows of 512
tokens): perplexity of the real next tokens, mean KL(fp32 || format) and top-1 agreement with
fp32. The planner reads only quality, so the study's speed part is cut to the least it allows
(a 16-token prompt, 2 decoded tokens, no cold load); those timings are printed but not kept.

`--write` validates the figures with the planner's own schema (planner.catalog.MeasuredQualityFile)
and writes planner/data/measured_quality.json, with this command, the date and the revision, so
the planner's notes (planner/quality.py) quote a measurement, never a figure typed in by hand.
Without it the script only prints the table (what `make bench` does).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO_ROOT, format_table, source_revision  # noqa: E402

OUT = REPO_ROOT / "planner" / "data" / "measured_quality.json"
# The least speed measurement the quant study accepts (StudyOptions / MIN_COUNTS): quality is what is kept.
SPEED_PROMPT_TOKENS = 16
SPEED_DECODE_TOKENS = 2
ABOUT = (
    "Quality of the bundled engine's weight formats against its fp32 model (the bundled GGUF's weights "
    "dequantized), measured by the engine's quant study on the evaluation text it ships: perplexity of the real "
    "next tokens, mean KL(fp32 || format) in nats and top-1 agreement with fp32, over `positions` scored "
    "next-token positions. Written by bench/planner_quality.py --write (the command below), never by hand; "
    "planner/quality.py turns a row into the format's quality note and checks its tier. Schema: "
    "planner/catalog.py MeasuredQualityFile."
)


def measure(threads: int) -> dict:
    """One quant study over every served format; its conditions and rows."""
    from engine.formats import WEIGHT_FORMATS
    from engine.studies.base import StudyOptions
    from engine.studies.quant import run_quant_study

    options = StudyOptions(
        device="cpu",
        threads=threads,
        quant_formats=WEIGHT_FORMATS,
        quant_prompt_tokens=SPEED_PROMPT_TOKENS,
        quant_decode_tokens=SPEED_DECODE_TOKENS,
        quant_cold_load=False,
    )
    result = run_quant_study(options, lambda line: print(line, flush=True))
    return result.to_dict()


def to_file(study: dict, command: str, revision: str) -> dict:
    """The study's quality columns in the planner's schema (validated before anything is written)."""
    from planner.catalog import MeasuredQualityFile

    c = study["conditions"]
    doc = {
        "schema_version": 1,
        "about": ABOUT,
        "model": c["model"],
        "model_file": c["model_file"],
        "file_tensor_types": c["file_tensor_types"],
        "reference": c["reference"],
        "eval_text": "engine/data/eval.txt",
        "eval_tokens": c["eval_tokens"],
        "eval_window": c["eval_window"],
        "command": command,
        "date_utc": c["date"],
        "revision": revision,
        "machine": f"{c['cpu']}, {c['torch_threads']} torch thread(s), torch {c['torch']}, {c['device']}",
        "formats": [
            {
                "engine_quant": r["format"],
                "perplexity": r["perplexity"],
                "mean_kl_nats": r["mean_kl_nats"],
                "top1_agreement": r["top1_agreement"],
                "positions": r["scored_tokens"],
            }
            for r in study["rows"]
        ],
    }
    return MeasuredQualityFile.model_validate(doc).model_dump(mode="json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the committed file used 1)")
    ap.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(REPO_ROOT)}")
    args = ap.parse_args()
    omp = os.environ.get("OMP_NUM_THREADS")
    command = shlex.join([".venv/bin/python", "bench/planner_quality.py", *sys.argv[1:]])
    command = f"OMP_NUM_THREADS={omp} {command}" if omp else command
    doc = to_file(measure(args.threads), command, source_revision(("engine",)))
    print(f"{doc['model']}, {doc['eval_tokens']} eval tokens in windows of {doc['eval_window']}; {doc['machine']}")
    rows = [
        [f["engine_quant"], f"{f['perplexity']:.3f}", f"{f['mean_kl_nats']:.5f}", f"{f['top1_agreement']:.3f}"]
        + [str(f["positions"])]
        for f in doc["formats"]
    ]
    print(format_table(["format", "perplexity", "KL(fp32||X) nats", "top-1 vs fp32", "positions"], rows))
    if args.write:
        OUT.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {OUT.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
