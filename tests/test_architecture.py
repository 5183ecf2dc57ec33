"""The tree shows the architecture: imports flow one way (launch -> cluster -> jobs -> training -> runstate,
data, model -> runtime, storage) with no circle, and the import rules of design.md hold. Read from the source
(ast), so a violation fails here before it surprises a rank at run time."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("msca", "jobs")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules `path` imports (`from a.b import c` counts as a.b and a.b.c, whichever exists)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


SOURCES = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def project_imports(name: str, top_level_only: bool = True) -> set[str]:
    return {m for m in imports(SOURCES[name], top_level_only) if m in SOURCES and m != name}


def test_no_import_circle_at_module_level():
    graph = {name: project_imports(name) for name in SOURCES}
    # a package's __init__ re-exporting its own modules is not a circle through the package
    graph = {n: {m for m in deps if not (n.startswith(m + ".") and m in graph)} for n, deps in graph.items()}
    done, stack = set(), []

    def visit(node):
        if node in stack:
            cycle = stack[stack.index(node) :] + [node]
            pytest.fail("import circle: " + " -> ".join(cycle))
        if node in done:
            return
        stack.append(node)
        for dep in sorted(graph[node]):
            visit(dep)
        stack.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)


def external(name: str) -> set[str]:
    return {m.split(".")[0] for m in imports(SOURCES[name], top_level_only=False)}


def test_import_rules():
    for name in SOURCES:
        ext, ours = external(name), {m for m in imports(SOURCES[name], False) if m.startswith(("msca", "jobs"))}
        if name.startswith("msca"):
            assert not {m for m in ours if m.split(".")[0] == "jobs"}, f"{name} imports jobs/"
        if "boto3" in ext or "botocore" in ext:
            # benchmarks measure against raw boto3 as their baseline
            assert name.startswith(("msca.storage", "msca.bench")), f"{name} imports boto3: only msca.storage may"
        if "submitit" in ext or "ray" in ext:
            assert name.startswith("msca.cluster"), f"{name} imports submitit/ray: only msca.cluster may"
        if name.startswith("msca.model"):
            assert all(m.startswith("msca.model") for m in ours), f"{name} imports outside msca.model: {ours}"
        if name.startswith("msca.data"):
            assert not any(m.startswith("msca.model") for m in ours), f"{name} (data) imports msca.model"
        if name.startswith(("msca.runtime", "msca.storage")):
            assert not any(m.startswith(("msca.training", "msca.cluster", "msca.launcher")) for m in ours), (
                f"{name} (a lower layer) imports {ours}"
            )


def test_every_package_exports_its_api():
    for init in (REPO / "msca").glob("*/__init__.py"):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init.relative_to(REPO)} says what the package is for"
