"""A burst of 20,000 firings against a slow HTTP target: not one is lost.

forsun drops firings when its action clients are saturated; forsun-box
queues them behind the per-action concurrency limit instead. The target
answers every request after a delay and records which plan called it and
how many requests it was serving at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from tests.helpers import Server, wait_until

N = 20_000
TARGET_DELAY_S = 0.02
CONCURRENCY = 100


class SlowTarget:
    """An HTTP/1.1 server on its own loop and thread, answering 200 after a delay."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.keys: list[str] = []
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=4096)
            self.port = self.server.sockets[0].getsockname()[1]
            self.ready.set()

        self.loop.run_until_complete(main())
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {
                    k.lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                try:
                    await asyncio.sleep(self.delay)  # a slow target
                finally:
                    self.active -= 1
                with self.lock:
                    self.keys.append(path.rpartition("=")[2])
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        finally:
            writer.close()

    def received(self) -> int:
        with self.lock:
            return len(self.keys)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_burst_of_20000_firings_against_a_slow_target_loses_none(tmp_path: Path) -> None:
    target = SlowTarget(TARGET_DELAY_S)
    server = Server(
        tmp_path / "data",
        "--log-level",
        "WARNING",
        env={"ACTION_CONCURRENCY": str(CONCURRENCY), "ACTION_HTTP_MAX_CLIENTS": str(CONCURRENCY)},
    ).start()
    try:
        url = f"http://127.0.0.1:{target.port}/fire?key="
        plans = [
            {
                "key": f"burst-{i:05d}",
                "seconds": 3,
                "count": 1,
                "action": "http",
                "params": {"url": url + f"burst-{i:05d}"},
            }
            for i in range(N)
        ]
        created_at = time.monotonic()
        # 20,000 plans in one request: may take longer than the default 10 s on a slow host
        created = server.ok("PUT", "/v1/plan", plans, timeout=120)
        assert len(created) == N
        due_at = created_at + 3
        assert wait_until(lambda: target.received() >= N, 240, interval=0.2), (
            f"only {target.received()} of {N} firings arrived\n{server.log()[-3000:]}"
        )
        took = time.monotonic() - due_at
        # a burst's firings are counted when it is taken up, once their ends are in
        # the server is still busy with the burst: its answers may be slow
        assert wait_until(
            lambda: int(server.ok("GET", "/v1/info", timeout=60)["action_executed_count"]) >= N,
            60,
        ), server.ok("GET", "/v1/info", timeout=60)
        info = server.ok("GET", "/v1/info", timeout=60)
    finally:
        server.stop(timeout=60)
        target.close()
    with target.lock:
        keys = list(target.keys)
    assert len(set(keys)) == N, "some firings never reached the target"
    assert sorted(set(keys)) == [f"burst-{i:05d}" for i in range(N)]
    assert int(info["action_executed_count"]) >= N
    assert info["action_executed_error_count"] == "0"
    # the slow target never saw more requests at once than the action's limit
    assert target.max_active <= CONCURRENCY
    print(
        f"\nburst: {N} firings delivered {took:.1f} s after they came due, "
        f"{len(keys) - N} duplicates, target peak concurrency {target.max_active}"
    )
