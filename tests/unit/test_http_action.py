"""The http action's client: keep-alive, the http_max_clients bound, digest auth, https,
cancellation and shutdown, against real loopback servers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from forsun_box.actions import Action, ActionFailed, ActionSettings, HttpAction, configure_actions
from forsun_box.errors import RetryLater
from forsun_box.firing.client import FiringProcess, close_shared, shared
from forsun_box.firing.curl import CurlError, Request, header_lines
from forsun_box.plan import Plan
from tests.helpers import wait_until_async
from tests.servers import need_binary

TS = 1_700_000_123


pytestmark = pytest.mark.usefixtures("restore_action_settings")


class _State:
    """What the test server saw."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.connections = 0
        self.running = 0
        self.most_running = 0


class _CountingServer(HTTPServer):
    def initialize(self, *args, state: _State, **kwargs) -> None:  # type: ignore[override]
        self.state = state
        super().initialize(*args, **kwargs)

    def handle_stream(self, stream, address) -> None:
        self.state.connections += 1
        super().handle_stream(stream, address)


class _Record(RequestHandler):
    SUPPORTED_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS")

    def initialize(self, state: _State) -> None:
        self.state = state

    def _handle(self) -> None:
        r = self.request
        self.state.requests.append(
            {"method": r.method, "body": r.body, "headers": dict(r.headers), "path": r.path}
        )
        self.write("fine")

    get = post = put = delete = head = patch = options = _handle  # type: ignore[assignment]


class _Slow(RequestHandler):
    def initialize(self, state: _State) -> None:
        self.state = state

    async def get(self) -> None:
        state = self.state
        state.running += 1
        state.most_running = max(state.most_running, state.running)
        try:
            await asyncio.sleep(float(self.get_query_argument("s", "0.3")))  # a slow server
        finally:
            state.running -= 1
        self.write("slow")


class _Broken(RequestHandler):
    def get(self) -> None:
        self.set_status(502)
        self.write("upstream down " + "x" * 500)


class _Redirect(RequestHandler):
    def get(self) -> None:
        self.redirect("/ok")


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class _Digest(RequestHandler):
    """RFC 7616 digest (MD5, qop=auth) for user alice / password s3cret."""

    REALM = "forsun"
    NONCE = "n0nce"

    def get(self) -> None:
        header = self.request.headers.get("Authorization", "")
        if not header.startswith("Digest "):
            self.set_status(401)
            self.set_header(
                "WWW-Authenticate",
                f'Digest realm="{self.REALM}", nonce="{self.NONCE}", qop="auth", algorithm=MD5',
            )
            return
        fields = {}
        for part in header[len("Digest ") :].split(","):
            name, _, value = part.strip().partition("=")
            fields[name] = value.strip('"')
        ha1 = _md5(f"alice:{self.REALM}:s3cret")
        ha2 = _md5(f"GET:{fields['uri']}")
        expected = _md5(
            f"{ha1}:{fields['nonce']}:{fields['nc']}:{fields['cnonce']}:{fields['qop']}:{ha2}"
        )
        if fields.get("username") != "alice" or fields.get("response") != expected:
            self.set_status(403)
            return
        self.write("welcome")


async def _serve(
    state: _State, ssl_options: ssl.SSLContext | None = None
) -> tuple[HTTPServer, int]:
    app = Application(
        [
            (r"/ok", _Record, {"state": state}),
            (r"/slow", _Slow, {"state": state}),
            (r"/broken", _Broken),
            (r"/redirect", _Redirect),
            (r"/digest", _Digest),
        ]
    )
    sockets = bind_sockets(0, "127.0.0.1")
    server = _CountingServer(app, state=state, ssl_options=ssl_options)
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


def _action(params: dict[str, str]) -> HttpAction:
    return HttpAction(TS, Plan(key="k1", kind="at", action="http", params=params), "http", params)


def run_with_server(body, ssl_options: ssl.SSLContext | None = None, **settings):
    """Run ``body(port, state)`` (a coroutine function) next to a fresh server."""
    configure_actions(ActionSettings(**settings))

    async def main():
        state = _State()
        server, port = await _serve(state, ssl_options)
        try:
            return await body(port, state)
        finally:
            server.stop()
            close_shared()

    return asyncio.run(main())


