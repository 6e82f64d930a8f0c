"""The one-file executable on ``--driver postgres`` as a cluster node: asyncpg and its
compiled protocol travel inside it (tests/servers.py starts the PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_binary import Installed, binary, installed, shell_plan  # noqa: F401
from tests.helpers import call, wait_until

pytest_plugins = ["tests.servers"]


def test_the_executable_serves_and_fires_on_postgres(
    installed: Installed,  # noqa: F811
    postgres_dsn: str,
    tmp_path: Path,
) -> None:
    installed.env.update(
        STORE_DRIVER="postgres", STORE_POSTGRES_DSN=postgres_dsn, CLUSTER_NODE_ID="frozen"
    )
    installed.start()
    out = tmp_path / "fired"
    installed.ok("PUT", "/v1/plan", shell_plan("frozen-plan", 1, out, "hello"))
    assert wait_until(lambda: out.exists() and out.read_text() == "hello\n", 15), installed.log()
    status, view = call(installed.http_port, "GET", "/v2/cluster")
    assert status == 200 and view["mode"] == "cluster" and view["node"] == "frozen"
    assert view["this_node"]["trusted_partitions"] == view["partitions"]
    installed.stop()
