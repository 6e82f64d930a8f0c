"""Fixtures shared by test modules (each module opts in by name)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from forsun_box.actions import Action, configure_actions


@pytest.fixture
def restore_action_settings() -> Iterator[None]:
    """Put the process-wide action settings back after a test that configures them."""
    saved = Action.settings
    yield
    configure_actions(saved)
