"""The service is the one way in: no API module reaches past it to the engine.

Read from the source (AST), as the import-circle test does. Every module
under ``forsun_box/api/`` except ``service.py`` must not import the engine,
the writer, the stores, the dispatcher or the app, nor read a ``scheduler``,
``store`` or ``app`` attribute of anything (the service's own, say).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.unit.test_import_cycles import graph

API = Path(__file__).resolve().parents[2] / "forsun_box" / "api"
BEYOND = (
    "forsun_box.scheduler",
    "forsun_box.writer",
    "forsun_box.store",
    "forsun_box.app",
    "forsun_box.dispatcher",
    "forsun_box.executor",
)
ATTRIBUTES = {"scheduler", "store", "app"}


def api_modules() -> list[Path]:
    return sorted(p for p in API.rglob("*.py") if p.name != "service.py")


def test_the_api_modules_are_found() -> None:
    names = {p.relative_to(API).as_posix() for p in api_modules()}
    assert {"http/v1.py", "http/v2.py", "thrift/methods.py", "console/base.py"} <= names


def test_no_api_module_imports_past_the_service() -> None:
    edges = graph()
    found = {
        name: sorted(t for t in targets if t.startswith(BEYOND))
        for name, targets in edges.items()
        if name.startswith("forsun_box.api.") and name != "forsun_box.api.service"
    }
    assert {k: v for k, v in found.items() if v} == {}
    # the check sees imports: the service does import the engine
    assert "forsun_box.scheduler" in edges["forsun_box.api.service"]


def test_no_api_module_reads_the_engine_off_an_object() -> None:
    found = []
    for path in api_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ATTRIBUTES:
                found.append(f"{path.relative_to(API)}:{node.lineno} .{node.attr}")
    assert found == []
