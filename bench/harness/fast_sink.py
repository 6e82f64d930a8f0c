"""A lean keep-alive HTTP sink for firing benchmarks (a bench tool, not product code).

Run as a script: ``python bench/harness/fast_sink.py --port N [--max-seconds S]``.

Every request to ``/hit?key=K&due=D`` (``D`` the plan's due instant in ms, optional) is
recorded as ``(key, due_ms, arrival_ms)``, the arrival stamped when the request's bytes were
read. ``GET /count`` answers ``{"count": n}``, ``GET /dump`` all records as JSON
``[[key, due_ms, arrival_ms], ...]`` (``/dump?since=N``: from the N-th on); any other path answers 404. Answers are HTTP/1.1 with a
Content-Length, connections are kept alive (closed after ``Connection: close`` or an HTTP/1.0
request without keep-alive; with ``--close`` every answer says ``Connection: close`` and the
connection is closed after it, so each request needs a connection of its own); pipelined requests and requests split across reads are handled,
bodies (Content-Length or chunked) are read and ignored. It stops by itself after
``--max-seconds``.

``--fifo PATH`` also reads lines ``KEY DUE_MS`` from the named pipe PATH (made if missing), as
shell commands write them (``echo KEY DUE >PATH``; a line under 4 KiB is written at once), and
records each one like a ``/hit``, stamped when read.

It is an asyncio protocol on uvloop rather than a framework so that one core answers well over
20,000 requests/s and the sink takes as little as possible of the machine from the server
under test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from urllib.parse import unquote_plus

from forsun_box.thrift.codec import set_no_delay

RECORDS: list[tuple[str, int, int]] = []

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"
_OK_CLOSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\nok"
)
#: --close: every answer closes its connection
CLOSE_ALL = False
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad"
_MAX_HEAD = 64 * 1024


def _json_answer(payload: object) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _hit(target: bytes, arrival_ms: int) -> None:
    """Record a /hit request; ``target`` is everything after ``/hit``."""
    key = ""
    due = 0
    _, _, query = target.partition(b"?")
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if name == b"key":
            key = unquote_plus(value.decode("latin-1"))
        elif name == b"due":
            try:
                due = int(value)
            except ValueError:
                due = 0
    RECORDS.append((key, due, arrival_ms))


class SinkProtocol(asyncio.Protocol):
    """One connection: parse requests out of a byte buffer, answer each in order."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.body_left = 0  # bytes of a Content-Length body still to skip
        self.chunked = False  # skipping a chunked body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_no_delay(transport)

    def data_received(self, data: bytes) -> None:
        arrival_ms = time.time_ns() // 1_000_000
        buf = self.buf + data if self.buf else data
        out: list[bytes] = []
        close = False
        while buf:
            if self.body_left:
                n = min(self.body_left, len(buf))
                self.body_left -= n
                buf = buf[n:]
                continue
            if self.chunked:
                buf, done = self._skip_chunks(buf)
                if not done:
                    break
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    out.append(_BAD)
                    close = True
                    buf = b""
                break
            head = buf[:end]
            buf = buf[end + 4 :]
            answer, close_after = self._request(head, arrival_ms)
            out.append(answer)
            if close_after:
                close = True
                buf = b""
                break
        self.buf = buf
        assert self.transport is not None
        if out:
            self.transport.write(b"".join(out))
        if close:
            self.transport.close()

    def _skip_chunks(self, buf: bytes) -> tuple[bytes, bool]:
        """Skip whole chunks of a chunked body; (rest, body finished)."""
        while True:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return buf, False
            try:
                size = int(buf[:line_end].split(b";", 1)[0], 16)
            except ValueError:
                self.chunked = False
                return b"", True
            if size == 0:
                # last chunk: optional trailer lines, then an empty line
                end = buf.find(b"\r\n\r\n", line_end)
                if end < 0:
                    return buf, False
                self.chunked = False
                return buf[end + 4 :], True
            need = line_end + 2 + size + 2
            if len(buf) < need:
                return buf, False
            buf = buf[need:]

    def _request(self, head: bytes, arrival_ms: int) -> tuple[bytes, bool]:
        """Answer one request head; (answer bytes, close the connection after it)."""
        line_end = head.find(b"\r\n")
        request_line = head if line_end < 0 else head[:line_end]
        parts = request_line.split(b" ")
        if len(parts) != 3:
            return _BAD, True
        method, target, version = parts
        lower = head.lower()
        close = b"\r\nconnection: close" in lower or (
            version == b"HTTP/1.0" and b"\r\nconnection: keep-alive" not in lower
        )
        cl = lower.find(b"\r\ncontent-length:")
        if cl >= 0:
            value_end = lower.find(b"\r\n", cl + 17)
            try:
                self.body_left = int(lower[cl + 17 : value_end if value_end >= 0 else None])
            except ValueError:
                return _BAD, True
        elif b"\r\ntransfer-encoding: chunked" in lower:
            self.chunked = True
        if CLOSE_ALL:
            close = True
        if target.startswith(b"/hit"):
            _hit(target[4:], arrival_ms)
            answer = _OK_CLOSE if CLOSE_ALL else _OK
        elif target == b"/count":
            answer = _json_answer({"count": len(RECORDS)})
        elif target == b"/dump":
            answer = _json_answer(RECORDS)
        elif target.startswith(b"/dump?since="):
            answer = _json_answer(RECORDS[int(target[12:] or 0) :])
        else:
            answer = _NOT_FOUND
        if method == b"HEAD":
            # a HEAD answer has the headers only
            answer = answer[: answer.find(b"\r\n\r\n") + 4]
        return answer, close


def _watch_fifo(loop: asyncio.AbstractEventLoop, path: str) -> None:
    """Record every ``KEY DUE`` line written to the named pipe ``path``."""
    if not os.path.exists(path):
        os.mkfifo(path)
    # read-write: the pipe never reports end-of-file when the last writer closes it
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    rest = b""

    def readable() -> None:
        nonlocal rest
        arrival_ms = time.time_ns() // 1_000_000
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        for line in lines:
            key, _, due = line.strip().partition(b" ")
            if key:
                RECORDS.append((key.decode(), int(due or 0), arrival_ms))

    loop.add_reader(fd, readable)


async def serve(port: int, max_seconds: float, host: str = "127.0.0.1", fifo: str = "") -> None:
    """Serve on ``host:port`` for ``max_seconds``."""
    loop = asyncio.get_running_loop()
    if fifo:
        _watch_fifo(loop, fifo)
    # a deep backlog: a burst of due plans may open many connections at once
    server = await loop.create_server(SinkProtocol, host, port, backlog=4096, reuse_address=True)
    try:
        await asyncio.sleep(max_seconds)
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--close", action="store_true", help="close every connection")
    parser.add_argument("--fifo", default="", help="also record lines of this named pipe")
    args = parser.parse_args()
    global CLOSE_ALL
    CLOSE_ALL = args.close
    coro = serve(args.port, args.max_seconds, args.host, args.fifo)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main()
