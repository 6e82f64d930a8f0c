"""Server fixtures shared by the integration modules.

``server`` is one forsun-box process per module, on its own data directory,
started with the module's ``SERVER_ARGS`` (a tuple of extra flags, none by
default). ``start_server`` starts more, each on its own data directory; every
server a module started is stopped at its end and must exit 0. A module that
defines a fixture of the same name uses its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.helpers import Server


@pytest.fixture(scope="module")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(*args: str, name: str = "server") -> Server:
        srv = Server(tmp_path_factory.mktemp(name), *args).start()
        started.append(srv)
        return srv

    yield start
    codes = [srv.stop() for srv in started]  # all of them, even when one fails
    assert codes == [0] * len(started)


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, start_server: Callable[..., Server]) -> Server:
    args: tuple[str, ...] = getattr(request.module, "SERVER_ARGS", ())
    return start_server(*args, name=request.module.__name__.rpartition(".")[2])
