"""The one-file executable ``dist/forsun-box``, run as a user downloads it.

The executable is built (``build/build.sh``) when it is missing or older
than the sources. In CI (``CI=true``) a failed build fails the tests;
locally it skips them. Each test copies the executable into an empty
temporary folder and runs it with HOME there, so nothing of the machine's
own data directory or of another test is used.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from forsun_box import __version__
from forsun_box.config import SETTINGS
from tests.helpers import ROOT, call, free_port, thrift_client, wait_until
from tests.servers import unavailable

BINARY = ROOT / "dist" / "forsun-box"
SOURCES = [
    ROOT / "forsun_box",
    ROOT / "build" / "forsun-box.spec",
    ROOT / "build" / "entry.py",
    ROOT / "pyproject.toml",
]
DEFAULT_HTTP, DEFAULT_THRIFT = 9002, 6458
# A bound on the wait for a stop, not a measure of it: at exit the executable
# also removes the folder it unpacked itself into, slow on a slow disk.
STOP_WITHIN_S = 30.0
ANSWER_WITHIN_S = 60.0  # a start unpacks the executable first, as slow

# A drop-in extension written as for forsun: forsun's import paths only.
FORSUN_STYLE_EXTENSION = """
    from forsun.action.action import Action
    from forsun.extension import Extension


    class TouchAction(Action):
        async def execute(self, *args, **kwargs):
            with open(self.params["file"], "a") as f:
                f.write("%s %s\\n" % (self.plan.key, self.params.get("word", "")))


    class TouchExtension(Extension):
        name = "touch"

        def register(self):
            self.register_action("touch", TouchAction)
"""


# ---------------------------------------------------------------- building


def _newest_source_mtime() -> float:
    newest = 0.0
    for source in SOURCES:
        paths = source.rglob("*") if source.is_dir() else [source]
        for path in paths:
            if path.is_file() and "__pycache__" not in path.parts:
                newest = max(newest, path.stat().st_mtime)
    return newest


def _is_stale() -> bool:
    return not BINARY.exists() or BINARY.stat().st_mtime < _newest_source_mtime()


@pytest.fixture(scope="module")
def binary() -> Path:
    """``dist/forsun-box``, (re)built first when missing or stale."""
    lock_path = ROOT / "build" / "work" / "binary.lock"  # build/work/: PyInstaller's, ignored
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two suites at once build it only once
        if _is_stale():
            proc = subprocess.run(
                ["bash", str(ROOT / "build" / "build.sh")],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=900,
            )
            if proc.returncode != 0 or not BINARY.exists():
                reason = f"cannot build {BINARY}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                unavailable(reason)
    return BINARY


# ---------------------------------------------------------------- running


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # as the server binds: a port only in TIME_WAIT (an earlier test's) is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Installed:
    """The executable copied into an empty folder, run with a private HOME."""

    def __init__(self, binary: Path, root: Path) -> None:
        self.app_dir = root / "app"
        self.app_dir.mkdir()
        self.exe = self.app_dir / "forsun-box"
        shutil.copy2(binary, self.exe)
        self.home = root / "home"
        self.home.mkdir()
        self.cwd = root / "cwd"  # an empty working directory
        self.cwd.mkdir()
        self.data_dir = self.home / ".local" / "share" / "forsun-box"
        self.extensions_dir = self.app_dir / "extensions"
        self.log_path = root / "server.log"
        self.env = {k: v for k, v in os.environ.items() if k not in _SETTING_ENV}
        self.env.update(HOME=str(self.home))
        self.env.pop("XDG_DATA_HOME", None)
        # The defaults when they are free (the real "no flags" run); else, on a busy
        # machine, the same run with the ports moved through the environment.
        self.http_port, self.thrift_port = DEFAULT_HTTP, DEFAULT_THRIFT
        if not (_port_free(DEFAULT_HTTP) and _port_free(DEFAULT_THRIFT)):
            self.http_port, self.thrift_port = free_port(), free_port()
            self.env.update(HTTP_BIND=f"127.0.0.1:{self.http_port}", PORT=str(self.thrift_port))
        self.proc: subprocess.Popen[bytes] | None = None

    def run(self, *args: str, exe: Path | None = None, **kw: Any) -> subprocess.CompletedProcess:
        """Run the executable to completion (a client command, --version ...)."""
        return subprocess.run(
            [str(exe or self.exe), *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            **kw,
        )

    def start(self) -> None:
        """``forsun-box serve`` with no flags; returns once the HTTP API answers."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.exe), "serve"],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def answering() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return call(self.http_port, "GET", "/v1/ping", timeout=1)[0] == 200
            except OSError:
                return False

        if wait_until(answering, ANSWER_WITHIN_S, interval=0.05):
            return
        raise AssertionError(f"not answering after {ANSWER_WITHIN_S} s:\n{self.log()}")

    def stop(self) -> float:
        """SIGTERM; asserts a clean exit within STOP_WITHIN_S and returns the time taken."""
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running {STOP_WITHIN_S} s after SIGTERM") from None
        took = time.monotonic() - began
        assert status == 0, self.log()
        return took

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, reply = call(self.http_port, method, path, body, timeout=30)
        assert status == 200 and reply["errcode"] == 0, (status, reply, self.log())
        return reply["data"]


