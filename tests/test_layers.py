"""The project's import graph: no cycles between its modules (imports inside functions count: they run too, and
type-only imports under `if TYPE_CHECKING:` count as well: a cycle held together by them is still a cycle), the
stage order of the packages (STAGES) and the layering (pixelreg_core imports no Ray and no YAML, and nothing of
orchestrator)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pixelreg_core", "orchestrator")

# The pipeline as the imports have it, lowest stage first: a module imports only modules of its own stage or of an
# earlier one. A name stands for that module and everything under it; the longest matching name decides.
# pixelreg_core: the trainer's data and targets are described by torch-free registries the config asks; the
# trial's data (bundle, placement) is built from a config; model and training; the attacks use the trained model;
# the trial runs everything. orchestrator, in the pipeline's order: the spec; the sweep folder as state (its lock
# stops a dead holder's Ray through localray.processes, and the plan's --mps check asks localray.mps, so those two
# come before it); the plan (what to run, preflight, resources, the estimate); starting the local Ray (it is told
# the GPUs plan.resources sees); the analysis of finished rows (its `load` reads the sweep folder), before the run
# because a race (run.race) decides its next seeds from the aggregate; the run on Ray; the commands on top. Two
# modules of the analysis stand earlier still: analysis.curves, the arithmetic of an accuracy curve, and
# analysis.selection, which rows belong to the folder's current spec and its spec versions, which resume reads.
# Every orchestrator stage sits above all of pixelreg_core.
STAGES = [
    ["pixelreg_core.errors", "pixelreg_core.failures", "pixelreg_core.hooks"],
    ["pixelreg_core.data.loaders", "pixelreg_core.data.registry", "pixelreg_core.targets"],
    ["pixelreg_core.config"],
    ["pixelreg_core.results", "pixelreg_core.checkpoint"],
    ["pixelreg_core.data", "pixelreg_core.model"],
    ["pixelreg_core.kernels"],
    ["pixelreg_core.train"],
    ["pixelreg_core.attacks"],
    ["pixelreg_core.trial", "pixelreg_core.cli", "pixelreg_core.__main__", "pixelreg_core"],
    ["pixelreg_core.pack"],  # the seed pack: several trials' training and writing, on top of trial.py
    ["orchestrator.errors"],
    ["orchestrator.spec"],
    ["orchestrator.analysis.curves", "orchestrator.analysis.selection"],
    ["orchestrator.localray.processes", "orchestrator.localray.mps"],
    ["orchestrator.sweepdir"],
    ["orchestrator.plan"],
    ["orchestrator.localray"],
    ["orchestrator.analysis"],
    ["orchestrator.run"],
    ["orchestrator.commands", "orchestrator.cli", "orchestrator"],
]


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_names(module: str, path: Path, modules: dict[str, Path]) -> list[str]:
    """Every project module an import statement anywhere in the file (top level, functions, branches, and
    `if TYPE_CHECKING:` blocks) names. `from package import module` is an edge to that module only: the package's
    own __init__ is not what the importer depends on."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            names += submodules if len(submodules) == len(node.names) else [base, *submodules]
    return names


def stage_of(module: str) -> int:
    """The index in STAGES of the longest name that is the module or a package above it."""
    best = max(((len(name), i) for i, names in enumerate(STAGES) for name in names
                if module == name or module.startswith(name + ".")), default=None)
    assert best is not None, f"{module} is in no stage; add it to STAGES in tests/test_layers.py"
    return best[1]


def stage_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} (stage {stage_of(m)}) imports {n} (stage {stage_of(n)})"
                  for m, names in graph.items() for n in names if stage_of(n) > stage_of(m))


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: {n for n in imported_names(m, p, modules) if n in modules and n != m} for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_function_level_and_type_only_imports_are_in_the_graph(tmp_path):
    graph = import_graph()
    # orchestrator.commands.launch imports the aggregator only inside report_outputs
    assert "orchestrator.analysis.aggregate" in graph["orchestrator.commands.launch"]
    path = tmp_path / "m.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pixelreg_core.config import X\n")
    assert "pixelreg_core.config" in imported_names("pixelreg_core.m", path, project_modules())


def test_the_stage_check_finds_an_upward_import():
    assert stage_violations({"pixelreg_core.config": {"pixelreg_core.trial"}, "pixelreg_core.trial": set()}) == [
        "pixelreg_core.config (stage 2) imports pixelreg_core.trial (stage 8)"]
    assert stage_of("orchestrator.spec.expand") < stage_of("orchestrator.sweepdir.tables") < stage_of("orchestrator")


def test_every_import_follows_the_stage_order():
    assert stage_violations(import_graph()) == []


def test_no_import_cycles_between_project_modules():
    assert cycles(import_graph()) == []


def test_pixelreg_core_imports_no_ray_no_yaml_no_orchestrator():
    modules = project_modules()
    for module, path in modules.items():
        if not module.startswith("pixelreg_core"):
            continue
        top = {name.split(".")[0] for name in imported_names(module, path, modules)}
        assert not top & {"ray", "yaml", "orchestrator"}, (module, top & {"ray", "yaml", "orchestrator"})
