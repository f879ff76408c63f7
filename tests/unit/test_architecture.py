"""What import-linter cannot say: the domain imports only the stdlib and eventsourcing.domain."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)

DOMAIN = Path(__file__).resolve().parents[2] / "service" / "domain"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_domain_imports_only_the_stdlib_and_eventsourcing_domain():
    offending = {}
    for path in DOMAIN.glob("*.py"):
        bad = {
            name for name in _imports(path)
            if name.split(".")[0] not in sys.stdlib_module_names
            and name != "eventsourcing.domain"
            and not name.startswith("service.domain")
        }
        if bad:
            offending[path.name] = sorted(bad)
    assert offending == {}
