"""The dependency arrows of DESIGN.md, checked on the source: a wrong import fails here, not in review.

`planner`, `reports` and `engine` depend on nothing else of ours (engine's command line may
save to the reports history; the planner's shells read saved results and the shipped SLO profiles, and
its replay drives the bundled engine's scheduler); `checks` may use
`reports` and `engine` (to start the bundled server and count tokens) but never the
UI; no package imports the pages or widgets. Inside the engine, the core (model,
quant, run, batch and the shared top-level modules) never imports serving, studies,
compress or the CLI, and never pandas. No module of ours is part of an import cycle.

Imports are read with `ast`, so a lazy import inside a function counts, and so does
one under `if TYPE_CHECKING:`: a cycle that only type checkers see still tangles the code.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "checks", "planner", "reports", "widgets")
TOP_MODULES = ("app",)
OURS = {*PACKAGES, *TOP_MODULES, "app_pages"}
ALLOWED: dict[str, set[str]] = {
    "planner": set(),
    "reports": set(),
    "engine": set(),
    "checks": {"reports", "engine", "planner"},
}
# The engine's command line is a shell around the engine, like checks' and the pages: its `study` command
# keeps a study in the history, so engine/study_cli.py (and only it) may use reports. `python -m planner
# calibrate` reads saved benchmark results through planner/calibrate_cli.py, and reads the shipped SLO
# profiles (one file, one schema, shared with the readiness checklist) through planner/slo_targets.py:
# the planner's two shells. The planner itself takes plain numbers (CalibrationRun, SloTargets).
# planner/replay.py replays a closed loop of the bundled engine through that engine's own scheduler
# (engine.batch: plain Python over token ids, imported lazily, only when a batched bundled engine is
# predicted), so the scheduling policy has one home instead of a copy in the planner that could drift.
# planner/cpu_probe.py times the bundled engine's own int4 and Q8_0 kernels (engine.quant, imported lazily
# while measuring), so that the kernel the engine picks on this CPU is the one the planner's rates describe.
SHELLS: dict[str, set[str]] = {
    "planner/cpu_probe.py": {"engine"},
    "engine/study_cli.py": {"reports"},
    "planner/calibrate_cli.py": {"reports"},
    "planner/slo_targets.py": {"reports"},
    "planner/replay.py": {"engine"},
}
ENGINE_CORE = (
    "engine.model",
    "engine.quant",
    "engine.run",
    "engine.batch",
    "engine.errors",
    "engine.formats",
    "engine.sampling",
    "engine.stop_strings",
    "engine.text_stream",
)
ENGINE_OUTER = (
    "engine.serving",
    "engine.studies",
    "engine.compress",
    "engine.cli",
    "engine.cli_args",
    "engine.generate_cli",
    "engine.study_cli",
    "engine.serve_cli",
    "engine.__main__",
)
CORE_FORBIDDEN_LIBRARIES = ("pandas",)


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _sources() -> dict[str, Path]:
    """Every module of ours by dotted name: the packages, the pages and the top-level UI files."""
    found = {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}
    found.update({_module_name(p): p for p in sorted((ROOT / "app_pages").glob("*.py"))})
    found.update({name: ROOT / f"{name}.py" for name in TOP_MODULES})
    return found


def _imported_names(path: Path, module: str) -> Iterator[str]:
    """Dotted names a file imports, anywhere in it; `from a import b` gives `a.b` (b may be a module or a name)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*anchor, *([base] if base else [])])
            yield from (f"{base}.{alias.name}" for alias in node.names)


@cache
def _graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports.

    A name resolves to its longest prefix that is a module: `from planner import nvml` is an edge
    to `planner.nvml`, `from planner import make_plan` one to `planner`. Importing a submodule also
    runs its parents' `__init__`, but that is not an edge: otherwise every package whose `__init__`
    re-exports a submodule would be a cycle.
    """
    sources = _sources()
    graph: dict[str, set[str]] = {}
    for module, path in sources.items():
        edges: set[str] = set()
        for name in _imported_names(path, module):
            parts = name.split(".")
            while parts and ".".join(parts) not in sources:
                parts.pop()
            if parts and ".".join(parts) != module:
                edges.add(".".join(parts))
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_follow_the_arrows(package: str) -> None:
    wrong = []
    for module, path in sorted(_sources().items()):
        if module.split(".")[0] != package:
            continue
        for name in _imported_names(path, module):
            top = name.split(".")[0]
            allowed = ALLOWED[package] | SHELLS.get(path.relative_to(ROOT).as_posix(), set())
            if top in OURS and top != package and top not in allowed:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "imports against DESIGN.md's arrows:\n" + "\n".join(sorted(set(wrong)))


def test_no_module_of_ours_is_in_an_import_cycle() -> None:
    graph = _graph()
    cycles = _cycles(graph)
    described = [
        " <-> ".join(c) + ": " + "; ".join(f"{m} -> {', '.join(sorted(graph[m] & set(c)))}" for m in c) for c in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(described)


def test_the_engine_core_never_imports_serving_studies_or_pandas() -> None:
    wrong = []
    for module, path in sorted(_sources().items()):
        if not _within(module, ENGINE_CORE):
            continue
        for name in _imported_names(path, module):
            if _within(name, ENGINE_OUTER) or _within(name, CORE_FORBIDDEN_LIBRARIES):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "the engine core reaches outward:\n" + "\n".join(sorted(set(wrong)))


# The core's layers, inner first: a layer may import the ones before it, never one after it.
CORE_LAYERS = ("engine.quant", "engine.model", "engine.batch", "engine.run")


@pytest.mark.parametrize("layer", CORE_LAYERS)
def test_the_core_layers_only_look_inward(layer: str) -> None:
    outer = CORE_LAYERS[CORE_LAYERS.index(layer) + 1 :]
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for module, path in sorted(_sources().items())
        if _within(module, (layer,))
        for name in _imported_names(path, module)
        if _within(name, outer)
    ]
    assert not wrong, f"{layer} reaches an outer layer:\n" + "\n".join(sorted(set(wrong)))


def test_the_graph_sees_every_kind_of_import() -> None:
    """The walk itself: function-level, relative and `from package import module` imports are edges."""
    graph = _graph()
    assert "engine.quant.functions" in graph["engine.quant.linear"]
    assert "engine.serving.app" in graph["engine.serve_cli"]  # imported inside a function
    assert "engine.batch.batch_engine" in graph["engine.generate_cli"]  # only under TYPE_CHECKING
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_engine_public_names_load_on_first_use_and_formats_need_no_torch() -> None:
    """`engine.formats` is what checks and the widgets import: it must not drag torch in."""
    code = (
        "import sys, engine.formats, checks.load.benchmark\n"
        "assert 'torch' not in sys.modules, 'engine.formats pulled in torch'\n"
        "from engine import Engine, EngineError, LoadOptions, SamplingParams\n"
        "from engine.run.runtime import Engine as E\n"
        "from engine.sampling import SamplingParams as S\n"
        "assert Engine is E and SamplingParams is S and issubclass(EngineError, Exception)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
