"""The Thrift server's connection handling, in process: message framing over
arbitrary chunks, reply order, back-pressure, the unfinished-message time-out,
half-close, and the codec helpers it relies on. (The API itself, against a
real forsun-box process: tests/integration/test_thrift*.py.)"""

from __future__ import annotations

import asyncio
import socket
import struct
from types import SimpleNamespace
from typing import Any

from thrift.protocol import TBinaryProtocol
from thrift.Thrift import TMessageType
from thrift.transport import TTransport

from forsun_box.api.thrift.server import ThriftServer
from forsun_box.api.thrift.structs import plan_struct
from forsun_box.plan import DELAY, Plan
from forsun_box.thrift import codec
from forsun_box.thrift.forsun import Forsun
from forsun_box.thrift.forsun.ttypes import ForsunPlan
from tests.helpers import wait_until_async

LIMITS = codec.Limits()


def message(name: str, args: Any, seqid: int) -> bytes:
    buf = TTransport.TMemoryBuffer()
    proto = TBinaryProtocol.TBinaryProtocol(buf)
    proto.writeMessageBegin(name, TMessageType.CALL, seqid)
    args.write(proto)
    proto.writeMessageEnd()
    return buf.getvalue()


def ping(seqid: int) -> bytes:
    return message("ping", Forsun.ping_args(), seqid)


async def read_replies(reader: asyncio.StreamReader, n: int) -> list[tuple[str, int, int]]:
    """The (name, type, seqid) of the next ``n`` replies."""
    data = b""
    out: list[tuple[str, int, int]] = []
    pos = 0
    while len(out) < n:
        try:
            header, end = codec.message_length(data, LIMITS, pos)
        except codec.NeedMore:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk, "closed early"
            data += chunk
            continue
        out.append((header.name, header.mtype, header.seqid))
        pos = end
    return out


async def closed(reader: asyncio.StreamReader, timeout: float = 5) -> bool:
    try:
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
    except ConnectionResetError:
        pass
    return True


def serve(test: Any, **kw: Any) -> None:
    async def main() -> None:
        server = ThriftServer(SimpleNamespace(), **kw)
        port = await server.start("127.0.0.1", 0)
        try:
            await test(server, port)
        finally:
            await server.stop()

    asyncio.run(main())


