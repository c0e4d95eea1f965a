"""Fixtures of the dashboard tests: one `AppTest` session per test, opened by `app_session.open_app`."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.ui.app_session import open_app


@pytest.fixture
def app() -> AppTest:
    """The dashboard on its home page."""
    return open_app()


@pytest.fixture
def page(request: pytest.FixtureRequest) -> AppTest:
    """The dashboard switched to the page the test module names in its `PAGE` constant."""
    return open_app(request.module.PAGE)
