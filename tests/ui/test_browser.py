"""One real-browser pass: `streamlit run app.py` driven by Playwright in Debian's headless Chromium.

The real engine, no mocks. `make test` installs /usr/bin/chromium when it is missing.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import psutil
import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright

from checks.load.targets import free_port, wait_healthy
from planner.hardware import detect
from tests.planted_server import PlantedServer

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_DEADLINE_S = 60
MODEL_DEADLINE_MS = 180_000
SCREENSHOTS = ROOT / "docs" / "screenshots"  # each page as the browser test saw it (README shows Home)
PLANTED_FAST = {"token_delay_s": 0.002, "max_running": 8, "rate_limit_rpm": 6000, "rate_limit_burst": 200}

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@contextlib.contextmanager
def _dashboard(tmp_path: Path, *options: str) -> Iterator[str]:
    """`streamlit run app.py` on a free port with `options`; its URL once it answers /_stcore/health."""
    port = free_port()
    log = tmp_path / "streamlit.log"
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        *options,
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc.poll, START_DEADLINE_S, "streamlit", log.read_text, path="/_stcore/health")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def server_url(tmp_path: Path) -> Iterator[str]:
    with _dashboard(tmp_path) as url:
        yield url


@pytest.fixture
def dark_server_url(tmp_path: Path) -> Iterator[str]:
    with _dashboard(tmp_path, "--theme.base", "dark") as url:
        yield url


LOCAL = re.compile(r"^(https?|wss?)://(127\.0\.0\.1|localhost)(:\d+)?/|^(data|blob|about):")


@pytest.fixture
def page() -> Iterator[Page]:
    """A page whose every request is logged: the dashboard must make no outside request (issue 21: offline)."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            requests: list[str] = []
            tab.on("request", lambda request: requests.append(request.url))
            tab.on("websocket", lambda ws: requests.append(ws.url))
            yield tab
            outside = sorted({url for url in requests if not LOCAL.match(url)})
            assert requests and not outside, f"requests that left this machine: {outside}"
        finally:
            browser.close()


def _settle(page: Page) -> None:
    """Wait until the app has finished the rerun the last input started (its running indicator is gone)."""
    page.wait_for_timeout(300)
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=60_000)


def tick_eager(page: Page, where: Locator, label: str) -> None:
    """Tick an "Eager decode" checkbox: the suite's cache starts empty, and the compiled default would
    build its decode step (about a minute) before the engine answers."""
    where.get_by_text(label, exact=True).click()
    expect(where.get_by_role("checkbox", name=label)).to_be_checked()
    _settle(page)


SIDEBAR_EAGER = "Eager decode (skip the compiled decode step)"


def _listening_addresses(port: int) -> set[str]:
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    return {c.laddr.ip for c in listening if c.laddr.port == port}


def test_home_then_engine_chat(server_url: str, page: Page) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # Started without --server.address: .streamlit/config.toml keeps it on loopback (issue 16, item 12).
    assert _listening_addresses(int(server_url.rsplit(":", 1)[1])) == {"127.0.0.1"}
    page.goto(server_url)
    main = page.get_by_test_id("stMainBlockContainer")
    expect(main.get_by_text(detect().cpu_model, exact=False).first).to_be_visible(timeout=60_000)
    expect(main.get_by_text("RAM total")).to_be_visible()
    page.screenshot(path=SCREENSHOTS / "home.png", full_page=True)

    main.get_by_role("link", name=re.compile("Try the bundled engine")).click()
    expect(page.get_by_role("heading", name="Engine")).to_be_visible(timeout=30_000)
    tick_eager(page, main, "Eager decode")
    page.get_by_role("button", name="Load").click()
    expect(main.get_by_text("Loaded format")).to_be_visible(timeout=MODEL_DEADLINE_MS)
    expect(main.get_by_text(re.compile(r"^int4 on "))).to_be_visible()

    chat = page.get_by_test_id("stChatInputTextArea")
    chat.fill("What is the capital of France?")
    chat.press("Enter")
    messages = page.get_by_test_id("stChatMessage")
    expect(messages).to_have_count(2, timeout=MODEL_DEADLINE_MS)
    reply = messages.nth(1)
    expect(reply.get_by_text("completion tokens")).to_be_visible(timeout=MODEL_DEADLINE_MS)
    expect(reply.get_by_test_id("stMarkdownContainer").first).not_to_be_empty()
    expect(page.get_by_test_id("stException")).to_have_count(0)
    expect(page.get_by_role("dialog")).to_have_count(0)
    # The reply's run ends in st.rerun() (to enable the input again); a navigation clicked before that
    # rerun is taken is folded into it and lost (Streamlit keeps the newer request's page): wait for it.
    _settle(page)
    shot = SCREENSHOTS / "engine.png"
    page.screenshot(path=shot, full_page=True)
    assert shot.stat().st_size > 0

    # Every page renders in the real browser: the studies page from the sidebar navigation.
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Engine studies").click()
    expect(page.get_by_role("heading", name="Engine studies")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("button", name=re.compile("Run"))).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)
    page.screenshot(path=SCREENSHOTS / "studies.png", full_page=True)

    for name in ("Hardware", "Plan", "Benchmark"):
        page.get_by_test_id("stSidebarNav").get_by_role("link", name=name).click()
        expect(page.get_by_role("heading", name=re.compile(name)).first).to_be_visible(timeout=60_000)
        _settle(page)  # the page's figures, not just its heading, in the screenshot the README shows
        expect(page.get_by_test_id("stException")).to_have_count(0)
        page.screenshot(path=SCREENSHOTS / f"{name.lower()}.png", full_page=True)
    # The Benchmark page stops at its hint until a run is started; its form and Run button are there.
    expect(main.get_by_text("press Run benchmark", exact=False)).to_be_visible()
    expect(page.get_by_role("button", name="Run benchmark")).to_be_enabled()


