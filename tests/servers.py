"""Real redis-server, mariadbd, beanstalkd and PostgreSQL for the tests, on free loopback ports.

Each fixture is session-scoped: the server starts once, in a temporary
directory, and is stopped at the end of the session. When the binary is
not installed the tests that need it are skipped with the reason, except
under CI (``CI=true``), where a missing server is a failure: ``.ci/run``
installs them, so their absence there is a broken build, not an excuse.

Use in a test module::

    from tests.servers import beanstalk_server, mysql_server, redis_server  # noqa: F401
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from tests.helpers import free_port, wait_until

# mariadbd lives in sbin, which is not on every user's PATH
_EXTRA_PATH = "/usr/sbin:/usr/local/sbin:/sbin"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip the test for what this machine lacks; under CI, which installs it, fail."""
    if in_ci():
        pytest.fail(f"{reason}; CI must install it (.ci/run)")
    pytest.skip(reason)


def find_binary(*names: str) -> str | None:
    """The first of ``names`` found on PATH or in the sbin directories."""
    search = os.environ.get("PATH", "") + os.pathsep + _EXTRA_PATH
    for name in names:
        path = shutil.which(name, path=search)
        if path:
            return path
    return None


def need_binary(package: str, *names: str) -> str:
    """The binary's path; skip the test (fail under CI) when it is missing."""
    path = find_binary(*names)
    if path is None:
        unavailable(f"{names[0]} is not installed (apt-get install {package})")
    return path


@dataclass
class ServerProcess:
    """A server started by a fixture: where it listens and how to stop it."""

    name: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]
    host: str = "127.0.0.1"
    info: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        text = ""
        for path in sorted(self.workdir.glob("*.log")):
            text += path.read_text(errors="replace")[-4000:]
        return text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_port(server: ServerProcess, timeout: float = 30.0) -> None:
    """Wait until ``server`` accepts TCP connections; raise with its log otherwise."""

    def listening() -> bool:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode}:\n{server.log()}"
            )
        try:
            with socket.create_connection((server.host, server.port), timeout=0.5):
                return True
        except OSError:
            return False

    if wait_until(listening, timeout, interval=0.05):
        return
    server.stop()
    raise RuntimeError(f"{server.name} did not listen within {timeout} s:\n{server.log()}")


def _start(name: str, argv: list[str], workdir: Path, port: int) -> ServerProcess:
    with open(workdir / f"{name}.log", "ab") as log:  # the child keeps its own copy
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(workdir), start_new_session=True
        )
    server = ServerProcess(name=name, port=port, workdir=workdir, proc=proc)
    wait_port(server)
    return server


def start_redis(workdir: Path) -> ServerProcess:
    binary = need_binary("redis-server", "redis-server")
    port = free_port()
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "yes",
    ]
    return _start("redis", argv, workdir, port)


def start_beanstalkd(workdir: Path) -> ServerProcess:
    binary = need_binary("beanstalkd", "beanstalkd")
    port = free_port()
    return _start("beanstalkd", [binary, "-l", "127.0.0.1", "-p", str(port)], workdir, port)


