"""What the service and its firing process say to each other over their socket.

A frame is four bytes of length (little-endian) and a pickled list of messages, each a
tuple whose first item is its kind. The service sends:

- ``(PREPARE_HTTP, id, request)``: a request (:data:`forsun_box.firing.curl.Wire`) to
  set up ahead;
- ``(PREPARE_SHELL, id, (argv, env, timeout_s))``: a command (``/bin/sh`` with ``argv``,
  the service's environment with ``env`` on top, killed after ``timeout_s``; 0: never);
- ``(ENVIRONMENT, env)``: the service's environment, sent again whenever it changed;
- ``(START, id)``: send or spawn what ``id`` prepared, now;
- ``(ARM, id, at_ms)``: start what ``id`` prepared by itself at the wall-clock instant
  ``at_ms`` (unix ms), unless a START, DROP, CANCEL or DISARM of it comes first;
- ``(DISARM, id)``: do not start it by itself after all (it stays prepared, for a START
  or a DROP);
- ``(DROP, id)``: it will not be started;
- ``(CANCEL, id)``: stop it (a transfer is dropped, a command's process group gets
  SIGTERM, SIGKILL two seconds later); no end is reported for it.

The process answers every DISARM with ``(id, started)``: ``started`` is true when the
instant came first and it was started (its end follows as for any other). The end of an
id its ARM started has two more items: when it was started and when it ended (unix ms).
Those ends are held while requests or commands still run or wait there (a burst's come
after it, together), at most a second; meanwhile :data:`PROGRESS` says that more ended.

It answers, once for every started id, with its end:

- http: ``(id, code, body, 0)`` for an answer (the body's first bytes), or
  ``(id, 0, message, curl_code)`` when there was none;
- shell: ``(id, exit_status, output, state)``, ``state`` one of :data:`EXITED`,
  :data:`TIMED_OUT`, :data:`NOT_STARTED` (``output`` then says why); ``output`` is the end
  of its stderr, else of its stdout.
"""

from __future__ import annotations

import pickle
from typing import Any

PREPARE_HTTP = 1
PREPARE_SHELL = 2
ENVIRONMENT = 3
START = 4
DROP = 5
CANCEL = 6
ARM = 7
DISARM = 8

#: (the process's) more of what arms started ended: their ends are held, they follow
PROGRESS = (0,)

EXITED = 0
TIMED_OUT = 1
NOT_STARTED = 2
#: (the service's own) the process ended before the command's end was known
LOST = 3

_LENGTH = 4


def frame(messages: list[Any]) -> bytes:
    """One frame holding ``messages``."""
    data = pickle.dumps(messages, pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(_LENGTH, "little") + data


def unframe(buffer: bytearray) -> list[Any]:
    """The messages of every whole frame at the start of ``buffer`` (removed from it)."""
    messages: list[Any] = []
    start = 0
    end = len(buffer)
    with memoryview(buffer) as view:
        while end - start >= _LENGTH:
            size = int.from_bytes(view[start : start + _LENGTH], "little")
            if end - start - _LENGTH < size:
                break
            body = start + _LENGTH
            messages.extend(pickle.loads(view[body : body + size]))
            start = body + size
    if start:
        del buffer[:start]
    return messages