def test_pipelined_calls_split_anywhere_are_answered_in_order() -> None:
    async def test(server: ThriftServer, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = ping(1) + message("noSuchMethod", Forsun.ping_args(), 2) + ping(3)
        for i in range(0, len(data), 7):  # chunks cutting headers and bodies
            writer.write(data[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0.001)  # chunks arrive apart, as from a slow network
        assert await read_replies(reader, 3) == [
            ("ping", TMessageType.REPLY, 1),
            ("noSuchMethod", TMessageType.EXCEPTION, 2),
            ("ping", TMessageType.REPLY, 3),
        ]
        writer.close()

    serve(test)


def test_a_slow_call_keeps_later_replies_behind_it() -> None:
    async def test(server: ThriftServer, port: int) -> None:
        release = asyncio.Event()
        began = asyncio.Event()

        async def slow(args: Any) -> int:
            began.set()
            await release.wait()
            return 0

        entry = server._methods["ping"]
        server._methods["getKeys"] = (Forsun.getKeys_args, Forsun.ping_result, slow, False)
        assert entry[2] is not slow
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(message("getKeys", Forsun.getKeys_args(prefix=""), 1) + ping(2))
        await asyncio.wait_for(began.wait(), 5)
        await asyncio.sleep(0.05)  # a window in which a wrong server answers the ping first
        release.set()
        assert [r[2] for r in await read_replies(reader, 2)] == [1, 2]
        writer.close()

    serve(test)


def test_half_closed_client_still_gets_its_answers() -> None:
    async def test(server: ThriftServer, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(ping(1) + ping(2))
        writer.write_eof()
        assert [r[2] for r in await read_replies(reader, 2)] == [1, 2]
        assert await closed(reader)

    serve(test)


def test_unfinished_message_times_out_and_only_that_connection_closes() -> None:
    async def test(server: ThriftServer, port: int) -> None:
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w1.write(ping(1)[:6])
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await closed(r1)
        assert 0.15 <= loop.time() - t0 < 3
        w2.write(ping(7))
        assert await read_replies(r2, 1) == [("ping", TMessageType.REPLY, 7)]
        w2.close()

    serve(test, message_timeout_s=0.2)


def test_a_complete_message_is_not_timed_out() -> None:
    async def test(server: ThriftServer, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(ping(1))
        assert await read_replies(reader, 1) == [("ping", TMessageType.REPLY, 1)]
        await asyncio.sleep(0.4)  # idle between messages: no time-out
        writer.write(ping(2))
        assert await read_replies(reader, 1) == [("ping", TMessageType.REPLY, 2)]
        writer.close()

    serve(test, message_timeout_s=0.2)


def test_message_over_the_size_bound_closes_the_connection() -> None:
    async def test(server: ThriftServer, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # a get whose key string is declared (and sent) bigger than the bound
        head = struct.pack("!iI", -2147418111, 3) + b"get" + struct.pack("!i", 1)
        writer.write(head + b"\x0b\x00\x01" + struct.pack("!i", 8192) + b"x" * 8192)
        assert await closed(reader)

    serve(test, limits=codec.Limits(max_message_bytes=4096, max_string_bytes=1 << 20))


def test_client_not_reading_its_answers_stops_being_read() -> None:
    async def test(server: ThriftServer, port: int) -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        # Calls of an unknown, long method name: each answer is twice the call.
        call = message("x" * 1000, Forsun.ping_args(), 1)
        stream = memoryview(call * ((256 << 20) // len(call)))
        sent = 0
        assert await wait_until_async(lambda: server._connections, 5)  # accepted
        conn = next(iter(server._connections))
        deadline = loop.time() + 20
        # Never reading the answers: the server's write buffer fills up, and
        # then it stops reading.
        while not conn._read_paused and loop.time() < deadline:
            try:
                sent += sock.send(stream[sent : sent + 65536])
            except BlockingIOError:
                await asyncio.sleep(0.01)  # the socket is full: let the server read
            await asyncio.sleep(0)
        assert conn._read_paused and conn._write_paused
        assert sent < len(stream)
        # what it holds unanswered stays bounded
        assert len(conn._buf) - conn._pos <= 2 * 256 * 1024
        # Reading the answers lets it go on: every whole call sent is answered.
        reply = server._unknown_method(codec.read_header(call, LIMITS))
        assert reply is not None
        expected = (sent // len(call)) * len(reply)
        got = 0
        while got < expected:
            got += len(await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5))
        assert got == expected
        assert not conn._read_paused and not conn._write_paused
        sock.close()

    serve(test)


def test_codec_reads_at_an_offset() -> None:
    data = ping(1) + ping(2)
    h1, end1 = codec.message_length(data, LIMITS)
    h2, end2 = codec.message_length(data, LIMITS, end1)
    assert (h1.seqid, h2.seqid, end2) == (1, 2, len(data))
    header = codec.read_header(data, LIMITS, end1)
    args, end = codec.decode_body(data, header.body_start, Forsun.ping_args, LIMITS)
    assert end == len(data) and isinstance(args, Forsun.ping_args)
    try:
        codec.read_header(data[: end1 + 5], LIMITS, end1)
    except codec.NeedMore:
        pass
    else:
        raise AssertionError("a cut header must ask for more")


def test_plan_struct_is_the_idl_struct_with_clamped_values() -> None:
    plan = Plan(
        key="k",
        kind=DELAY,
        action="shell",
        params={"cmd": "true"},
        second=70_000,
        count=1,
        current_count=40_000,
        interval_ms=1000,
        anchor_ms=0,
        next_time=(2**31 + 5) * 1000,
        last_timeout=1_700_000_000_000,
    )
    s = plan_struct(plan)
    assert s == ForsunPlan(
        is_time_out=True,
        key="k",
        second=32767,
        minute=-1,
        hour=-1,
        day=-1,
        month=-1,
        week=-1,
        next_time=2**31 - 1,
        status=plan.status,
        count=1,
        current_count=32767,
        last_timeout=1_700_000_000,
        action="shell",
        params={"cmd": "true"},
    )
    result = Forsun.createTimeout_result(success=s)
    reply = codec.encode_message("createTimeout", codec.REPLY, 9, result)
    header = codec.read_header(reply, LIMITS)
    decoded, _ = codec.decode_body(reply, header.body_start, Forsun.createTimeout_result, LIMITS)
    assert decoded.success == s
