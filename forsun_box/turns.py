"""How long one piece of the engine's work may hold the event loop.

A burst's work -- firing slices, preparations, the ends of requests, their records --
runs in callbacks on the service's one event loop, and an API request needs several
turns of that loop (read, create, commit, answer), each behind whatever callbacks are
ready ahead of it. So every such piece of work stops once it has held the loop for
:data:`TURN_S` and goes on in the next turn: a create waits a few milliseconds per turn
instead of a whole slice's worth.

The budget is real time, not the engine's clock (a :class:`~forsun_box.clock.Clock`
that may be fake): it bounds only where work is split, never what is done.
"""

from __future__ import annotations

import time

#: longest a piece of work holds the loop before it yields, seconds
TURN_S = 0.002

#: what a turn is measured on (tests replace it)
clock = time.perf_counter


class Turn:
    """A budget of :data:`TURN_S` from now."""

    __slots__ = ("_ends",)

    def __init__(self) -> None:
        self._ends = clock() + TURN_S

    def over(self) -> bool:
        """True once the budget is spent."""
        return clock() >= self._ends