_SETTING_ENV = {s.env for s in SETTINGS if s.env}


def _answers(port: int) -> bool:
    try:
        return call(port, "GET", "/v1/ping", timeout=1)[0] == 200
    except OSError:
        return False


@pytest.fixture
def installed(binary: Path, tmp_path: Path) -> Iterator[Installed]:
    inst = Installed(binary, tmp_path)
    yield inst
    inst.kill()


def shell_plan(key: str, seconds: int, out: Path, word: str) -> dict[str, Any]:
    return {
        "key": key,
        "seconds": seconds,
        "count": 1,
        "action": "shell",
        "params": {"cmd": f"echo {word} >> {out}"},
    }


# ---------------------------------------------------------------- the tests


def test_contents_of_the_executable(binary: Path) -> None:
    from PyInstaller.archive.readers import CArchiveReader

    names = set(CArchiveReader(str(binary)).toc)
    for needed in (
        "forsun_box/web/templates/base.html",
        "forsun_box/web/templates/plans.html",
        "forsun_box/web/static/console.css",
        "tzdata/zoneinfo/Europe/Berlin",
        "thrift/protocol/fastbinary.cpython-311-x86_64-linux-gnu.so",
        "uvloop/loop.cpython-311-x86_64-linux-gnu.so",
        "pycurl/_pycurl.cpython-311-x86_64-linux-gnu.so",
    ):
        assert needed in names, needed
    assert not any(n.startswith(("tkinter", "_tkinter", "playwright")) for n in names)
    # the optional back-ends' libraries (pip extras) are all inside: the executable has them all
    modules = set(CArchiveReader(str(binary)).open_embedded_archive("PYZ.pyz").toc)
    for module in ("redis.asyncio", "aiomysql", "pymysql", "greenstalk", "forsun_box.extras"):
        assert module in modules, module
    assert binary.stat().st_size <= 40 * 1024 * 1024


def test_version_help_and_documented_defaults(installed: Installed) -> None:
    version = installed.run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"forsun-box {__version__}"
    usage = installed.run("help")
    assert usage.returncode == 0 and "serve" in usage.stdout and "client" in usage.stdout
    serve_help = installed.run("serve", "--help")
    assert serve_help.returncode == 0
    # the embedded defaults, as the help shows them
    assert f"127.0.0.1:{DEFAULT_HTTP}" in serve_help.stdout
    assert str(DEFAULT_THRIFT) in serve_help.stdout


def test_links_named_forsund_and_forsun(installed: Installed) -> None:
    forsund = installed.app_dir / "forsund"
    forsun = installed.app_dir / "forsun"
    forsund.symlink_to("forsun-box")
    forsun.symlink_to("forsun-box")
    server_help = installed.run("--help", exe=forsund)
    assert server_help.returncode == 0 and "usage: forsund" in server_help.stdout
    client_help = installed.run("--help", exe=forsun)
    assert client_help.returncode == 0 and "usage: forsun " in client_help.stdout
    assert "set KEY" in client_help.stdout
    assert installed.run("version", exe=forsun).stdout.strip().endswith(__version__)


def test_time_zones_without_the_system_zone_files(installed: Installed) -> None:
    # No zone files where Python looks first: the bundled tzdata must answer.
    installed.env["PYTHONTZPATH"] = str(installed.home / "no-zoneinfo-here")
    installed.env["FORSUN_TIMEZONE"] = "Europe/Berlin"
    installed.start()
    assert wait_until(lambda: "time zone Europe/Berlin" in installed.log(), 30), installed.log()
    plan = installed.ok(
        "POST",
        "/v1/plan",
        {
            "key": "berlin",
            "seconds": 0,
            "minute": 0,
            "hour": 12,
            "action": "shell",
            "params": {"cmd": "true"},
        },
    )
    # 12:00 in Berlin (10:00 or 11:00 UTC, by the date's offset)
    berlin = datetime.fromtimestamp(plan["next_time"], ZoneInfo("Europe/Berlin"))
    assert (berlin.hour, berlin.minute, berlin.second) == (12, 0, 0)
    installed.stop()


