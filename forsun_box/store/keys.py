"""Key ranges shared by the drivers that keep keys sorted (sqlite, redis)."""

from __future__ import annotations

MAX_CODE_POINT = 0x10FFFF


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix``.

    None when there is no such bound (an empty prefix, or one made only of
    U+10FFFF). SQLite compares keys as UTF-8 bytes, which orders them by code
    point as Python does. Surrogates can't be stored (they have no UTF-8 form),
    so an increment that lands on one skips to U+E000.
    """
    head = prefix.rstrip(chr(MAX_CODE_POINT))
    if not head:
        return None
    nxt = ord(head[-1]) + 1
    if 0xD800 <= nxt <= 0xDFFF:
        nxt = 0xE000
    return head[:-1] + chr(nxt)
