"""Server fixtures shared by the integration modules.

``server`` is one forsun-box process per module, on its own data directory,
started with the module's ``SERVER_ARGS`` (a tuple of extra flags, none by
default) and ``SERVER_ENV`` (extra environment, none by default).
``start_server(*args, name=..., env=...)`` starts more, each on its own data
directory; every server a module started is stopped at its end and must exit
0. A module that needs a server prepared (plans seeded, say) or under another
name defines a fixture of its own on top of ``start_server``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.helpers import Server


@pytest.fixture(scope="module")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(*args: str, name: str = "server", env: dict[str, str] | None = None) -> Server:
        srv = Server(tmp_path_factory.mktemp(name), *args, env=env).start()
        started.append(srv)
        return srv

    yield start
    codes = [srv.stop() for srv in started]  # all of them, even when one fails
    assert codes == [0] * len(started)


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, start_server: Callable[..., Server]) -> Server:
    args: tuple[str, ...] = getattr(request.module, "SERVER_ARGS", ())
    env: dict[str, str] | None = getattr(request.module, "SERVER_ENV", None)
    return start_server(*args, name=request.module.__name__.rpartition(".")[2], env=env)