def start_mariadb(workdir: Path) -> ServerProcess:
    """mariadbd on a fresh data directory; no grant tables, so any user may connect."""
    daemon = need_binary("mariadb-server", "mariadbd", "mysqld")
    installer = need_binary("mariadb-server", "mariadb-install-db", "mysql_install_db")
    data = workdir / "data"
    user = _current_user()
    with open(workdir / "install.log", "wb") as log:
        subprocess.run(
            [
                installer,
                "--no-defaults",
                f"--datadir={data}",
                f"--user={user}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=120,
        )
    port = free_port()
    argv = [
        daemon,
        "--no-defaults",
        f"--datadir={data}",
        f"--socket={workdir / 'mysqld.sock'}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        f"--user={user}",
        f"--pid-file={workdir / 'mysqld.pid'}",
        f"--log-error={workdir / 'error.log'}",
        "--skip-log-bin",
        "--innodb-buffer-pool-size=16M",
        "--skip-grant-tables",
    ]
    server = _start("mariadb", argv, workdir, port)
    server.info["user"] = "root"
    return server


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A redis-server for the whole session."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def beanstalk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A beanstalkd for the whole session."""
    server = start_beanstalkd(tmp_path_factory.mktemp("beanstalkd"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mysql_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A mariadbd for the whole session."""
    server = start_mariadb(tmp_path_factory.mktemp("mariadb"))
    yield server
    server.stop()


# -- PostgreSQL -------------------------------------------------------------------


def find_postgres_bin(name: str) -> str | None:
    """A PostgreSQL server program: Debian keeps them in /usr/lib/postgresql/N/bin."""
    import glob

    found = find_binary(name)
    if found:
        return found
    versions = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return versions[-1] if versions else None


def need_postgres_bin(name: str) -> str:
    path = find_postgres_bin(name)
    if path is None:
        unavailable(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return path


@dataclass
class PostgresServer:
    """A PostgreSQL cluster started by a fixture with initdb + pg_ctl.

    PostgreSQL refuses to run as root, so under root (CI) it runs as the
    ``postgres`` user Debian's package creates, in a data directory that user
    owns. It is stopped through pg_ctl on that data directory.
    """

    port: int
    workdir: Path
    pg_ctl: str
    user_prefix: list[str]
    host: str = "127.0.0.1"
    role: str = "forsun"
    _next_db: int = 0

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.role}@{self.host}:{self.port}/{database}"

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    def log(self) -> str:
        try:
            return (self.workdir / "postgres.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser on the ``postgres`` database."""
        import asyncio

        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(self.dsn(), timeout=30)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(run())

    def create_database(self) -> str:
        """A fresh, empty database; returns its name."""
        self._next_db += 1
        name = f"t{os.getpid()}_{self._next_db}"
        self.admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def pg_ctl_run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*self.user_prefix, self.pg_ctl, "-D", str(self.data), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.workdir} -c listen_addresses={self.host} "
            "-c fsync=off -c full_page_writes=off -c max_connections=200 "
            "-c shared_buffers=32MB"
        )
        done = self.pg_ctl_run(
            "-l", str(self.workdir / "postgres.log"), "-o", opts, "-w", "-t", "60", "start"
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stdout.decode()}\n{self.log()}")

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self.pg_ctl_run("-m", mode, "-w", "-t", "60", "stop")


def start_postgres() -> PostgresServer:
    """initdb a fresh cluster in a new directory under the system temp dir and start it.

    Not under pytest's temp dirs: those are private to the user running the
    tests, and under root the server runs as another user.
    """
    import pwd
    import tempfile

    initdb = need_postgres_bin("initdb")
    pg_ctl = need_postgres_bin("pg_ctl")
    workdir = Path(tempfile.mkdtemp(prefix="forsun-box-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(workdir, ignore_errors=True)
            pytest.fail("running as root needs the postgres user (apt-get install postgresql)")
        os.chown(workdir, user.pw_uid, user.pw_gid)
        runuser = find_binary("runuser")
        if runuser is None:
            pytest.fail("running PostgreSQL under root needs runuser (util-linux)")
        prefix = [runuser, "-u", "postgres", "--"]
    os.chmod(workdir, 0o700)
    server = PostgresServer(port=free_port(), workdir=workdir, pg_ctl=pg_ctl, user_prefix=prefix)
    done = subprocess.run(
        [
            *prefix,
            initdb,
            "-D",
            str(server.data),
            "-U",
            server.role,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {done.stdout.decode(errors='replace')}")
    server.start()
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (stopped, and its files removed, at the end)."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """The DSN of a fresh database of the session's server, dropped after the test."""
    name = postgres_server.create_database()
    yield postgres_server.dsn(name)
    postgres_server.drop_database(name)
