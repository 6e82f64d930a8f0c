"""What the engine fires through: the executor protocol.

The dispatcher (:class:`forsun_box.dispatcher.Dispatcher`) is the executor
of a running service; :class:`CoroutineExecutor` makes one of a coroutine
function (tests, benches, an embedding program).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from forsun_box.plan import Plan


class Executor(Protocol):
    """Runs the first attempt of a firing and says how it went (1 ok, -1 failed)."""

    #: whether :meth:`prepare` does anything (the engine then hands it the
    #: firings about to come due)
    prepares: bool

    async def run(self, plan: Plan, due_ms: int, manual: bool = False) -> int:
        """Run the attempt; its status. ``manual``: a "fire now", outside the
        schedule (its run records say so)."""
        ...

    def start_firing(self, plan: Plan, due_ms: int) -> int | Awaitable[int]:
        """Start the attempt: its status when it finished right here (no task needed
        for this firing), else an awaitable of it, awaited exactly once."""
        ...

    def prepare(self, firings: Iterable[tuple[Plan, int]]) -> int:
        """Make ready ahead the firings ``(plan, due_ms)`` about to come due; how many
        were. A firing prepared for another version or instant of its plan is not used."""
        ...

    def disarm(self, keys: Iterable[str]) -> list[tuple[str, int, int, Awaitable[bool]]]:
        """Take back the arming of the prepared firings of ``keys``: for each that was
        armed, its key, version, due time and whether it went out already (see
        :meth:`forsun_box.dispatcher.Dispatcher.disarm`)."""
        ...

    def disarm_all(self) -> None:
        """No prepared firing starts by itself any more (the engine stops)."""
        ...

    def is_armed(self, plan: Plan, due_ms: int) -> bool:
        """Whether the firing of ``plan`` due at ``due_ms`` is armed (it goes out at its
        instant by itself; the engine then only takes up its end)."""
        ...

    def went_out_ended(self, key: str) -> bool:
        """Whether the end of ``key``'s armed firing, which went out, is known already
        (True when there is no such firing)."""
        ...

    def went_out_progress(self, key: str) -> int:
        """A count that grows while ends of armed firings that went out as ``key``'s did
        are held where they went out from (they come later)."""
        ...


class CoroutineExecutor:
    """An :class:`Executor` made of ``fn(plan, due_ms) -> awaitable status``."""

    prepares = False

    def __init__(self, fn: Callable[[Plan, int], Awaitable[int]]) -> None:
        self._fn = fn

    async def run(self, plan: Plan, due_ms: int, manual: bool = False) -> int:
        return await self._fn(plan, due_ms)

    def start_firing(self, plan: Plan, due_ms: int) -> Awaitable[int]:
        return self._fn(plan, due_ms)

    def prepare(self, firings: Iterable[tuple[Plan, int]]) -> int:
        return 0

    def disarm(self, keys: Iterable[str]) -> list[tuple[str, int, int, Awaitable[bool]]]:
        return []

    def disarm_all(self) -> None:
        pass

    def is_armed(self, plan: Plan, due_ms: int) -> bool:
        return False

    def went_out_ended(self, key: str) -> bool:
        return True

    def went_out_progress(self, key: str) -> int:
        return 0
