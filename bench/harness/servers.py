"""Start and stop the servers under test, each on free loopback ports in its own temp dir."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1
BOX = "forsun-box"
FORSUN = "forsun"
SERVER_NAMES = (BOX, FORSUN)
REPO_ROOT = Path(__file__).resolve().parents[2]


class ServerError(RuntimeError):
    """A server did not start, or died while being measured."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ServerConfig:
    """Where to find each server's executable."""

    peer_dir: Path
    box_python: str

    def command(self, name: str, http_port: int, thrift_port: int, workdir: Path) -> list[str]:
        """The command line that starts server ``name`` in the foreground."""
        if name == BOX:
            return [
                self.box_python,
                "-m",
                "forsun_box",
                "serve",
                "--http",
                f"{HOST}:{http_port}",
                "--port",
                str(thrift_port),
                "--bind",
                HOST,
                "--data-dir",
                str(workdir / "data"),
                "--log-level",
                "WARNING",
            ]
        if name == FORSUN:
            return [
                str(self.peer_dir / "bin" / "forsund"),
                "--nodemon",
                "--bind",
                HOST,
                "--port",
                str(thrift_port),
                "--http",
                f"{HOST}:{http_port}",
                "--driver",
                "mem",
                # keep its dump-on-exit file inside the temp dir, never in $HOME
                "--driver-mem-store-file",
                str(workdir / "forsun.dump"),
                "--log",
                str(workdir / "forsun.log"),
                "--log-level",
                "WARNING",
            ]
        raise ValueError(f"unknown server {name!r}")


@dataclass
class Server:
    """A running server process under test."""

    name: str
    proc: subprocess.Popen[bytes]
    http_port: int
    thrift_port: int
    workdir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int:
        """Resident set size of the server process and its children (forsun-box's create
        worker), in bytes; pages a fork still shares are counted in each."""
        proc = psutil.Process(self.pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return int(total)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far, its children's
        (forsun-box's create worker) included."""
        proc = psutil.Process(self.pid)
        times = proc.cpu_times()
        total = times.user + times.system
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                ct = child.cpu_times()
                total += ct.user + ct.system
        return float(total)

    def data_bytes(self) -> int:
        """Bytes on disk under the server's temp dir (its database, logs, dumps)."""
        total = 0
        for path in self.workdir.rglob("*"):
            with contextlib.suppress(OSError):
                if path.is_file():
                    total += path.stat().st_size
        return total

    def log_tail(self, limit: int = 2000) -> str:
        """The last ``limit`` characters of the server's output and log files."""
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-limit:]}")
        return "\n".join(parts)

    def output_size(self) -> int:
        """Bytes the server has written to its output so far (see :meth:`output_since`)."""
        try:
            return (self.workdir / "stdout.log").stat().st_size
        except OSError:
            return 0

    def output_since(self, offset: int) -> str:
        """What the server wrote to its output (warnings and errors) after ``offset``."""
        try:
            with open(self.workdir / "stdout.log", "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds (forsun dumps its store on exit)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def die_with_parent() -> None:
    """Popen ``preexec_fn``: have Linux SIGTERM the child if the harness itself dies.

    The children run in their own session (so a terminal's Ctrl-C reaches only the harness,
    which stops them in order); this is the fallback for a harness killed outright.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the normal stop path still applies


@contextlib.contextmanager
def running_process(
    args: list[str], port: int, ready_path: str, name: str, ready_timeout: float = 20.0
) -> Iterator[subprocess.Popen[bytes]]:
    """A helper process (a sink, a baseline server) listening on ``port`` on loopback.

    Yields once ``GET ready_path`` gets any HTTP answer; terminated (killed after 10 s)
    when the block ends, and by Linux if the harness dies first.
    """
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent
    )
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}{ready_path}", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start") from None
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _ping(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/v1/ping", timeout=2) as resp:
            return resp.status == 200 and json.loads(resp.read()).get("errcode") == 0
    except (OSError, urllib.error.URLError, ValueError):
        return False


def start_server(
    config: ServerConfig,
    name: str,
    ready_timeout: float = 30.0,
    keep: bool = False,
    workdir: Path | None = None,
    extra_args: Sequence[str] = (),
) -> Server:
    """Start ``name`` on fresh ports (``extra_args`` after its own flags) and return
    once /v1/ping answers.

    ``workdir`` reuses a stopped server's directory (its data: a restart); by
    default a fresh temp dir. On failure the server is stopped, a fresh temp dir
    removed (unless ``keep``) and a ServerError raised carrying the tail of its output.
    """
    fresh = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-")) if workdir is None else workdir
    http_port, thrift_port = free_port(), free_port()
    while thrift_port == http_port:
        thrift_port = free_port()
    env = dict(os.environ)
    if name == BOX:
        # the checkout wins over whatever else may be installed
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
    cmd = [*config.command(name, http_port, thrift_port, workdir), *extra_args]
    with open(workdir / "stdout.log", "ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    server = Server(name, proc, http_port, thrift_port, workdir)
    deadline = time.monotonic() + ready_timeout
    problem = f"{name} did not answer /v1/ping within {ready_timeout} s"
    while time.monotonic() < deadline:
        if not server.alive():
            problem = f"{name} exited with {proc.returncode} at start-up: {' '.join(cmd)}"
            break
        if _ping(server.base_url):
            return server
        time.sleep(0.02)  # fine enough to time a start-up
    server.stop()
    message = problem + "\n" + server.log_tail()
    if fresh and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    raise ServerError(message)


@contextlib.contextmanager
def running_server(config: ServerConfig, name: str, keep: bool = False) -> Iterator[Server]:
    """Run a fresh server for the duration of the block, then stop it and remove its dir."""
    server = start_server(config, name, keep=keep)
    try:
        yield server
    finally:
        server.stop()
        if not keep:
            shutil.rmtree(server.workdir, ignore_errors=True)


def settle_rss(server: Server, max_wait: float = 15.0, interval: float = 0.5) -> int:
    """RSS once it stops moving: two samples ``interval`` apart within 0.5 %, or at ``max_wait``."""
    deadline = time.monotonic() + max_wait
    last = server.rss()
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = server.rss()
        if abs(now - last) <= 0.005 * max(last, 1):
            return now
        last = now
    return last
