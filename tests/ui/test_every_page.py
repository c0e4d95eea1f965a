"""Every page renders without an exception whatever the sidebar's target is: none yet, the bundled engine, or
a remote endpoint nobody answers on (issue 21). Rendering sends no request: nothing runs until a button."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from checks.load.targets import free_port
from tests.ui.app_session import APP, TIMEOUT_S
from widgets.target import KINDS, TARGET_NEEDED

PAGES = ("home", "hardware", "plan", "engine_chat", "studies", "benchmark", "checklist", "reports")
MEASURING = ("home", "benchmark", "checklist")  # the pages that draw the target picker
TARGETS = {
    "no target": {"target_kind": KINDS[1], "target_url": ""},
    "bundled": {"target_kind": KINDS[0], "target_quant": "int4"},
    "unreachable": {"target_kind": KINDS[1], "target_url": f"http://127.0.0.1:{free_port()}/v1"},
}


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("name", PAGES)
def test_the_page_renders_for_the_target(name: str, target: str) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.run()
    for key, value in TARGETS[target].items():
        at.session_state[key] = value
    at.switch_page(f"app_pages/{name}.py").run()
    assert not at.exception, at.exception
    assert at.title, "the page drew nothing"
    if name in MEASURING:
        assert at.radio(key="target_kind").value == TARGETS[target]["target_kind"]
    if name in ("benchmark", "checklist"):
        infos = [i.value for i in at.info]
        assert (TARGET_NEEDED in infos) == (target == "no target")
        run = at.button(key="bench_run" if name == "benchmark" else "check_run")
        assert run.disabled == (target == "no target")
        assert not at.error  # an unreachable URL is only found when a run or a connection test asks it
