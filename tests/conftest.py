"""Fixtures shared by test modules (each module opts in by name)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from forsun_box.actions import Action, configure_actions

# Modules marked by name here rather than in themselves (their own files are
# being changed elsewhere at the moment; a ``pytestmark`` in each would do).
_MARKS = {
    Path("e2e", "test_console_browser.py"): "browser",
    Path("e2e", "test_binary.py"): "binary",
}
_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            mark = _MARKS.get(item.path.resolve().relative_to(_TESTS))
        except ValueError:
            continue
        if mark is not None:
            item.add_marker(mark)


@pytest.fixture
def restore_action_settings() -> Iterator[None]:
    """Put the process-wide action settings back after a test that configures them."""
    saved = Action.settings
    yield
    configure_actions(saved)
