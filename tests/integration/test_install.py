"""A newcomer's install: the wheel in a fresh venv, and `make run`.

The wheel is built from this checkout and installed without extras into a
new virtual environment, then run from a folder outside the checkout (so
nothing is imported from the source tree): every console page and static
file must answer, and a back-end whose library is missing names the extra
that brings it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, call, free_port, wait_until

pytestmark = pytest.mark.slow

CONSOLE_PAGES = ("/", "/plans", "/plans/new", "/when", "/plan?key=w-1")
STATIC = ("/static/console.css", "/static/console.js", "/static/favicon.svg")


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(the venv, the output of building the wheel)."""
    base = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools writes build/ and *.egg-info into the tree it builds
    source = base / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "dist", "build", "*.egg-info", "__pycache__", ".*_cache", "artifacts"
        ),
    )
    shutil.copytree(ROOT / "build", source / "build", ignore=shutil.ignore_patterns("work", "lib"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(base / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    wheels = list((base / "dist").glob("forsun_box-*.whl"))
    assert len(wheels) == 1, wheels
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            "-c",
            str(ROOT / "constraints.txt"),
            str(wheels[0]),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert installed.returncode == 0, installed.stderr
    return venv, built.stdout + built.stderr


def test_the_build_prints_no_license_warning(fresh_venv: tuple[Path, str]) -> None:
    _, output = fresh_venv
    assert "project.license" not in output and "License classifiers" not in output


def test_the_wheel_carries_the_console(fresh_venv: tuple[Path, str], tmp_path: Path) -> None:
    venv, _ = fresh_venv
    http, thrift = free_port(), free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(venv / "bin" / "forsun-box"),
                "serve",
                "--http",
                f"127.0.0.1:{http}",
                "--port",
                str(thrift),
                "--data-dir",
                str(tmp_path / "data"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(tmp_path),  # not the checkout: only the installed package is importable
            start_new_session=True,
        )
    try:

        def up() -> bool:
            try:
                return call(http, "GET", "/v1/ping", timeout=1)[0] == 200
            except OSError:
                return False

        assert wait_until(up, 30), log.read_text()
        # a plan on a back-end whose library the plain install lacks
        status, body = call(
            http,
            "PUT",
            "/v1/plan",
            {
                "key": "w-1",
                "seconds": 1,
                "count": 1,
                "action": "redis",
                "params": {"command": "PING"},
            },
        )
        assert status == 200 and body["errcode"] == 0, body
        for path in CONSOLE_PAGES:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}{path}", timeout=10) as resp:
                page = resp.read().decode()
                assert resp.status == 200 and "<html" in page, path
        for path in STATIC:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}{path}", timeout=10) as resp:
                assert resp.status == 200 and resp.read(), path

        # the firing failed, and its run says which extra to install
        def failed_run() -> list[dict[str, object]]:
            status, body = call(http, "GET", "/v2/plans/w-1/runs")
            return body.get("runs", []) if status == 200 else []

        assert wait_until(failed_run, 15), log.read_text()
        error = str(failed_run()[0]["error"])
        assert "pip install 'forsun-box[redis]'" in error, error
        assert "web console's files are missing" not in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log.read_text()


def test_the_redis_store_without_its_library_names_the_extra(
    fresh_venv: tuple[Path, str], tmp_path: Path
) -> None:
    venv, _ = fresh_venv
    got = subprocess.run(
        [
            str(venv / "bin" / "forsun-box"),
            "serve",
            "--driver",
            "redis",
            "--http",
            f"127.0.0.1:{free_port()}",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=60,
    )
    assert got.returncode == 1
    assert "the redis store needs the Python package 'redis'" in got.stderr
    assert "pip install 'forsun-box[redis]'" in got.stderr
    assert "Traceback" not in got.stderr


# ---------------------------------------------------------------- make run


def _make_run(args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "run", f"ARGS={args}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_make_run_passes_args_and_a_busy_port_names_the_flag(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        got = _make_run(
            f"--http 127.0.0.1:{port} --port {free_port()} --data-dir {tmp_path}", tmp_path
        )
    finally:
        busy.close()
    assert got.returncode != 0
    # where the client is, then the server's reason with the flag to change
    assert f"the forsun client is {ROOT / '.venv' / 'bin' / 'forsun'}" in got.stdout
    assert f"cannot listen on HTTP 127.0.0.1:{port}" in got.stderr
    assert "--http HOST:PORT" in got.stderr
    assert "make run ARGS=" in got.stderr


def test_make_run_serves_with_the_given_flags(tmp_path: Path) -> None:
    http = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    proc = subprocess.Popen(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(ROOT),
            "run",
            f"ARGS=--http 127.0.0.1:{http} --port {free_port()} --data-dir {tmp_path}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:

        def up() -> bool:
            try:
                return call(http, "GET", "/v1/ping", timeout=1)[0] == 200
            except OSError:
                return False

        assert wait_until(up, 30)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make and the server it started, by their group
        out, _ = proc.communicate(timeout=20)
    assert b"the forsun client is" in out


# ---------------------------------------------------------------- make test's Debian packages


def _stubs(tmp_path: Path, uid: int) -> dict[str, str]:
    """A PATH whose dpkg says chromium is missing, id says ``uid`` and apt-get records its call.

    Stand-ins for the package database and apt: a test can't uninstall a
    package or run apt for real.
    """
    stubs = tmp_path / "bin"
    stubs.mkdir()
    scripts = {
        "dpkg": '[ "$2" = chromium ] && exit 1; exit 0',
        "id": f"echo {uid}",
        "sudo": "exit 1",  # no password-less sudo
        "apt-get": f'echo "$*" >> {tmp_path / "apt.log"}',
    }
    for name, body in scripts.items():
        path = stubs / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{stubs}:/usr/bin:/bin"}


def test_make_test_names_the_command_when_it_cannot_install(tmp_path: Path) -> None:
    got = subprocess.run(
        ["bash", str(ROOT / ".ci" / "packages")],
        capture_output=True,
        text=True,
        env=_stubs(tmp_path, 1000),
        timeout=30,
    )
    assert got.returncode == 0
    assert "not installed: chromium; their tests will skip" in got.stderr
    assert "  sudo apt-get install chromium" in got.stderr
    assert not (tmp_path / "apt.log").exists()


def test_make_test_installs_what_is_missing_as_root(tmp_path: Path) -> None:
    got = subprocess.run(
        ["bash", str(ROOT / ".ci" / "packages")],
        capture_output=True,
        text=True,
        env=_stubs(tmp_path, 0),
        timeout=30,
    )
    assert got.returncode == 0, got.stderr
    assert "installing chromium" in got.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls == ["update -qq", "install -y -qq --no-install-recommends chromium"]
