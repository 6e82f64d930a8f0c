"""The v2 routes and ``/metrics``: the handlers of :mod:`.v2` and :mod:`.v2_batch`.

Kept apart from both so that the batch handler, built on v2's base
handler, imports v2 and nothing imports back.
"""

from __future__ import annotations

from typing import Any

from forsun_box.api.http import v2 as http_v2
from forsun_box.api.http import v2_cluster
from forsun_box.api.http.v2_batch import BatchHandler
from forsun_box.api.service import ForsunService
from forsun_box.metrics import Metrics


def routes(
    service: ForsunService, metrics: Metrics, max_body_bytes: int, api_token: str = ""
) -> list[Any]:
    """The v2 routes and ``/metrics``, for tornado's Application."""
    kw = {"ctx": http_v2.V2Context(service, metrics, max_body_bytes, api_token)}
    key = r"/v2/plans/([^/]+)"
    return [
        (r"/v2/plans", http_v2.PlansHandler, kw),
        (r"/v2/plans:batch", BatchHandler, kw),
        (key, http_v2.PlanHandler, kw),
        (key + r"/(pause|resume|fire)", http_v2.PlanOpHandler, kw),
        (key + r"/runs", http_v2.RunsHandler, kw),
        (key + r"/preview", http_v2.PreviewHandler, kw),
        (r"/v2/upcoming", http_v2.UpcomingHandler, kw),
        (r"/v2/cluster", v2_cluster.ClusterHandler, kw),
        (r"/v2/openapi\.json", http_v2.OpenAPIHandler, kw),
        (r"/metrics", http_v2.MetricsHandler, kw),
        (r"/v2/.*", http_v2.V2NotFound, kw),
    ]
