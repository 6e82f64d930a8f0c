"""forsun's Thrift API against a real forsun-box process, through the client
generated from the IDL (TSocket + TBufferedTransport + TBinaryProtocol), as a
user of forsun would connect."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from thrift.protocol import TBinaryProtocol
from thrift.Thrift import TApplicationException, TMessageType
from thrift.transport import TTransport

from forsun_box.thrift.forsun import Forsun
from forsun_box.thrift.forsun.ttypes import ForsunPlan, ForsunPlanError
from tests.helpers import Server, Sink, ThriftTarget, thrift_client, wait_until

NO = None  # an argument left out: the server applies the IDL default


connect = thrift_client


@pytest.fixture
def client(server: Server) -> Iterator[Forsun.Client]:
    with connect(server.thrift_port) as c:
        yield c


def delay(
    c: Forsun.Client,
    key: str,
    second: int = 3600,
    count: int | None = 1,
    action: str | None = "shell",
    params: dict[str, str] | None = None,
) -> ForsunPlan:
    return c.createTimeout(
        key, second, 0, 0, 0, 0, 0, count, action, {"cmd": "true"} if params is None else params
    )


def raw_message(name: str, args: object, seqid: int = 1) -> bytes:
    buf = TTransport.TMemoryBuffer()
    proto = TBinaryProtocol.TBinaryProtocol(buf)
    proto.writeMessageBegin(name, TMessageType.CALL, seqid)
    args.write(proto)  # type: ignore[attr-defined]
    proto.writeMessageEnd()
    return buf.getvalue()


def closed_by_server(sock: socket.socket, timeout: float = 5) -> bool:
    """True when the server closes the connection (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# ---------------------------------------------------------------- every method


def test_ping(client: Forsun.Client) -> None:
    assert client.ping() == 0


def test_create_timeout_applies_idl_defaults(client: Forsun.Client) -> None:
    before = int(time.time())
    plan = client.createTimeout("t-defaults", 30, NO, NO, NO, NO, NO, NO, NO, NO)
    assert isinstance(plan, ForsunPlan)
    assert plan.key == "t-defaults" and plan.is_time_out is True
    assert plan.second == 30
    assert plan.count == 1  # the IDL's default for createTimeout
    assert plan.action == "shell" and plan.params == {}
    assert before + 30 <= plan.next_time <= int(time.time()) + 30
    assert (plan.status, plan.current_count, plan.last_timeout) == (0, 0, 0)


def test_create_timeout_sums_fields_and_keeps_params(client: Forsun.Client) -> None:
    before = int(time.time())
    plan = client.createTimeout("t-sum", 5, 1, 1, 0, 0, 0, 3, "shell", {"cmd": "echo a;b"})
    assert plan.count == 3 and plan.params == {"cmd": "echo a;b"}
    assert before + 3665 <= plan.next_time <= int(time.time()) + 3665


def test_create_calendar_and_get(client: Forsun.Client) -> None:
    plan = client.create(
        "t-daily", 0, 32, 16, NO, NO, NO, "http", {"url": "http://127.0.0.1:9/?a=1&b=2"}
    )
    assert plan.is_time_out is False
    assert (plan.second, plan.minute, plan.hour, plan.day, plan.month, plan.week) == (
        0,
        32,
        16,
        -1,
        -1,
        -1,
    )
    assert plan.count == 0
    lt = time.localtime(plan.next_time)
    assert (lt.tm_hour, lt.tm_min, lt.tm_sec) == (16, 32, 0)
    assert client.get("t-daily") == plan


def test_create_replaces_same_key(client: Forsun.Client) -> None:
    delay(client, "t-replace", second=100)
    plan = delay(client, "t-replace", second=200, params={"cmd": "ls"})
    got = client.get("t-replace")
    assert got == plan and got.second == 200 and got.params == {"cmd": "ls"}


def test_empty_key_gets_generated(client: Forsun.Client) -> None:
    plan = delay(client, "")
    assert plan.key
    assert client.get(plan.key).key == plan.key


def test_remove_returns_plan_and_forgets_it(client: Forsun.Client) -> None:
    created = delay(client, "t-remove")
    assert client.remove("t-remove") == created
    with pytest.raises(ForsunPlanError) as e:
        client.get("t-remove")
    assert e.value.code == 1003


def test_get_keys_by_prefix(client: Forsun.Client) -> None:
    for k in ("pfx-a", "pfx-b", "other-pfx"):
        delay(client, k)
    assert client.getKeys("pfx-") == ["pfx-a", "pfx-b"]
    assert {"pfx-a", "pfx-b", "other-pfx"} <= set(client.getKeys(""))


def test_get_time_lists_plans_firing_at_that_second(client: Forsun.Client) -> None:
    plan = delay(client, "t-at", second=7200)
    keys = [p.key for p in client.getTime(plan.next_time)]
    assert "t-at" in keys
    assert "t-at" not in [p.key for p in client.getTime(plan.next_time + 1)]


def test_get_current_lists_plans_of_the_current_second(client: Forsun.Client) -> None:
    now = int(time.time())
    plans = client.getCurrent()
    later = int(time.time())
    assert isinstance(plans, list)
    assert all(isinstance(p, ForsunPlan) and now <= p.next_time <= later + 2 for p in plans)
    # timestamp 0 means "now", like HTTP's /v1/time
    now = int(time.time())
    plans = client.getTime(0)
    later = int(time.time())
    assert all(now <= p.next_time <= later + 2 for p in plans)


def test_forsun_call_is_accepted(client: Forsun.Client) -> None:
    assert client.forsun_call("k", int(time.time()), {"a": "b"}) is None
    assert client.ping() == 0


def test_info_reports_status_and_thrift_counters(server: Server, client: Forsun.Client) -> None:
    info = client.info()
    for name in (
        "python_version",
        "forsun_version",
        "start_time",
        "current_store",
        "actions",
        "bind_port",
        "http_bind_port",
        "connecting_count",
        "connected_count",
        "requesting_count",
        "requested_count",
        "requested_error_count",
    ):
        assert name in info, name
    assert all(isinstance(v, str) for v in info.values())
    assert info["bind_port"] == f"127.0.0.1:{server.thrift_port}"
    assert "thrift" in info["actions"].split(";")
    assert int(info["connecting_count"]) >= 1
    with pytest.raises(ForsunPlanError):
        client.get("no-such-plan-for-info")
    after = client.info()
    assert int(after["requested_count"]) >= int(info["requested_count"]) + 2
    assert int(after["requested_error_count"]) == int(info["requested_error_count"]) + 1


def test_old_non_strict_header_is_understood(server: Server) -> None:
    with connect(server.thrift_port, strict=False) as c:
        assert c.ping() == 0
        assert delay(c, "t-nonstrict").key == "t-nonstrict"


# ---------------------------------------------------------------- every error


def error_code(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(ForsunPlanError) as e:
        fn(*args)
    assert e.value.message
    return e.value.code


def test_error_codes(client: Forsun.Client) -> None:
    # 1002: a zero interval, and a fixed instant of this year already past
    assert error_code(client.createTimeout, "e", 0, 0, 0, 0, 0, 0, 1, "shell", {}) == 1002
    past = time.localtime(time.time() - 86400 * 2)
    if past.tm_year == time.localtime().tm_year:
        assert (
            error_code(
                client.create,
                "e",
                past.tm_sec,
                past.tm_min,
                past.tm_hour,
                past.tm_mday,
                past.tm_mon,
                -1,
                "shell",
                {"cmd": "true"},
            )
            == 1002
        )
    assert error_code(client.get, "missing") == 1003
    assert error_code(client.remove, "missing") == 1003
    assert error_code(client.createTimeout, "e", 5, 0, 0, 0, 0, 0, 1, "nope", {}) == 1006
    assert error_code(client.get, "") == 1007
    assert error_code(client.remove, "") == 1007
    assert error_code(client.create, "e", 75, -1, -1, -1, -1, -1, "shell", {}) == 1008
    assert (
        error_code(client.createTimeout, "e", 5, 0, 0, 0, 0, 0, 1, "shell", {"cmd": "x" * 70_000})
        == 1009
    )
    assert client.ping() == 0  # errors never cost the connection


def test_unknown_method_answers_exception_and_keeps_connection(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.thrift_port), timeout=5) as s:
        s.sendall(
            raw_message("noSuchMethod", Forsun.ping_args(), seqid=5)
            + raw_message("ping", Forsun.ping_args(), seqid=6)
        )
        buf = TTransport.TMemoryBuffer(_recv_at_least(s, 2))
        proto = TBinaryProtocol.TBinaryProtocol(buf)
        name, mtype, seqid = proto.readMessageBegin()
        assert (name, mtype, seqid) == ("noSuchMethod", TMessageType.EXCEPTION, 5)
        exc = TApplicationException()
        exc.read(proto)
        assert exc.type == TApplicationException.UNKNOWN_METHOD
        assert proto.readMessageBegin() == ("ping", TMessageType.REPLY, 6)
        result = Forsun.ping_result()
        result.read(proto)
        assert result.success == 0


def _recv_at_least(s: socket.socket, replies: int) -> bytes:
    """Read until ``replies`` complete messages have arrived."""
    from forsun_box.thrift import codec

    data = b""
    limits = codec.Limits()
    while True:
        pos, n = 0, 0
        try:
            while n < replies:
                _, end = codec.message_length(data[pos:], limits)
                pos += end
                n += 1
            return data
        except codec.NeedMore:
            chunk = s.recv(65536)
            assert chunk, "connection closed early"
            data += chunk


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # a huge non-strict name length
        b"\x80\x02\x00\x01" + b"\x00" * 20,  # a wrong protocol version
        struct.pack("!iI", -2147418111, 4) + b"ping" + b"\x00\x00\x00\x01" + b"\x63\x00\x01",
        # a declared 2 GiB string: refused at once, nothing allocated
        struct.pack("!iI", -2147418111, 3)
        + b"get"
        + struct.pack("!i", 1)
        + b"\x0b\x00\x01"
        + struct.pack("!i", 2**31 - 1),
        # a declared billion-entry map
        struct.pack("!iI", -2147418111, 6)
        + b"create"
        + struct.pack("!i", 1)
        + b"\x0d\x00\x09\x0b\x0b"
        + struct.pack("!i", 10**9),
        os.urandom(4096),
    ],
)
def test_garbage_closes_only_that_connection(server: Server, garbage: bytes) -> None:
    with connect(server.thrift_port) as bystander:
        with socket.create_connection(("127.0.0.1", server.thrift_port), timeout=5) as s:
            s.sendall(garbage)
            assert closed_by_server(s)
        assert bystander.ping() == 0
    with connect(server.thrift_port) as fresh:
        assert fresh.ping() == 0