def test_the_pre_launch_flow_from_quick_check_to_a_compared_report(server_url: str, page: Page) -> None:
    """Issue 21's flow in a real browser: the Quick check from Home ends in a verdict; its report downloads as
    a document that validates against the committed JSON Schema; a second run (the checklist on a planted-fault
    server) follows; the Reports page opens and compares the two."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(server_url)
    main = page.get_by_test_id("stMainBlockContainer")
    tick_eager(page, page.get_by_test_id("stSidebar"), SIDEBAR_EAGER)
    page.get_by_role("button", name="Quick check").click()
    verdict = re.compile(r"^(READY|READY WITH WARNINGS|NOT READY|INCOMPLETE):")
    expect(main.get_by_text(verdict)).to_be_visible(timeout=MODEL_DEADLINE_MS * 2)
    expect(
        main.get_by_text(re.compile(r"5\. Checklist: (READY|READY_WITH_WARNINGS|NOT_READY|INCOMPLETE)"))
    ).to_be_visible()  # the flow's status shows the new verdict
    expect(page.get_by_test_id("stException")).to_have_count(0)
    page.screenshot(path=SCREENSHOTS / "home.png", full_page=True)

    main.get_by_role("link", name=re.compile("See every check")).click()
    expect(page.get_by_role("heading", name="Readiness checklist")).to_be_visible(timeout=60_000)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download JSON").click()
    document = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    jsonschema.validate(document, json.loads((ROOT / "reports/schema/readiness-report.v2.json").read_text()))
    assert document["target"]["quant"] == "int4" and len(document["categories"]) == 5

    # The second run: the whole checklist on a planted-fault server (fast fake generation) and shows
    # the verdict, the results by category and the downloads.
    with PlantedServer(**PLANTED_FAST) as planted:
        page.get_by_test_id("stSidebarNav").get_by_role("link", name="Checklist").click()
        expect(page.get_by_role("heading", name="Readiness checklist")).to_be_visible(timeout=60_000)
        sidebar = page.get_by_test_id("stSidebar")  # the one target of every measuring page (widgets/target.py)
        sidebar.get_by_text("Remote endpoint").click()
        sidebar.get_by_label("Base URL").fill(planted.base_url + "/v1")
        sidebar.get_by_label("Base URL").press("Enter")
        sidebar.get_by_label("API key").fill(planted.api_key)
        sidebar.get_by_label("API key").press("Enter")
        _settle(page)  # a click during the rerun that Enter started can be dropped by the browser's Streamlit
        sidebar.get_by_role("button", name="Test connection").click()
        expect(sidebar.get_by_text(re.compile(r"^Ready to measure: "))).to_be_visible(timeout=60_000)
        page.get_by_role("button", name="Run checklist").click()
        # The page still shows the Quick check's report until this run ends: wait for the new report's id.
        saved = main.get_by_text(re.compile(r"^Saved in the history as")).filter(has_not_text=document["id"])
        expect(saved).to_be_visible(timeout=MODEL_DEADLINE_MS)
        expect(main.get_by_text(re.compile(r"^(READY|READY WITH WARNINGS|NOT READY|INCOMPLETE):"))).to_be_visible()
        expect(main.get_by_role("heading", name=re.compile("^Security"))).to_be_visible()
        expect(page.get_by_role("button", name="Download Markdown")).to_be_visible()
        expect(page.get_by_test_id("stException")).to_have_count(0)
        page.screenshot(path=SCREENSHOTS / "checklist.png", full_page=True)

    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Reports").click()
    expect(page.get_by_role("heading", name="Reports")).to_be_visible(timeout=60_000)
    expect(main.get_by_test_id("stDataFrame").first).to_be_visible()  # the history table (a canvas grid)
    page.get_by_role("tab", name="Compare").click()
    expect(main.get_by_text(re.compile(r"^(Comparable runs|Not comparable)"))).to_be_visible(timeout=60_000)
    expect(page.get_by_test_id("stException")).to_have_count(0)
    page.screenshot(path=SCREENSHOTS / "reports.png", full_page=True)


def test_a_deep_link_on_a_fresh_server_gets_the_real_navigation(server_url: str, page: Page) -> None:
    """The first request after a start is a deep link: it must get the app's navigation (titles, icons), not
    Streamlit's file-name navigation of a `pages/` folder (issue 21)."""
    page.goto(server_url + "/benchmark")
    expect(page.get_by_role("heading", name="Benchmark").first).to_be_visible(timeout=60_000)
    nav = page.get_by_test_id("stSidebarNav")
    for title in ("Home", "Engine studies", "Checklist", "Reports"):
        expect(nav.get_by_role("link", name=title)).to_be_visible()
    expect(nav.get_by_role("link", name=re.compile("^(app|engine chat|studies)$"))).to_have_count(0)
    expect(page.get_by_test_id("stException")).to_have_count(0)


