"""forsun 0.1.4's own tools, installed for the tests by ../shared/peers/setup_forsun_peer.sh.

The peer lives in its own venv (forsun pins old tornado and thrift), under
build/forsun-peer, kept between runs (the script is idempotent). Its ``forsun``
client, its ``forsund`` server and its ``forsun.clients.ThriftClient`` are run
as subprocesses of the peer's python: they can't be imported here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, call, free_port, wait_until

SETUP_SCRIPT = ROOT.parent / "shared" / "peers" / "setup_forsun_peer.sh"
PEER_DIR = ROOT / "build" / "forsun-peer"
# what pip prints when the package index can't be reached (the one reason to skip)
_OFFLINE = (
    "No matching distribution found",
    "Could not find a version",
    "Network is unreachable",
    "Temporary failure in name resolution",
    "Failed to establish a new connection",
    "ConnectionError",
)
#: forsun's client prints a plan's time in the local zone after shifting it as
#: if it were UTC; in UTC both clients print the same bytes (docs/COMPAT.md)
TOOL_ENV = {"TZ": "UTC", "PYTHONIOENCODING": "utf-8"}


@dataclass
class Peer:
    """The installed forsun 0.1.4: its venv and how to run its tools."""

    dir: Path

    @property
    def python(self) -> str:
        return str(self.dir / "bin" / "python")

    @property
    def bin(self) -> Path:
        return self.dir / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env.update(TOOL_ENV)
        env.update(extra)
        return env

    def forsun(
        self, port: int, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """forsun's own ``forsun`` client: ``forsun --port PORT ARGS...``."""
        return subprocess.run(
            [str(self.bin / "forsun"), "--port", str(port), *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def thrift_calls(self, port: int, calls: list[tuple[Any, ...]]) -> list[Any]:
        """Run ``ThriftClient(port).METHOD(*args)`` for each ``(METHOD, *args)``.

        Each answer comes back JSON-shaped: a plan as a dict of its fields, an
        error as ``{"error": CODE, "message": TEXT}`` (``ForsunPlanError``) or
        ``{"exception": NAME}``.
        """
        proc = subprocess.run(
            [self.python, "-c", THRIFT_DRIVER, str(port)],
            input=json.dumps(calls),
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        answers: list[Any] = json.loads(proc.stdout)
        return answers


# Runs in the peer's python: forsun's ThriftClient, one method call per item.
THRIFT_DRIVER = r"""
import json, sys
from forsun.clients import ThriftClient, ForsunPlanError

def shape(value):
    if isinstance(value, list):
        return [shape(v) for v in value]
    if isinstance(value, dict):
        return {str(k): shape(v) for k, v in value.items()}
    if hasattr(value, "thrift_spec"):
        return {k: shape(v) for k, v in vars(value).items()}
    return value

client = ThriftClient(int(sys.argv[1]), "127.0.0.1")
client.connect()
out = []
for name, *args in json.load(sys.stdin):
    try:
        out.append(shape(getattr(client, name)(*args)))
    except ForsunPlanError as e:
        out.append({"error": e.code, "message": e.message})
    except Exception as e:
        out.append({"exception": type(e).__name__})
print(json.dumps(out))
"""


# forsun 0.1.4 pins tornado<=5.1 and thrift 0.11, which on Python 3.11 still
# look for the collections ABCs and asyncio.coroutine where 3.10 removed them
_SITECUSTOMIZE = """\
import asyncio, collections, collections.abc, types
for _name in ("Mapping", "MutableMapping", "Sequence", "MutableSet", "Callable",
              "Iterable", "Hashable"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))
if not hasattr(asyncio, "coroutine"):
    asyncio.coroutine = types.coroutine
"""
_SMOKE = "import forsun, forsun.forsun, forsun.clients, tornado, msgpack; print(forsun.version)"


def _install_here(target: Path) -> subprocess.CompletedProcess[str]:
    """What the setup script does, for a checkout without ``../shared`` beside it."""
    py = target / "bin" / "python"
    steps = []
    if not py.exists():
        steps.append([sys.executable, "-m", "venv", str(target)])
    steps.append([str(py), "-m", "pip", "install", "--quiet", "forsun==0.1.4"])
    out = ""
    for argv in steps:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL
        )
        out += proc.stdout + proc.stderr
        if proc.returncode != 0:
            return subprocess.CompletedProcess(argv, proc.returncode, out, "")
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    proc = subprocess.run([str(py), "-c", _SMOKE], capture_output=True, text=True, timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out + proc.stdout, proc.stderr)


def install_peer(target: Path = PEER_DIR) -> Peer:
    """Run the setup script into ``target`` (or the same steps here when the checkout
    has no ``../shared`` beside it); skip only when the index is unreachable."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if SETUP_SCRIPT.exists():
        proc = subprocess.run(
            ["bash", str(SETUP_SCRIPT), str(target)],
            capture_output=True,
            text=True,
            timeout=900,
            stdin=subprocess.DEVNULL,
        )
    else:
        proc = _install_here(target)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        if any(marker in output for marker in _OFFLINE):
            pytest.skip(
                f"forsun 0.1.4 can't be installed, the package index is unreachable:\n{output[-2000:]}"
            )
        pytest.fail(f"setup_forsun_peer.sh failed ({proc.returncode}):\n{output[-4000:]}")
    return Peer(target)


@pytest.fixture(scope="session")
def forsun_peer() -> Peer:
    """forsun 0.1.4 in build/forsun-peer, installed once (and kept) by the setup script."""
    return install_peer()


class Forsund:
    """forsun's own server (``forsund --nodemon``, mem store) on free loopback ports."""

    def __init__(self, peer: Peer, workdir: Path) -> None:
        self.peer = peer
        self.workdir = workdir
        self.thrift_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Forsund:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.peer.bin / "forsund"),
            "--nodemon",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.thrift_port),
            "--http",
            f"127.0.0.1:{self.http_port}",
            "--driver",
            "mem",
            "--driver-mem-store-file",
            str(self.workdir / "forsun.dump"),
            "--log",
            str(self.workdir / "forsun.log"),
        ]
        with open(self.workdir / "forsund.out", "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(self.workdir),
                env=self.peer.env(),
                start_new_session=True,
            )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"forsund exited {self.proc.returncode}: {self.log()}")
            try:
                return call(self.http_port, "GET", "/v1/ping", timeout=1)[0] == 200
            except OSError:
                return False

        if not wait_until(up, 60, 0.05):
            self.stop()
            raise RuntimeError(f"forsund did not answer within 60 s: {self.log()}")
        return self

    def log(self) -> str:
        text = ""
        for name in ("forsund.out", "forsun.log"):
            path = self.workdir / name
            if path.exists():
                text += path.read_text(errors="replace")[-3000:]
        return text

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return call(self.http_port, method, path, body, **kw)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def forsund(forsun_peer: Peer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forsund]:
    """A real forsun server for the module."""
    server = Forsund(forsun_peer, tmp_path_factory.mktemp("forsund")).start()
    yield server
    server.stop()
