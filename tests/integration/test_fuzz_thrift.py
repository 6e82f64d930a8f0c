"""Hypothesis fuzz of the Thrift server over a real socket.

Garbage, truncated, mutated and oversized frames: the server must close or
answer every such connection once the client has half-closed it (no hang),
never crash, and keep serving a bystander client throughout.
``FORSUN_BOX_FUZZ_EXAMPLES`` raises the number of cases (CI: 300 per test).
"""

from __future__ import annotations

import os
import socket
import struct
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from thrift.protocol import TBinaryProtocol
from thrift.Thrift import TMessageType
from thrift.transport import TTransport

from forsun_box.thrift.forsun import Forsun
from tests.helpers import Server, thrift_client

EXAMPLES = int(os.environ.get("FORSUN_BOX_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
RAN: Counter[str] = Counter()


def _message(name: str, args: object) -> bytes:
    buf = TTransport.TMemoryBuffer()
    proto = TBinaryProtocol.TBinaryProtocol(buf)
    proto.writeMessageBegin(name, TMessageType.CALL, 7)
    args.write(proto)  # type: ignore[attr-defined]
    proto.writeMessageEnd()
    return buf.getvalue()


VALID = [
    _message("ping", Forsun.ping_args()),
    _message(
        "createTimeout",
        Forsun.createTimeout_args(
            key="fz", second=3600, count=1, action="shell", params={"cmd": "true"}
        ),
    ),
    _message(
        "create",
        Forsun.create_args(
            key="fzc", second=1, minute=2, hour=3, action="shell", params={"cmd": "true"}
        ),
    ),
    _message("getKeys", Forsun.getKeys_args(prefix="fz")),
    _message("info", Forsun.info_args()),
]


def _frames() -> st.SearchStrategy[bytes]:
    valid = st.sampled_from(VALID)
    mutated = st.tuples(
        valid, st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6)
    ).map(_mutate)
    truncated = st.tuples(valid, st.integers(0, 200)).map(lambda t: t[0][: t[1]])
    oversized = st.tuples(
        st.sampled_from([b"\x0b", b"\x0d", b"\x0f", b"\x0c"]), st.integers(2**20, 2**31 - 1)
    ).map(
        lambda t: (
            struct.pack("!iI", -2147418111, 3)
            + b"get"
            + struct.pack("!i", 1)
            + t[0]
            + b"\x00\x01"
            + struct.pack("!i", t[1])
        )
    )
    framed = valid.map(lambda m: struct.pack("!i", len(m)) + m)  # a framed client
    appended = st.tuples(valid, st.binary(max_size=64)).map(lambda t: t[0] + t[1])
    return st.one_of(st.binary(max_size=512), mutated, truncated, oversized, framed, appended)


def _mutate(t: tuple[bytes, list[tuple[int, int]]]) -> bytes:
    data = bytearray(t[0])
    for pos, value in t[1]:
        data[pos % len(data)] = value
    return bytes(data)


def _exchange(port: int, frame: bytes) -> None:
    """Send ``frame``, half-close, read until the server closes (bounded: no hang)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(frame)
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            raise AssertionError(f"server kept a half-closed connection open: {frame!r}") from None


@pytest.fixture(scope="module")
def bystander(server: Server) -> Iterator[Forsun.Client]:
    with thrift_client(server.thrift_port, timeout_ms=5000) as client:
        yield client


def test_thrift_frames_never_crash_or_hang_the_server(
    server: Server, bystander: Forsun.Client
) -> None:
    @FUZZ
    @given(_frames())
    def case(frame: bytes) -> None:
        RAN["thrift_frames"] += 1
        _exchange(server.thrift_port, frame)
        if RAN["thrift_frames"] % 25 == 0:
            assert bystander.ping() == 0

    case()
    assert server.proc is not None and server.proc.poll() is None
    assert bystander.ping() == 0
    assert bystander.getKeys("fz") in ([], ["fz"], ["fz", "fzc"], ["fzc"])
    print("thrift fuzz cases:", RAN["thrift_frames"])
    assert RAN["thrift_frames"] >= min(EXAMPLES, 50)
