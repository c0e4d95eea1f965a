"""The one way the UI tests open the dashboard in Streamlit's `AppTest` (the Studies page test uses it too)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")
TIMEOUT_S = 120  # per script run: a loaded 2-core machine renders a page in seconds, never near this


def open_app(page: str | None = None, timeout_s: float = TIMEOUT_S, eager: bool = True) -> AppTest:
    """A fresh session (what a new browser tab gets) on the home page, switched to `page` if given.

    `eager` ticks "Eager decode" on the sidebar's bundled target and on the Engine page: the suite's
    cache starts empty, and the compiled default would build its decode step (about a minute) in every
    test that starts the bundled engine. Fails at once when a run raised, so that no test goes on to
    assert against a page that never rendered.
    """
    at = AppTest.from_file(APP, default_timeout=timeout_s)
    if eager:
        at.session_state["target_eager"] = True
        at.session_state["engine_eager"] = True
    at.run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at
