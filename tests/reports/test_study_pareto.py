"""A compress study's two Pareto charts in the exports: SVG in HTML, the front in words in Markdown, files for docs.

The documents are the kv fixture (a real saved study) turned into a compress study with literal rows, as
`test_study_reports.py` builds its variants: the figures are made up, the document and every export are real.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from reports.__main__ import main
from reports.documents import load
from reports.exports import export
from reports.history import History
from reports.study_export import pareto_figure, pareto_svgs
from reports.study_report import PARETO_CHARTS, StudyReport
from reports.svg_charts import Chart, Dot, scatter_chart

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "engine-study.v1.json"
HOSTILE = "<script>alert(1)</script>"
MIB = 2**20
SVG_NS = "{http://www.w3.org/2000/svg}"


def row(setting: str, mib: float, tok_s: float | None, kl: float | None, size: bool, speed: bool) -> dict:
    return {
        "setting": setting,
        "weight_bytes": int(mib * MIB),
        "decode_tok_s": tok_s,
        "mean_kl_nats": kl,
        "pareto_size": size,
        "pareto_speed": speed,
    }


ROWS = [
    row("fp32", 515.1, 3.0, 0.0, True, True),
    row("int4", 95.8, 20.6, 0.0003, True, True),
    row("gptq-g128", 90.8, 21.5, 0.3331, True, True),
    row("rtn-g128", 90.8, 16.7, 0.5114, False, False),
    row("prune-2:4", 515.1, 5.7, 3.9969, False, False),
    row("unscored", 90.8, None, None, False, False),  # not measured: on no chart
]


def compress(rows: list[dict]) -> StudyReport:
    doc = load(FIXTURE)
    assert isinstance(doc, StudyReport)
    return doc.model_copy(update={"study": "compress", "rows": rows})


def pareto_svgs_in(page: str) -> dict[str, ET.Element]:
    """Every chart in the page by its title, parsed as XML (so each is well-formed), the Pareto ones picked."""
    titles = {spec.title for spec in PARETO_CHARTS["compress"]}
    charts = {}
    for svg in re.findall(r"<svg\b.*?</svg>", page, flags=re.S):
        root = ET.fromstring(svg)
        title = root.findtext("title")
        if title in titles:
            charts[title] = root
    return charts


def dots(root: ET.Element, ns: str = "") -> dict[str, str]:
    """Each dot's tooltip by the setting it names."""
    tips = [c.findtext(f"{ns}title") or "" for c in root.iter(f"{ns}circle")]
    return {tip.rsplit(": x ", 1)[0]: tip for tip in tips}


def test_the_html_draws_both_pareto_charts_with_every_setting_and_the_front_marked() -> None:
    page = export(compress(ROWS), "html")
    charts = pareto_svgs_in(page)
    assert sorted(charts) == sorted(spec.title for spec in PARETO_CHARTS["compress"])
    for spec in PARETO_CHARTS["compress"]:
        root = charts[spec.title]
        texts = [t.text for t in root.iter("text")]
        measured = ["fp32", "int4", "gptq-g128", "rtn-g128", "prune-2:4"]
        assert all(name in texts for name in measured) and "unscored" not in texts
        tips = dots(root)
        assert sorted(tips) == sorted(measured)
        front = {name for name, tip in tips.items() if tip.endswith("(on the front)")}
        assert front == {"fp32", "int4", "gptq-g128"}
        assert any(p.get("stroke-dasharray") for p in root.iter("path"))  # the front joined
        assert spec.x_label in texts and spec.y_label in texts  # which way is better, on each axis
    assert "fewer is better" in page and "more is better" in page and "lower is better" in page
    assert "On the front: fp32, int4, gptq-g128 (of 5 measured settings)." in page


def test_the_front_is_the_one_the_study_saved_not_recomputed() -> None:
    """rtn-g128 is dominated by gptq-g128 on these figures, but the document says it is on the size front."""
    rows = [dict(r, pareto_size=r["setting"] in ("fp32", "rtn-g128")) for r in ROWS]
    figure = pareto_figure(compress(rows), PARETO_CHARTS["compress"][0])
    assert figure.svg is not None and figure.note == "On the front: fp32, rtn-g128 (of 5 measured settings)."
    tips = dots(ET.fromstring(figure.svg))
    assert tips["rtn-g128"].endswith("(on the front)") and not tips["int4"].endswith("(on the front)")


