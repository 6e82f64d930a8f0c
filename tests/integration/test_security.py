"""Who may talk to forsun-box: bind check, v1 token, Thrift allowlist, connection caps,
secrets masked in the run history. (v2 token: test_http_v2.py; console login and
CSRF: test_console.py; shell_enabled/shell_allow: tests/unit/test_actions.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from forsun_box import logs
from forsun_box.api import security
from forsun_box.api.thrift.server import ThriftServer
from forsun_box.config import Config
from forsun_box.errors import StartupError
from tests.helpers import Server, Sink, call, thrift_client, wait_until


def test_non_loopback_bind_without_token_is_refused() -> None:
    # checked before anything listens: nothing is opened beyond loopback here
    for bind, http in [
        ("0.0.0.0", "127.0.0.1:9002"),
        ("127.0.0.1", "0.0.0.0:9002"),
        ("10.1.2.3", ""),
        ("::", "127.0.0.1:1"),
    ]:
        with pytest.raises(StartupError, match="allow_insecure_bind"):
            security.check_bind(Config(bind_address=bind, http_bind=http))
    security.check_bind(Config(bind_address="0.0.0.0", api_token="t"))
    security.check_bind(Config(bind_address="0.0.0.0", allow_insecure_bind=True))
    security.check_bind(Config(bind_address="127.0.0.1", http_bind="localhost:9002"))
    security.check_bind(Config(bind_address="::1", http_bind=""))


def test_cli_refuses_an_exposed_bind_with_a_clear_message(tmp_path: Path) -> None:
    srv = Server(tmp_path, "--http", "0.0.0.0:0")
    with pytest.raises(RuntimeError, match=r"refusing to listen on HTTP 0\.0\.0\.0:0"):
        srv.start()
    assert srv.proc is not None and srv.proc.returncode == 1


def test_peer_filter_admits_loopback_and_allowed_networks() -> None:
    f = security.PeerFilter(["10.0.0.0/8", "192.168.1.7", "fd00::/8"])
    assert f.admits("127.0.0.1") and f.admits("127.5.6.7") and f.admits("::1")
    assert f.admits("::ffff:127.0.0.1") and f.admits("10.9.9.9") and f.admits("192.168.1.7")
    assert f.admits("::ffff:10.1.1.1") and f.admits("fd12::1")
    assert not f.admits("192.168.1.8") and not f.admits("8.8.8.8") and not f.admits("")
    assert not security.PeerFilter().admits("10.0.0.1")
    with pytest.raises(StartupError):
        Config(thrift_allow=("10.0.0.0/33",))


def test_v1_token_always_required_when_configured_so(tmp_path: Path) -> None:
    srv = Server(tmp_path, "--api-token", "s3cret", "--v1-token-required", "always").start()
    try:
        assert srv.call("GET", "/v1/ping")[0] == 200  # the health probe stays open
        status, body = srv.call("GET", "/v1/info")
        assert (status, body["errcode"]) == (401, security.UNAUTHORIZED)
        status, body = srv.call(
            "PUT",
            "/v1/plan",
            {"key": "x", "seconds": 60, "action": "shell", "params": {"cmd": "true"}},
        )
        assert status == 401 and body["data"] == {}
        assert srv.call("GET", "/v1/keys")[1]["errcode"] == security.UNAUTHORIZED
        assert srv.call("GET", "/v1/keys")[1]["data"] == {}
        # the plan was not created: check with the token
        import urllib.request

        for header, value in [("X-Api-Token", "s3cret"), ("Authorization", "Bearer s3cret")]:
            req = urllib.request.Request(
                f"http://127.0.0.1:{srv.http_port}/v1/keys", headers={header: value}
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.status == 200 and b'"data":[]' in resp.read()
        # and with the token, a create goes through
        req = urllib.request.Request(
            f"http://127.0.0.1:{srv.http_port}/v1/plan",
            method="PUT",
            data=b'{"key": "y", "seconds": 60, "action": "shell", "params": {"cmd": "true"}}',
            headers={"X-Api-Token": "s3cret", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200 and b'"key":"y"' in resp.read()
        req = urllib.request.Request(
            f"http://127.0.0.1:{srv.http_port}/v1/keys", headers={"X-Api-Token": "wrong"}
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        assert info.value.code == 401
    finally:
        assert srv.stop() == 0


def test_v1_token_default_lets_forsun_clients_on_loopback_in(tmp_path: Path) -> None:
    srv = Server(tmp_path, "--api-token", "s3cret").start()  # waits on /v1/ping: no token
    try:
        assert srv.ok("GET", "/v1/keys") == []
        assert call(srv.http_port, "GET", "/v2/plans")[0] == 401  # v2 always wants it
    finally:
        assert srv.stop() == 0


def _closed_at_once(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(3)
        try:
            return s.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def _ping_on(sock: socket.socket) -> bool:
    """A v1 ping over ``sock`` (kept alive), its whole answer read: whether it was 200."""
    sock.settimeout(5)
    try:
        sock.sendall(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            chunk = sock.recv(4096)
            if not chunk:
                return False
            body += chunk
        return head.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _hold_served(port: int, n: int) -> list[socket.socket]:
    """``n`` connections the server has taken in and answered on, or none (closed again)
    while it still counts an earlier one (the readiness probe's, closing)."""
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    if all(_ping_on(s) for s in held):
        return held
    for s in held:
        s.close()
    return []


def test_connection_limits_close_the_extra_connection_only(tmp_path: Path) -> None:
    srv = Server(tmp_path, "--max-http-connections", "3", "--max-thrift-connections", "2").start()
    held: list[socket.socket] = []
    clients = contextlib.ExitStack()
    try:

        def hold() -> bool:
            held[:] = _hold_served(srv.http_port, 3)
            return bool(held)

        assert wait_until(hold, 5)
        # two Thrift connections, each answering: both counted by the server
        for _ in range(2):
            clients.enter_context(thrift_client(srv.thrift_port)).ping()
        assert _closed_at_once(srv.http_port)
        assert _closed_at_once(srv.thrift_port)
        # the held connections still work
        assert _ping_on(held[0])
        for s in held:
            s.close()
        held = []
        clients.close()
        # and once they are gone new ones are served again
        assert wait_until(lambda: _pings(srv), 5)
    finally:
        for s in held:
            s.close()
        clients.close()
        assert srv.stop() == 0


def _pings(srv: Server) -> bool:
    try:
        return srv.call("GET", "/v1/ping", timeout=2)[0] == 200
    except OSError:
        return False


def test_thrift_peer_outside_the_allowlist_is_closed() -> None:
    async def main() -> None:
        server = ThriftServer(SimpleNamespace(), peers=_NoOne())
        port = await server.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(1), 5) == b""
        writer.close()
        assert server.refused == 1
        await server.stop()

    asyncio.run(main())