async def _fire(params: dict[str, str]) -> Exception | None:
    try:
        await _action(params).execute()
    except Exception as e:
        return e
    return None


# -- wire format --------------------------------------------------------------------


def test_keep_alive_reuses_one_connection():
    async def body(port, state):
        for _ in range(5):
            assert await _fire({"url": f"http://127.0.0.1:{port}/ok"}) is None
        return state

    state = run_with_server(body)
    assert len(state.requests) == 5
    assert state.connections == 1


def test_bodies_and_content_types():
    async def body(port, state):
        url = f"http://127.0.0.1:{port}/ok"
        for params in (
            {"method": "post", "body": "a=1&b=2"},
            {"method": "put", "body": "x"},
            {"method": "get", "body": "on-a-get"},
            {"method": "post", "body": "{}", "header_content-type": "application/json"},
            {"method": "options"},
        ):
            assert await _fire({"url": url, **params}) is None
        return state.requests

    post, put, get, json_post, options = run_with_server(body)
    assert post["body"] == b"a=1&b=2"
    # as the previous client sent them: a POST body is a form unless told otherwise...
    assert post["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    # ... other methods carry no Content-Type of their own
    assert put["body"] == b"x" and "Content-Type" not in put["headers"]
    assert get["method"] == "GET" and get["body"] == b"on-a-get"
    assert json_post["headers"]["Content-Type"] == "application/json"
    assert options["method"] == "OPTIONS"
    for seen in (post, put, get, json_post, options):
        assert seen["headers"]["X-Forsun-Timestamp"] == str(TS)
        assert "Expect" not in seen["headers"]


def test_header_param_user_agent_wins_and_names_are_normalized():
    async def body(port, state):
        params = {
            "url": f"http://127.0.0.1:{port}/ok",
            "header_user-agent": "from-header",
            "user_agent": "from-param",
            "header_x-request-id": "r1",
            "header_X-Empty": "",
        }
        assert await _fire(params) is None
        return state.requests[0]["headers"]

    headers = run_with_server(body)
    assert headers["User-Agent"] == "from-header"
    assert headers["X-Request-Id"] == "r1"
    assert headers["X-Empty"] == ""


def test_basic_auth_with_non_ascii_credentials():
    async def body(port, state):
        params = {
            "url": f"http://127.0.0.1:{port}/ok",
            "auth_username": "élise",
            "auth_password": "pässword",
        }
        assert await _fire(params) is None
        return state.requests[0]["headers"]["Authorization"]

    auth = run_with_server(body)
    assert auth == "Basic " + base64.b64encode("élise:pässword".encode()).decode()


def test_digest_auth():
    async def body(port, _state):
        url = f"http://127.0.0.1:{port}/digest"
        good = {"url": url, "auth_username": "alice", "auth_password": "s3cret"}
        ok = await _fire({**good, "auth_mode": "digest"})
        wrong = await _fire({**good, "auth_password": "nope", "auth_mode": "DIGEST"})
        basic = await _fire({**good, "auth_mode": "basic"})
        return ok, wrong, basic

    ok, wrong, basic = run_with_server(body)
    assert ok is None
    assert isinstance(wrong, ActionFailed) and "HTTP 403" in str(wrong)
    assert isinstance(basic, ActionFailed) and "HTTP 401" in str(basic)


def test_redirect_followed():
    async def body(port, state):
        assert await _fire({"url": f"http://127.0.0.1:{port}/redirect"}) is None
        return state.requests

    (seen,) = run_with_server(body)
    assert seen["path"] == "/ok"


def test_5xx_message_carries_the_start_of_the_body():
    async def body(port, _state):
        return await _fire({"url": f"http://127.0.0.1:{port}/broken"})

    error = run_with_server(body)
    assert isinstance(error, RetryLater)
    text = str(error)
    assert text.startswith("GET http://127.0.0.1:") and ": HTTP 502: upstream down x" in text
    assert len(text) < 300  # 200 bytes of body at most


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"header_X-Bad": "a\r\nX-Injected: 1"}, "invalid header"),
        ({"header_X:Bad": "v"}, "invalid header"),
        ({"url": "http://127.0.0.1:1/a b"}, "unsupported url"),
        ({"request_timeout": "-1"}, "request_timeout"),
    ],
)
def test_bad_params_are_refused_before_sending(params, message):
    action = _action({"url": "http://127.0.0.1:1/", **params})
    with pytest.raises(ActionFailed, match=message):
        action.build_request()