def test_a_study_without_the_columns_or_two_points_gets_a_note() -> None:
    old = compress([{k: v for k, v in r.items() if not k.startswith("pareto_")} for r in ROWS])
    page = export(old, "html")
    assert pareto_svgs_in(page) == {}
    assert page.count("No pareto_size in this study") == 1 and page.count("No pareto_speed in this study") == 1
    one = compress([ROWS[0], ROWS[-1]])
    for spec in PARETO_CHARTS["compress"]:
        figure = pareto_figure(one, spec)
        assert figure.svg is None and figure.note is not None and "a front needs at least 2" in figure.note
    assert "a front needs at least 2" in export(one, "md")


def test_hostile_setting_names_are_escaped() -> None:
    rows = [*ROWS[:2], row(HOSTILE, 90.8, 21.5, 0.3, True, True), row('a"b&c', 100.0, 2.0, 1.0, False, False)]
    page = export(compress(rows), "html")
    assert "<script" not in page and "&lt;script&gt;" in page
    for root in pareto_svgs_in(page).values():  # parsed: the escaping kept the SVG well-formed
        texts = [t.text for t in root.iter("text")]
        assert HOSTILE in texts and 'a"b&c' in texts


def test_markdown_lists_the_front_of_each_chart() -> None:
    text = export(compress(ROWS), "md")
    section = text.split("## Pareto fronts", 1)[1].split("##", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("- ")]
    assert [line.split(" (", 1)[0] for line in lines] == ["- " + s.title for s in PARETO_CHARTS["compress"]]
    assert all(line.endswith("On the front: fp32, int4, gptq-g128 (of 5 measured settings).") for line in lines)
    assert "## Pareto fronts" not in export(load(FIXTURE), "md")  # a kv study has no Pareto charts


def test_the_cli_writes_the_two_charts_as_svg_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PREFLIGHT_HOME", str(tmp_path / "home"))
    doc = compress(ROWS)
    History(tmp_path / "home" / "history").save(doc)
    out = tmp_path / "docs"
    assert main(["export", doc.id, "--format", "svg", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["pareto-size.svg", "pareto-speed.svg"]
    for path in out.iterdir():
        root = ET.parse(path).getroot()
        assert root.tag == f"{SVG_NS}svg"
        assert sorted(dots(root, SVG_NS)) == ["fp32", "gptq-g128", "int4", "prune-2:4", "rtn-g128"]
    assert {p.name: p.read_text(encoding="utf-8") for p in out.iterdir()} == pareto_svgs(doc)
    capsys.readouterr()
    assert main(["export", doc.id, "--format", "svg", "--out", str(out)]) == 2  # no overwriting without --force
    assert "exists" in capsys.readouterr().err
    assert main(["export", doc.id, "--format", "svg", "--out", str(out), "--force"]) == 0
    assert main(["export", str(FIXTURE), "--format", "svg", "--out", str(tmp_path / "kv")]) == 2
    assert "a kv study has no Pareto charts" in capsys.readouterr().err and not (tmp_path / "kv").exists()


def test_the_scatter_places_what_it_can() -> None:
    """Non-finite figures are left out; a negative y (no KL, a hand-edited file) gets a linear axis below 0."""
    chart = Chart("t", "x", "y")
    svg = scatter_chart(
        chart, [Dot("a", 1.0, -2.0, True), Dot("b", float("nan"), 1.0), Dot("c", 3.0, 4.0)], symlog_y=0.01
    )
    root = ET.fromstring(svg)
    assert sorted(dots(root)) == ["a", "c"]
    assert "-2" in [t.text for t in root.iter("text")]  # a tick below 0
    with pytest.raises(ValueError):
        scatter_chart(chart, [Dot("b", float("inf"), 1.0)])
