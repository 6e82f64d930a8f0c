"""A test extension: the ``probe`` action only measures how late it was called.

Lateness = the wall clock when ``execute`` runs minus the plan's due instant
(``plan.next_time``, ms; the engine moves a plan on only after its firing).
At shutdown (``uninit``) the samples' summary is written as JSON to the file
named by ``FORSUN_BOX_PROBE_OUT``.
"""

from __future__ import annotations

import json
import os
import time

from forsun_box.actions.base import Action
from forsun_box.extensions import Extension

SAMPLES: list[int] = []


class ProbeAction(Action):
    """Records the lateness of this firing; does nothing else."""

    async def execute(self, *args: object, **kwargs: object) -> None:
        SAMPLES.append(time.time_ns() // 1_000_000 - int(self.plan.next_time))


class ProbeExtension(Extension):
    """Registers ``probe`` and writes the lateness summary at shutdown."""

    name = "loadprobe"

    def register(self) -> None:
        self.register_action("probe", ProbeAction)

    def uninit(self) -> None:
        out = os.environ.get("FORSUN_BOX_PROBE_OUT")
        if not out:
            return
        samples = sorted(SAMPLES)

        def pct(p: float) -> int:
            return samples[min(len(samples) - 1, int(p * len(samples)))] if samples else 0

        with open(out, "w") as f:
            json.dump(
                {
                    "count": len(samples),
                    "p50": pct(0.5),
                    "p99": pct(0.99),
                    "max": samples[-1] if samples else 0,
                },
                f,
            )