def test_header_lines():
    request = Request("http://h/", method="PUT", headers=[("A", "1"), ("B", "")], body=b"x")
    assert header_lines(request) == [b"A: 1", b"B;", b"Content-Type:", b"Expect:"]
    post = Request("http://h/", method="POST", headers=[("Expect", "100-continue")], body=b"")
    assert header_lines(post) == [b"Expect: 100-continue"]


# -- https ----------------------------------------------------------------------------


def test_https_is_spoken_and_certificates_are_checked(tmp_path: Path):
    openssl = need_binary("openssl", "openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def body(port, _state):
        return await _fire({"url": f"https://127.0.0.1:{port}/ok"})

    error = run_with_server(body, ssl_options=context)
    # the TLS handshake took place and the self-signed certificate was refused
    assert isinstance(error, ActionFailed) and not isinstance(error, RetryLater)
    assert "HTTP 599" in str(error) and "certificate" in str(error).lower()


# -- the http_max_clients bound ------------------------------------------------------


def test_max_clients_bounds_requests_and_connections():
    async def body(port, state):
        url = f"http://127.0.0.1:{port}/slow?s=0.2"
        errors = await asyncio.gather(*(_fire({"url": url}) for _ in range(6)))
        return errors, state

    started = time.monotonic()
    errors, state = run_with_server(body, http_max_clients=2)
    assert errors == [None] * 6
    assert state.most_running == 2
    assert state.connections == 2
    assert time.monotonic() - started >= 0.55  # three rounds of two


def test_waiting_for_a_free_slot_times_out():
    async def body(port, state):
        slow = asyncio.ensure_future(_fire({"url": f"http://127.0.0.1:{port}/slow?s=1"}))
        assert await wait_until_async(lambda: state.running == 1, 5)  # the one slot is taken
        queued = await _fire({"url": f"http://127.0.0.1:{port}/ok", "request_timeout": "0.2"})
        return queued, await slow

    queued, slow = run_with_server(body, http_max_clients=1)
    assert slow is None
    assert isinstance(queued, ActionFailed) and "free connection" in str(queued)


def test_cancelled_request_gives_its_slot_back():
    async def body(port, state):
        slow = asyncio.ensure_future(_fire({"url": f"http://127.0.0.1:{port}/slow?s=5"}))
        assert await wait_until_async(lambda: state.running == 1, 5)
        waiting = asyncio.ensure_future(_fire({"url": f"http://127.0.0.1:{port}/ok"}))
        await asyncio.sleep(0.1)  # a window for a wrong answer: the waiter must not finish in it
        assert not waiting.done()  # the one slot is taken
        slow.cancel()
        started = time.monotonic()
        error = await asyncio.wait_for(waiting, 4)
        return error, time.monotonic() - started, shared(Action.settings)

    error, waited, client = run_with_server(body, http_max_clients=1)
    assert error is None and waited < 3  # (not after the slow one's 5 s)
    assert client.closed  # closed with the loop's server


def test_close_fails_requests_in_flight():
    async def body(port, state):
        slow = asyncio.ensure_future(_fire({"url": f"http://127.0.0.1:{port}/slow?s=5"}))
        assert await wait_until_async(lambda: state.running == 1, 5)  # in flight
        close_shared()
        return await asyncio.wait_for(slow, 2)

    error = run_with_server(body)
    assert isinstance(error, ActionFailed) and "closed" in str(error)


def test_one_client_per_loop_rebuilt_when_max_clients_changes():
    async def main():
        first = shared(ActionSettings(http_max_clients=4))
        assert shared(ActionSettings(http_max_clients=4)) is first
        second = shared(ActionSettings(http_max_clients=8))
        assert second is not first and first.closed and second.max_clients == 8
        close_shared()
        assert second.closed
        return second

    a = asyncio.run(main())
    b = asyncio.run(main())
    assert a is not b


def test_client_directly_reports_connection_errors():
    async def main():
        client = FiringProcess(asyncio.get_running_loop(), (2, 2, 2))
        try:
            with pytest.raises(CurlError) as info:
                await client.fetch(Request("http://127.0.0.1:1/", connect_timeout=1))
            return info.value
        finally:
            client.close()

    error = asyncio.run(main())
    assert error.code != 0 and "127.0.0.1" in str(error)


# -- firing ids and prepared requests ------------------------------------------------


def test_every_request_carries_the_firing_id():
    async def body(port, state):
        params = {"url": f"http://127.0.0.1:{port}/ok"}
        action = _action(params)
        action.due_ms = TS * 1000 + 250
        await action.execute()
        odd = Plan(key="ordre é\n1", kind="at", action="http", params=params)
        await HttpAction(TS, odd, "http", params).execute()
        return [r["headers"] for r in state.requests]

    first, odd = run_with_server(body)
    assert first["X-Forsun-Firing-Id"] == f"0:{TS * 1000 + 250}:k1"
    assert first["X-Forsun-Timestamp"] == str(TS)
    # not printable ASCII: percent-encoded, so the header stays one clean line
    assert odd["X-Forsun-Firing-Id"] == f"0:{TS * 1000}:ordre%20%C3%A9%0A1"


def test_prepared_request_is_sent_as_built_and_reports_through_done():
    async def body(port, state):
        loop = asyncio.get_running_loop()
        outcomes: list[asyncio.Future] = []
        for path in ("ok", "broken", "ok"):
            params = {"url": f"http://127.0.0.1:{port}/{path}", "header_X-Seq": path}
            ready = _action(params).prepare()
            fut = loop.create_future()
            ready.start(fut.set_result)
            assert not fut.done()  # done comes later, from the loop
            outcomes.append(fut)
        results = await asyncio.wait_for(asyncio.gather(*outcomes), 5)
        return results, state

    results, state = run_with_server(body)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], RetryLater) and "HTTP 502" in str(results[1])
    sent = [r for r in state.requests]
    assert [r["headers"]["X-Seq"] for r in sent] == ["ok", "ok"]
    assert all(r["headers"]["X-Forsun-Firing-Id"] == f"0:{TS * 1000}:k1" for r in sent)


