"""The dependency arrows of DESIGN.md, checked on the source: a wrong import fails here, not in review.

`planner`, `reports` and `engine` depend on nothing else of ours (engine's command line may
save to the reports history); `checks` may use
`reports` and `engine` (to start the bundled server and count tokens) but never the
UI; no package imports the pages or widgets; the engine core never imports serving
or studies. Imports are read with `ast`, so a lazy import inside a function counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"planner", "reports", "engine", "checks", "pages", "widgets"}
ALLOWED: dict[str, set[str]] = {
    "planner": set(),
    "reports": set(),
    "engine": set(),
    "checks": {"reports", "engine", "planner"},
}
# The engine's command line is a shell around the engine, like checks' and the pages: it keeps a study
# in the history, so it (and only it) may use reports.
SHELLS: dict[str, set[str]] = {"engine/cli.py": {"reports"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_follow_the_arrows(package: str) -> None:
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            allowed = ALLOWED[package] | SHELLS.get(path.relative_to(ROOT).as_posix(), set())
            if top in OURS and top != package and top not in allowed:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "imports against DESIGN.md's arrows:\n" + "\n".join(wrong)
