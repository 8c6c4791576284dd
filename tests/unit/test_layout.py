"""The layout reads like the architecture: who may import whom, no import circles, and packages that say
what they own. Read from the source with `ast`, so it holds for every module, run or not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("cluster", "worker", "proto")
# Which package may import which (besides itself): the head uses what it shares with the hosts, never a host's
# internals; the shared package and the generated contract stand on their own.
ALLOWED = {"proto": set(), "worker": {"proto"}, "worker.shared": {"proto"}, "cluster": {"worker.shared", "proto"}}


def box(module: str) -> str:
    """The layout box a module belongs to: its top-level package, or worker.shared."""
    return "worker.shared" if module == "worker.shared" or module.startswith("worker.shared.") else module.split(".")[0]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "_pb2" in path.name:
                continue
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Our modules that `path` imports (`from a.b import c` counts a.b.c when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known}


GRAPH = {name: imports_of(path, set(modules())) for name, path in modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_follow_the_layers(module: str) -> None:
    mine = box(module)
    allowed = ALLOWED[mine] | {mine} | ({"worker.shared"} if mine == "worker" else set())
    foreign = {other for other in GRAPH[module] if box(other) not in allowed}
    assert not foreign, f"{module} imports {sorted(foreign)}"


def test_proto_holds_only_the_contract_and_its_generator() -> None:
    hand_written = {p.name for p in (REPO / "proto").glob("*.py") if "_pb2" not in p.name}
    assert hand_written == {"__init__.py", "generate.py"}


def test_no_import_circle() -> None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in visiting:
            raise AssertionError("import circle: " + " -> ".join([*visiting[visiting.index(name) :], name]))
        if name in done:
            return
        visiting.append(name)
        for other in sorted(GRAPH[name]):
            if other != name.rpartition(".")[0]:  # a module importing its own package's __init__ is no circle
                visit(other)
        visiting.pop()
        done.add(name)

    for name in sorted(GRAPH):
        visit(name)


def test_cluster_root_holds_only_the_cli_and_packages() -> None:
    files = {p.name for p in (REPO / "cluster").glob("*.py")}
    assert files == {"__init__.py", "cli.py"}


@pytest.mark.parametrize(
    "package",
    sorted(
        str(p.parent.relative_to(REPO)) for p in REPO.glob("*/**/__init__.py") if p.parts[len(REPO.parts)] in PACKAGES
    ),
)
def test_every_package_says_what_it_owns(package: str) -> None:
    assert ast.get_docstring(ast.parse((REPO / package / "__init__.py").read_text())), package


END_COUNTERS = {"requests", "team_requests", "tokens", "team_tokens", "duration", "ttft", "itl"}


def test_the_request_end_counters_change_only_in_the_end_records_consumer() -> None:
    """A request's end travels one road: its record (cluster/gateway/usage.UsageRow) reaches every consumer from
    one place, and the router's end counters and histograms change only in RouterMetrics.observe_end."""
    found = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr == "labels"
                    and isinstance(node.value, ast.Attribute)
                    and node.value.attr in END_COUNTERS
                ):
                    found.append(f"{name}.{function.name}")
    assert found and set(found) == {"cluster.router.metrics.observe_end"}, sorted(set(found))