def test_submitted_requests_wait_for_a_slot_in_order_and_time_out_waiting():
    async def body(port, state):
        loop = asyncio.get_running_loop()
        client = shared(Action.settings)
        ends: list[tuple[str, object]] = []
        done = loop.create_future()

        def on_done(name: str):
            def record(response, error):
                ends.append((name, error if error is not None else response.code))
                if len(ends) == 3:
                    done.set_result(None)

            return record

        slow = Request(f"http://127.0.0.1:{port}/slow?s=0.4")
        client.submit(slow, on_done("slow"))
        client.submit(Request(f"http://127.0.0.1:{port}/ok"), on_done("next"))
        short = Request(f"http://127.0.0.1:{port}/ok", request_timeout=0.1)
        client.submit(short, on_done("short"))
        await asyncio.wait_for(done, 5)
        return ends

    ends = run_with_server(body, http_max_clients=1)
    assert [name for name, _ in ends[:2]] == ["slow", "next"]
    assert ends[0][1] == 200 and ends[1][1] == 200
    name, error = ends[2]
    assert name == "short" and isinstance(error, CurlError) and "free connection" in str(error)


def test_close_fails_submitted_requests_queued_and_in_flight():
    async def body(port, state):
        loop = asyncio.get_running_loop()
        client = shared(Action.settings)
        errors: list[object] = []
        done = loop.create_future()

        def record(response, error):
            errors.append(error)
            if len(errors) == 2:
                done.set_result(None)

        prepared = client.prepare(Request(f"http://127.0.0.1:{port}/ok"))
        client.submit(Request(f"http://127.0.0.1:{port}/slow?s=5"), record)
        client.submit(Request(f"http://127.0.0.1:{port}/ok"), record, prepared)
        assert await wait_until_async(lambda: state.running == 1, 5)  # one in flight, one queued
        close_shared()
        await asyncio.wait_for(done, 2)
        return errors

    errors = run_with_server(body, http_max_clients=1)
    assert len(errors) == 2
    assert all(isinstance(e, CurlError) and "closed" in str(e) for e in errors)
