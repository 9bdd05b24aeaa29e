"""The import floors of docs/architecture.md: a module imports from its own floor or lower ones, never higher,
whether at the top of the file or inside a function (a function-level import hides a loop, it does not remove
it); and no two modules import each other."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medtl"

# Lowest first; a module belongs to the longest name that prefixes it (docs/architecture.md, "Floors").
FLOORS = [
    ["medtl.errors"],
    ["medtl", "medtl.paths", "medtl.plain", "medtl.runtime", "medtl.progress", "medtl.lock"],
    ["medtl.data"],
    ["medtl.evaluation"],
    ["medtl.models"],
    ["medtl.strategies.base"],
    ["medtl.strategies", "medtl.adapt"],
    ["medtl.strategies.registry"],
    ["medtl.engine"],
    ["medtl.similarity", "medtl.deploy"],
    ["medtl.pipeline"],
    ["medtl.demo"],
    ["medtl.cli", "medtl.__main__"],
]


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The medtl modules ``path`` imports, anywhere in the file."""
    name = _name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {m for m in found if m.split(".")[0] == "medtl" and m != name}


def _floor(module: str) -> int:
    matches = [(len(n), i) for i, names in enumerate(FLOORS) for n in names if module == n or module.startswith(n + ".")]
    return max(matches)[1]


def test_no_module_imports_from_a_higher_floor_and_no_two_import_each_other():
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_name(f) for f in files}
    graph = {_name(f): _imports(f, modules) for f in files}
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if _floor(d) > _floor(m))
    assert not upward, upward
    loops = sorted(f"{a} <-> {b}" for a, deps in graph.items() for b in deps if a < b and a in graph.get(b, ()))
    assert not loops, loops


def test_the_registries_list_every_method_and_command():
    from medtl.adapt.strategies import ADAPTATION_STRATEGIES
    from medtl.cli import build_parser
    from medtl.strategies.registry import STRATEGIES

    assert set(ADAPTATION_STRATEGIES) < set(STRATEGIES) and len(STRATEGIES) == 14  # 7 fine-tuning + 7 adaptation
    commands = build_parser()._subparsers._group_actions[0].choices
    assert len(commands) == 13  # 12 command modules; predict adds export-bundle