# The text of every chart drawn now (Vega renders SVG), with its fill, and the app's background.
CHART_TEXT_JS = """() => {
  const shown = [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')]
    .filter(c => c.getBoundingClientRect().width > 0);
  const texts = shown.flatMap(c => [...c.querySelectorAll('svg text')])
    .filter(t => t.textContent.trim() && t.getBoundingClientRect().width > 0)
    .map(t => [t.textContent, getComputedStyle(t).fill]);
  const app = document.querySelector('[data-testid="stApp"]');
  return {texts, background: getComputedStyle(app).backgroundColor};
}"""


def _luminance(css: str) -> float:
    """WCAG relative luminance of an 'rgb(r, g, b)' or 'rgba(...)' colour."""
    channels = [int(v) / 255 for v in re.findall(r"[\d.]+", css)[:3]]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_charts_read_in_the_dark_theme(dark_server_url: str, page: Page) -> None:
    """Every chart's labels, titles and legends in the dark theme, measured: the rendered SVG text's fill
    against the app's background must reach WCAG's 4.5:1 (dark-on-dark would be near 1:1)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(dark_server_url + "/plan")
    expect(page.get_by_role("heading", name="Plan").first).to_be_visible(timeout=60_000)
    for tab in ("Memory", "Roofline"):
        page.get_by_role("tab", name=tab).click()
        expect(page.locator('[data-testid="stVegaLiteChart"] svg text').first).to_be_attached(timeout=30_000)
        page.wait_for_timeout(500)  # Vega draws after the element appears
        drawn = page.evaluate(CHART_TEXT_JS)
        assert _luminance(drawn["background"]) < 0.05, f"not the dark theme: background {drawn['background']}"
        assert len(drawn["texts"]) > 5, drawn  # axis labels, titles and the legend
        poor = [(text, fill) for text, fill in drawn["texts"] if _contrast(fill, drawn["background"]) < 4.5]
        assert not poor, f"{tab}: text hard to read on {drawn['background']}: {poor[:5]}"
        page.locator('[data-testid="stVegaLiteChart"]:visible').first.scroll_into_view_if_needed()
        page.screenshot(path=SCREENSHOTS / f"plan-{tab.lower()}-dark.png")  # the chart, scrolled into view
    expect(page.get_by_test_id("stException")).to_have_count(0)