def test_truncated_message_then_close_leaves_server_serving(server: Server) -> None:
    msg = raw_message(
        "createTimeout", Forsun.createTimeout_args(key="trunc", second=5, params={"cmd": "true"})
    )
    for cut in (3, 10, len(msg) // 2, len(msg) - 1):
        with socket.create_connection(("127.0.0.1", server.thrift_port), timeout=5) as s:
            s.sendall(msg[:cut])
    with connect(server.thrift_port) as c:
        assert c.ping() == 0
        with pytest.raises(ForsunPlanError):
            c.get("trunc")


def test_half_open_client_does_not_stall_others(server: Server) -> None:
    msg = raw_message(
        "createTimeout", Forsun.createTimeout_args(key="slow", second=3600, params={"cmd": "true"})
    )
    with socket.create_connection(("127.0.0.1", server.thrift_port), timeout=5) as slow:
        slow.sendall(msg[:20])  # and never the rest
        with connect(server.thrift_port) as c:
            t0 = time.monotonic()
            for i in range(20):
                delay(c, f"fast-{i}")
            assert time.monotonic() - t0 < 5
        slow.sendall(msg[20:])  # finishing late still works
        reply = _recv_at_least(slow, 1)
        proto = TBinaryProtocol.TBinaryProtocol(TTransport.TMemoryBuffer(reply))
        assert proto.readMessageBegin()[0] == "createTimeout"
        result = Forsun.createTimeout_result()
        result.read(proto)
        assert result.success.key == "slow"


def test_message_split_into_single_bytes(server: Server) -> None:
    msg = raw_message("get", Forsun.get_args(key="missing-bytewise"), seqid=9)
    with socket.create_connection(("127.0.0.1", server.thrift_port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for b in msg:
            s.send(bytes([b]))
        proto = TBinaryProtocol.TBinaryProtocol(TTransport.TMemoryBuffer(_recv_at_least(s, 1)))
        assert proto.readMessageBegin() == ("get", TMessageType.REPLY, 9)
        result = Forsun.get_result()
        result.read(proto)
        assert result.err.code == 1003


# ---------------------------------------------------------------- load while firing


def test_50_connections_creating_while_plans_fire_on_time(server: Server) -> None:
    sink = Sink()
    try:
        target = int(time.time()) + 3
        expected: dict[str, int] = {}
        with connect(server.thrift_port) as c:
            for second in (target, target + 1):
                lt = time.localtime(second)
                for i in range(5):
                    key = f"ontime-{second}-{i}"
                    c.create(
                        key,
                        lt.tm_sec,
                        lt.tm_min,
                        lt.tm_hour,
                        lt.tm_mday,
                        lt.tm_mon,
                        -1,
                        "http",
                        {"url": sink.url(f"/{key}")},
                    )
                    expected[key] = second * 1000
        stop = threading.Event()
        created = [0] * 50
        failures: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                with connect(server.thrift_port) as wc:
                    while not stop.is_set():
                        delay(wc, f"load-{n}-{created[n]}")
                        created[n] += 1
            except BaseException as e:  # surfaced below
                failures.append(e)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(50)]
        for t in threads:
            t.start()
        hits = sink.wait_for(len(expected), timeout=target + 6 - time.time())
        stop.set()
        for t in threads:
            t.join(10)
        assert not failures, failures[:3]
        assert all(created), "every connection created plans"
        assert len(hits) == len(expected)
        lateness = [at - expected[path.lstrip("/")] for at, path, _ in hits]
        assert min(lateness) >= -50  # never early (beyond clock noise)
        # on time, not a tick late, though 50 threads here share the sink's interpreter
        assert max(lateness) <= 1000, sorted(lateness)
    finally:
        sink.close()


# ---------------------------------------------------------------- the thrift action end to end


def test_plan_with_thrift_action_calls_the_target(server: Server) -> None:
    target = ThriftTarget()
    try:
        plan = server.ok(
            "PUT",
            "/v1/plan",
            {
                "key": "to-thrift",
                "seconds": 1,
                "count": 1,
                "action": "thrift",
                "params": {"host": "127.0.0.1", "port": str(target.port), "note": "hello"},
            },
        )
        assert wait_until(lambda: target.calls, 10)
        key, ts, params = target.calls[0]
        assert key == "to-thrift" and ts == plan["next_time"]
        assert params["note"] == "hello"
    finally:
        target.close()


def test_thrift_action_at_forsun_box_itself(server: Server) -> None:
    with connect(server.thrift_port) as c:
        c.create(
            "to-self",
            -1,
            -1,
            -1,
            -1,
            -1,
            -1,
            "thrift",
            {"host": "127.0.0.1", "port": str(server.thrift_port)},
        )
        # status 1: forsun_call was answered, so the firing succeeded
        assert wait_until(lambda: c.get("to-self").status == 1, 5)
        assert c.remove("to-self").current_count >= 1