class _NoOne(security.PeerFilter):
    def admits(self, host: str) -> bool:
        return False


def test_mask_secrets_in_text() -> None:
    m = logs.MASK
    assert (
        logs.mask_secrets("GET http://bob:pw@h:1/x?token=abc&n=1&api_key=z: HTTP 500")
        == f"GET http://bob:{m}@h:1/x?token={m}&n=1&api_key={m}: HTTP 500"
    )
    assert (
        logs.mask_secrets("redis://:hunter2@127.0.0.1:6379/0") == f"redis://:{m}@127.0.0.1:6379/0"
    )
    assert logs.mask_secrets("plain text, no url") == "plain text, no url"
    # a plan key is a name, not a secret: access log lines keep it
    assert logs.mask_secrets("200 GET /v1/plan?key=order-7 (::1)") == (
        "200 GET /v1/plan?key=order-7 (::1)"
    )
    assert logs.mask_secrets("GET /x?access_key=s3&key=k") == f"GET /x?access_key={m}&key=k"


def test_run_history_masks_a_url_password(tmp_path: Path) -> None:
    sink = Sink()
    port = sink.port
    sink.close()  # a closed port: the firing fails and its message quotes the URL
    srv = Server(tmp_path).start()
    try:
        url = f"http://bob:hunter2@127.0.0.1:{port}/x?token=abc"
        srv.ok(
            "PUT",
            "/v1/plan",
            {"key": "leak", "seconds": 1, "count": 1, "action": "http", "params": {"url": url}},
        )

        def runs() -> list[dict[str, object]]:
            _status, body = srv.call("GET", "/v2/plans/leak/runs")
            return body.get("runs", body.get("items", [])) if isinstance(body, dict) else body

        assert wait_until(lambda: bool(runs()), 10)
        text = str(runs())
        assert "127.0.0.1" in text and "hunter2" not in text and "token=abc" not in text, text
        assert "hunter2" not in srv.log()
    finally:
        assert srv.stop() == 0
