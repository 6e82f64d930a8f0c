"""An example forsun-box extension: the ``count`` action.

Copy this file into the extensions folder (``<data_dir>/extensions``, or
``extensions/`` beside the executable) and restart: plans may then use
``"action": "count"``. Each firing

- adds one to the ``example_count_fired`` counter shown by ``info``;
- when the plan's params name a ``file``, appends the line
  ``<ts> <key> <message>`` to it. Writing a file blocks, so it runs in a
  small thread pool of the extension's own, never on the event loop.

Params: ``file`` (optional path), ``message`` (optional text).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from forsun_box.actions.base import Action, ActionFailed
from forsun_box.extensions import Extension

log = logging.getLogger("forsun_box.extensions.example")

COUNTER = "example_count_fired"


class CountAction(Action):
    """Counts the firing and optionally appends a line to a file."""

    #: set by the extension's init(), shut down by its uninit()
    executor: ThreadPoolExecutor | None = None
    #: the service's counters (forsun's ``forsun_status``), set by init()
    status: object = None
    fired = 0

    async def execute(self, *args: object, **kwargs: object) -> None:
        CountAction.fired += 1
        if CountAction.status is not None:
            setattr(CountAction.status, COUNTER, CountAction.fired)
        path = self.params.get("file", "")
        if not path:
            return
        line = f"{self.ts} {self.plan.key} {self.params.get('message', '')}".rstrip() + "\n"
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(CountAction.executor, _append, path, line)
        except OSError as e:
            # A clean one-line error for the run history; the retry policy applies.
            raise ActionFailed(f"cannot append to {path}: {e.strerror}") from None


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)


class ExampleExtension(Extension):
    """Registers the ``count`` action."""

    name = "example"

    def register(self) -> None:
        self.register_action("count", CountAction)

    def init(self) -> None:
        from forsun.status import forsun_status  # forsun's import path works too

        CountAction.executor = ThreadPoolExecutor(2, thread_name_prefix="example-count")
        CountAction.status = forsun_status
        log.info("example extension ready")

    def uninit(self) -> None:
        if CountAction.executor is not None:
            CountAction.executor.shutdown(wait=True)
            CountAction.executor = None
