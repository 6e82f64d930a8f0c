"""The named values that travel on the wire and sit in the stores, each defined once.

Members are ints and strs (``IntEnum`` / ``StrEnum``): they compare, hash,
encode (JSON, Thrift, SQLite, Redis) and print exactly as the plain values
they replace, so what a client or a database sees is unchanged.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Kind(StrEnum):
    """How a plan's firings are computed (see :mod:`forsun_box.schedule`)."""

    DELAY = "delay"  # forsun's timeout mode: every interval, count times
    CALENDAR = "calendar"  # forsun's six fields, -1 = any
    CRON = "cron"  # a cron expression
    AT = "at"  # one absolute instant


class _Labelled(IntEnum):
    @property
    def label(self) -> str:
        """The name the v2 API, the console, the CLI and the metrics show."""
        return self.name.lower()

    @classmethod
    def label_of(cls, value: int) -> str:
        """The label of a stored value; an unknown one reads as failed."""
        try:
            return cls(value).label
        except ValueError:
            return "failed"


class PlanStatus(_Labelled):
    """A plan's ``status``: the result of its last firing (forsun's values)."""

    PENDING = 0  # not fired yet
    OK = 1
    FAILED = -1


class RunResult(_Labelled):
    """A run record's ``result``: how one attempt of one firing ended."""

    OK = 1
    FAILED = -1
    RETRYING = 2  # failed, and will be retried


class Misfire(StrEnum):
    """What to do with occurrences missed while the service was down (or late).

    As the server's ``--catchup`` policy, one of the three named; as a plan's
    own policy, also ``SERVER`` (empty): follow the server's.
    """

    SERVER = ""
    SKIP = "skip"
    FIRE_ONCE = "fire_once"
    FIRE_ALL = "fire_all"


#: the server's catch-up policies (``--catchup``), in the order the help lists them
CATCHUP_POLICIES: tuple[Misfire, ...] = (Misfire.FIRE_ONCE, Misfire.FIRE_ALL, Misfire.SKIP)
