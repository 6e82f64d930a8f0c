"""The run record: one attempt of one firing, as the run history keeps it.

Its own module so that every layer can name it (the APIs may not import the
stores, which persist it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Run:
    """One attempt of one firing, for the run history."""

    key: str
    due_ms: int  # the instant the firing was due
    started_ms: int
    duration_ms: int
    attempt: int  # 1 for the first attempt, 2 for the first retry, ...
    result: int  # 1 ok, -1 failed, 2 failed and will be retried
    error: str = ""
    action: str = ""
    manual: bool = False  # run by "fire now", outside the schedule
    node_id: str = ""  # the cluster node that fired it; "" on a single node