def test_download_and_run(installed: Installed) -> None:
    out = installed.cwd.parent / "out"
    out.mkdir()
    installed.extensions_dir.mkdir()
    (installed.extensions_dir / "touch_ext.py").write_text(textwrap.dedent(FORSUN_STYLE_EXTENSION))
    installed.start()

    log = installed.log()
    assert f"data directory {installed.data_dir}" in log  # told where the data lives
    assert f"extensions folder {installed.extensions_dir}" in log
    assert "extension touch loaded" in log, log
    assert (installed.data_dir / "forsun-box.db").exists()

    # plans over HTTP and over Thrift; the shell ones fire a second later
    installed.ok("PUT", "/v1/plan", shell_plan("http-shell", 1, out / "http.txt", "from-http"))
    installed.ok(
        "POST",
        "/v1/plan",
        {
            "key": "http-daily",
            "seconds": 0,
            "minute": 30,
            "hour": 4,
            "action": "shell",
            "params": {"cmd": "true"},
        },
    )
    with thrift_client(installed.thrift_port) as client:
        plan = client.createTimeout(
            "thrift-shell",
            1,
            0,
            0,
            0,
            0,
            0,
            1,
            "shell",
            {"cmd": f"echo from-thrift >> {out / 'thrift.txt'}"},
        )
        assert plan.key == "thrift-shell"
        client.create("thrift-weekly", 0, 0, 9, -1, -1, 1, "shell", {"cmd": "true"})
    # the drop-in extension's action
    installed.ok(
        "PUT",
        "/v1/plan",
        {
            "key": "ext",
            "seconds": 1,
            "count": 1,
            "action": "touch",
            "params": {"file": str(out / "ext.txt"), "word": "hi"},
        },
    )
    # a bulk create big enough to be built in the create worker process
    bulk = [
        {
            "key": f"bulk-{i}",
            "seconds": 3600,
            "count": 1,
            "action": "shell",
            "params": {"cmd": f"echo {i}"},
        }
        for i in range(600)
    ]
    assert [p["key"] for p in installed.ok("PUT", "/v1/plan", bulk)] == [p["key"] for p in bulk]
    assert "create worker process" in installed.log()  # it started ...
    assert "create worker process stopped" not in installed.log()  # ... and did not stop
    # the client commands of the same executable
    cli = installed.run(
        "--port",
        str(installed.thrift_port),
        "set",
        "cli-hourly",
        "0",
        "15",
        "*",
        "*",
        "*",
        "*",
        "shell",
        "cmd=true",
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    got = installed.run("--port", str(installed.thrift_port), "get", "cli-hourly")
    assert got.returncode == 0 and "cli-hourly" in got.stdout

    for name, text in (
        ("http.txt", "from-http\n"),
        ("thrift.txt", "from-thrift\n"),
        ("ext.txt", "ext hi\n"),
    ):
        path = out / name
        assert wait_until(lambda p=path, t=text: p.exists() and p.read_text() == t, 60), (
            name,
            installed.log(),
        )

    # the console's pages
    for page in ("/", "/plans"):
        status, body = call(installed.http_port, "GET", page)
        assert status == 200 and isinstance(body, str), (page, status, body)
        assert body.lstrip().lower().startswith("<!doctype html>")
    status, css = call(installed.http_port, "GET", "/static/console.css")
    assert status == 200 and "{" in css

    keys = sorted(installed.ok("GET", "/v1/keys"))
    assert {"http-daily", "thrift-weekly", "cli-hourly"} <= set(keys)
    before = {key: installed.ok("GET", f"/v1/plan?key={key}") for key in keys}
    assert installed.stop() < STOP_WITHIN_S

    # restart: every plan is still there, unchanged
    installed.start()
    assert sorted(installed.ok("GET", "/v1/keys")) == keys
    assert {key: installed.ok("GET", f"/v1/plan?key={key}") for key in keys} == before
    assert installed.stop() < STOP_WITHIN_S


def test_demon_mode_keeps_running_after_the_starter_exits(installed: Installed) -> None:
    http_port, thrift_port = free_port(), free_port()
    log_file = installed.cwd.parent / "daemon.log"
    started = installed.run(
        "serve",
        "--demon",
        "--http",
        f"127.0.0.1:{http_port}",
        "--port",
        str(thrift_port),
        "--log",
        str(log_file),
    )
    assert started.returncode == 0, started.stderr
    pid_file = installed.data_dir / "forsun-box.pid"
    pid = int(pid_file.read_text())
    try:
        # the daemon is ready once its ports answer; the starter is gone by then, so
        # templates and lazily imported modules must come from the daemon's own files
        assert wait_until(lambda: _answers(http_port), ANSWER_WITHIN_S), log_file.read_text()
        status, body = call(http_port, "GET", "/plans")
        assert status == 200 and "<html" in body
    finally:
        os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not pid_file.exists(), STOP_WITHIN_S), log_file.read_text()
    assert "forsun-box stopped" in log_file.read_text()


if sys.platform != "linux":  # pragma: no cover - the executable is built for Linux
    pytestmark = pytest.mark.skip("the one-file executable is built for Linux")
