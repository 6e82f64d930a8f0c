"""Waiting for an instant without the kernel's slack.

Linux lets a ``select``, ``poll`` or ``epoll_wait`` with a timeout wake up later than
asked by about 0.1 % of that timeout (at most 100 ms; at least the thread's timer slack,
50 µs by default): an event loop's timer 20 s ahead comes round about 20 ms late, and the
firing process's wait for an armed burst a second ahead ended about 1 ms late. A
wait for an instant is therefore made in two legs: the first stops :data:`LAST_LEG_S`
short of it, and the last, short, wakes on time.
"""

from __future__ import annotations

#: the last leg of a wait for an instant, seconds (its slack is under the timer slack's)
LAST_LEG_S = 0.02


def first_leg(wait_s: float) -> float:
    """How long to wait first, of a wait of ``wait_s`` seconds for an instant: all of it
    when it is short, else all but :data:`LAST_LEG_S` (then wait again for the rest)."""
    return wait_s - LAST_LEG_S if wait_s > 2 * LAST_LEG_S else wait_s
