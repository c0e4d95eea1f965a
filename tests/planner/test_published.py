"""planner/data/published.json: every point loads, cites its source, carries the conditions its metrics need,
and the held-out third follows the fixed rule."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter

import pytest
from pydantic import ValidationError

from planner.catalog import load_catalog
from planner.errors import CatalogError
from planner.published import HELD_OUT_EVERY, PUBLISHED_PATH, PublishedFile, load_published

RAW = json.loads(PUBLISHED_PATH.read_text())
PUBLISHED = load_published()
HF_REPO = re.compile(r"^[\w.\-]+/[\w.\-]+$")


def test_at_least_thirty_points_each_with_a_source_and_a_quote() -> None:
    assert len(PUBLISHED.points) >= 30
    for point in PUBLISHED.points:
        assert point.source_url.startswith("https://") and len(point.quote) >= 10, point.id


def test_a_third_is_held_out_by_the_fixed_rule() -> None:
    held = PUBLISHED.split("held_out")
    assert len(held) == len(PUBLISHED.points) // HELD_OUT_EVERY
    sources = Counter(p.source_url for p in PUBLISHED.points)
    assert {p.source_url for p in held} >= {url for url, n in sources.items() if n >= HELD_OUT_EVERY}


def test_points_name_catalog_entries() -> None:
    cat = load_catalog()
    for point in PUBLISHED.points:
        c = point.conditions
        assert c.model in cat.models or HF_REPO.match(c.model), point.id
        assert c.gpu is None or c.gpu in cat.gpus, point.id
        assert c.format in cat.formats, point.id


def test_every_figure_is_in_its_quote() -> None:
    """Nothing derived: each measured number appears in the quoted words (commas and trailing zeros aside)."""
    for point in PUBLISHED.points:
        quoted = point.quote.replace(",", "")
        for name in point.measured.given():
            value = getattr(point.measured, name)
            if isinstance(value, bool):
                continue
            shown = str(value) if isinstance(value, int) else f"{value:g}"  # :g writes 1192160 as 1.19216e+06
            zeros = "0*" if "." in shown else r"(?:\.0+)?"  # 57.7520 is 57.752; 51.0 is 51
            assert re.search(rf"(?<![\d.]){re.escape(shown)}{zeros}(?!\d)", quoted), (point.id, name, value)


def test_metric_counts() -> None:
    counts = PUBLISHED.metric_counts()
    assert counts["max_output_tok_s"] >= 20 and counts["ttft_ms"] >= 10 and counts["weights_gib"] >= 3
    assert counts["e2e_ms"] >= 3
    assert sum(counts.values()) >= len(PUBLISHED.points)


def test_e2e_is_measured_in_both_halves() -> None:
    """An E2E figure only the fit half holds could not show a held-out error."""
    for half in ("fit", "held_out"):
        assert any(p.measured.e2e_ms is not None for p in PUBLISHED.split(half)), half


def test_kv_capacity_is_measured_in_both_halves() -> None:
    """A KV figure only the fit half holds could not show a held-out error."""
    kv = ("kv_tokens", "gpu_blocks", "kv_cache_gib", "max_concurrency")
    for half in ("fit", "held_out"):
        assert any(any(getattr(p.measured, m) is not None for m in kv) for p in PUBLISHED.split(half)), half


def _broken(edit) -> str:  # noqa: ANN001
    data = copy.deepcopy(RAW)
    edit(data)
    with pytest.raises(ValidationError) as caught:
        PublishedFile.model_validate(data)
    return str(caught.value)


def test_a_latency_figure_without_lengths_is_rejected() -> None:
    def drop_lengths(data: dict) -> None:
        nim = next(p for p in data["points"] if p["conditions"]["engine"] == "nim")
        del nim["conditions"]["input_tokens"]

    assert "ttft_ms, tpot_ms, output_tok_s need conditions input_tokens" in _broken(drop_lengths)


def _first_e2e(data: dict) -> dict:
    return next(p for p in data["points"] if "e2e_ms" in p["measured"])


def test_an_e2e_figure_needs_lengths_and_a_load() -> None:
    def drop_output(data: dict) -> None:
        del _first_e2e(data)["conditions"]["output_tokens"]

    def drop_load(data: dict) -> None:
        _first_e2e(data)["conditions"]["concurrency"] = None

    assert "e2e_ms need conditions output_tokens" in _broken(drop_output)
    assert "latency figures need concurrency or request_rate" in _broken(drop_load)
    assert "Input should be greater than 0" in _broken(lambda d: _first_e2e(d)["measured"].update(e2e_ms=0))


def test_kv_figures_need_the_memory_setting() -> None:
    def drop_utilization(data: dict) -> None:
        data["points"][0]["conditions"]["gpu_memory_utilization"] = None

    assert "need conditions gpu_memory_utilization" in _broken(drop_utilization)


def test_the_split_cannot_be_moved_by_hand() -> None:
    def swap(data: dict) -> None:
        data["points"][0]["split"] = "held_out"

    assert "must be 'fit' by the held-out rule" in _broken(swap)


def test_unknown_fields_and_duplicate_ids_are_rejected() -> None:
    assert "Extra inputs are not permitted" in _broken(lambda d: d["points"][1]["measured"].update(tokens_per_s=1.0))
    assert "duplicate point ids" in _broken(lambda d: d["points"][1].update(id=d["points"][0]["id"]))


def test_a_bad_file_is_one_catalog_error(tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "published.json"
    bad.write_text(json.dumps(RAW | {"schema_version": 2}))
    with pytest.raises(CatalogError, match=r"^published.json: schema_version: Input should be 1 \(1 error\(s\)\)$"):
        load_published(bad)
