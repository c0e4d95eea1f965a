"""A saved sync benchmark of the bundled engine as a run the planner predicts (checks/load/calibration.py)."""

from __future__ import annotations

from pathlib import Path

from result_docs import record, result_of, run_of

from checks.load.calibration import (
    KEEP_STEP_LOGS,
    calibratable_runs,
    calibration_runs,
    calibration_step_logs,
    measured_run,
    new_step_log_path,
    sync_runs,
)
from reports.benchmark_result import BundledTargetDoc
from reports.history import History

BUNDLED = BundledTargetDoc(quant="int4", device="cpu", threads=2, max_num_seqs=1, api="chat", log_path="x.log")


def _sync(send_gap: float = 1.0):
    # three requests one after the other: TTFT 0.1 s, then a token every 20 ms (4 tokens)
    records = [record(i, i * send_gap, [i * send_gap + 0.1 + 0.02 * k for k in range(4)]) for i in range(3)]
    return result_of([run_of(records, "sync")]).model_copy(update={"target": BUNDLED})


def test_a_sync_run_of_the_bundled_engine_becomes_a_measured_run() -> None:
    run = measured_run(_sync())
    assert run is not None and (run.quant, run.device) == ("int4", "cpu")
    assert (run.prompt_tokens, run.completion_tokens) == (8, 4)
    assert abs(run.prefill_tok_s - 8 / 0.1) < 1e-6  # mean prompt over the median TTFT
    assert abs(run.decode_tok_s - 1000 / 20) < 1e-6  # one over the median TPOT
    assert run.weight_bytes is None


def test_other_runs_are_not_predicted_as_single_streams(tmp_path: Path) -> None:
    remote = result_of([run_of([record(0, 0.0, [0.1, 0.12])], "sync")])
    concurrent = _sync().model_copy(update={"runs": [run_of([record(0, 0.0, [0.1, 0.12])], "concurrency:2")]})
    assert measured_run(remote) is None and measured_run(concurrent) is None
    history = History(tmp_path)
    for doc in (_sync(), remote, concurrent):
        history.save(doc)
    [entry] = sync_runs(history)
    assert entry.target == "bundled:int4" and entry.headline.startswith("sync:")


def test_saved_concurrency_runs_of_the_bundled_engine_can_be_calibrated_on(tmp_path: Path) -> None:
    remote = result_of([run_of([record(0, 0.0, [0.1, 0.12])], "sync")])
    concurrent = _sync().model_copy(update={"runs": [run_of([record(0, 0.0, [0.1, 0.12])], "concurrency:2")]})
    history = History(tmp_path)
    for doc in (_sync(), remote, concurrent):
        history.save(doc)
    entries = calibratable_runs(history)
    assert sorted(e.profile or "" for e in entries) == ["concurrency:2", "sync"]
    runs = calibration_runs(history, [e.id for e in entries if e.id])
    assert sorted(r.concurrency for r in runs) == [1, 2]
    assert all((r.engine, r.gpu, r.format, r.threads) == ("bundled", "cpu", "int4", 2) for r in runs)


def test_a_saved_run_names_its_step_log_while_the_file_is_there(tmp_path: Path) -> None:
    history = History(tmp_path / "history")
    log = tmp_path / "steps.jsonl"
    log.write_text("{}\n")
    with_log = _sync().model_copy(update={"id": "with", "config": {"step_log": str(log)}})
    gone = _sync().model_copy(update={"id": "gone", "config": {"step_log": str(tmp_path / "nope.jsonl")}})
    without = _sync().model_copy(update={"id": "without"})
    for doc in (with_log, gone, without):
        history.save(doc)
    assert calibration_step_logs(history, ["with", "gone", "without"]) == [str(log)]


def test_new_step_logs_get_fresh_names_and_the_oldest_are_deleted(tmp_path: Path) -> None:
    import os

    for i in range(KEEP_STEP_LOGS + 5):
        old = tmp_path / f"steps-{i:03d}.jsonl"
        old.write_text("{}\n")
        os.utime(old, (1_000_000 + i, 1_000_000 + i))
    path = new_step_log_path(tmp_path)
    kept = sorted(p.name for p in tmp_path.glob("*.jsonl"))
    assert len(kept) == KEEP_STEP_LOGS - 1 and kept[0] == "steps-006.jsonl"  # room for the new one
    assert path.parent == tmp_path and not path.exists() and path != new_step_log_path(tmp_path)
