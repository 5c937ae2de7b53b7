"""The layers the folders show (STYLE.md: web → domain ← store, app.py and wiring.py
wiring them together), checked on the import graph of service/."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parent.parent / "service"

HTTP = ("starlette", "uvicorn")
REDIS = ("redis", "hiredis")
# Composition and adapters: what the domain never imports.
OUTER = ("service.app", "service.wiring", "service.cli", "service.web", "service.batch")
REPLACEMENTS = "service.replacements"
# Modules of service/ itself that are not domain logic.
NOT_DOMAIN = {
    "service",
    "service.__main__",
    "service.app",
    "service.cli",
    "service.wiring",
    "service.config",  # settings: read by every layer
    "service.metrics",  # Prometheus: counted by every layer
    "service.logs",
    "service.gctune",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SERVICE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def imports() -> dict[str, frozenset[str]]:
    """Module -> every module it imports, anywhere in its code (a name imported from a
    package counts as that package's attribute: `service.store.Store`)."""
    graph: dict[str, frozenset[str]] = {}
    for path in sorted(SERVICE.rglob("*.py")):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
        graph[name] = frozenset(found)
    return graph


def under(module: str, *roots: str) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)


def store_internal(module: str) -> bool:
    """A private module of store/ (codec, writes, keys, scripts, ...): the store's
    public surface is the package itself, `from service.store import ...`."""
    if not module.startswith("service.store."):
        return False
    return (SERVICE / "store" / f"{module.split('.')[2]}.py").exists()


def violations(modules: list[str], forbidden: object) -> list[str]:
    assert callable(forbidden)
    graph = imports()
    return sorted(f"{m} imports {i}" for m in modules for i in graph[m] if forbidden(i))


def modules_under(root: str) -> list[str]:
    found = [m for m in imports() if under(m, root)]
    assert found, root
    return found


def domain_modules() -> list[str]:
    return [
        m
        for m in imports()
        if m.count(".") == 1
        and m not in NOT_DOMAIN
        and not under(m, *OUTER)
        and not under(m, "service.store", "service.outbound", REPLACEMENTS)
    ]


def test_the_domain_imports_no_http_no_redis_and_no_outer_layer() -> None:
    assert "service.visits" in domain_modules() and "service.sync" in domain_modules()
    assert (
        violations(
            domain_modules(),
            lambda i: under(i, *HTTP, *REDIS, *OUTER, REPLACEMENTS) or store_internal(i),
        )
        == []
    )


def test_web_imports_only_the_domain_and_the_stores_public_surface() -> None:
    assert (
        violations(
            modules_under("service.web"),
            lambda i: (
                under(i, *REDIS, "service.app", "service.wiring", "service.batch")
                or under(i, "service.cli", REPLACEMENTS)
                or store_internal(i)
            ),
        )
        == []
    )


def test_batch_imports_neither_web_nor_app() -> None:
    assert (
        violations(
            modules_under("service.batch"),
            lambda i: (
                under(i, *HTTP, *REDIS, "service.web", "service.app", REPLACEMENTS)
                or store_internal(i)
            ),
        )
        == []
    )


def test_store_internals_and_the_redis_wire_stay_in_store() -> None:
    outside = [m for m in imports() if not under(m, "service.store")]
    assert (
        violations(outside, lambda i: store_internal(i) or under(i, f"{REPLACEMENTS}.redis_wire"))
        == []
    )


@pytest.mark.parametrize("entry", ["service.cli", "service.batch.run"])
def test_the_batch_commands_load_no_http_code(entry: str) -> None:
    """`pixelsync import`, `export` and `worker` run without Starlette, uvicorn or any
    endpoint loaded (cli.py imports the server only to serve)."""
    code = (
        f"import sys, {entry}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn')"
        " or m.startswith(('service.web', 'service.app'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert loaded == "[]"


def test_the_checks_see_a_violation() -> None:
    """The rules read the graph as it is: known edges are there."""
    graph = imports()
    assert "service.wiring.Domain" in graph["service.app"]
    assert "service.visits.Profiles" in graph["service.batch.importer"]
    assert store_internal("service.store.codec") and not store_internal("service.store.Store")
