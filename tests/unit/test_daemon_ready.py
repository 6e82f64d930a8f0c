"""``--demon``: the starting process returns only once the daemon says how start-up went."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, wait_until

SCRIPT = """
import os, sys, time
from forsun_box.daemon import daemonize
pid_file, mode = sys.argv[1], sys.argv[2]
readiness = daemonize(pid_file)
time.sleep(0.3)  # start-up takes a while: the starter must wait for it
if mode == "ready":
    open(pid_file + ".serving", "w").close()
    readiness.ready()
    stop = pid_file + ".stop"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not os.path.exists(stop):
        time.sleep(0.02)  # the daemon polls for its stop file (no test helpers here)
elif mode == "failed":
    readiness.failed("cannot listen on Thrift 127.0.0.1:1: Address in use")
    sys.exit(1)
else:  # dies without a word
    os._exit(3)
"""

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def start(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "daemon.py"
    script.write_text(SCRIPT)
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "d.pid"), mode],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def test_starter_returns_0_only_once_the_daemon_is_ready(tmp_path: Path) -> None:
    r = start(tmp_path, "ready")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d.pid.serving").exists()  # written before ready(), never after
    pid = int((tmp_path / "d.pid").read_text())
    (tmp_path / "d.pid.stop").touch()
    assert wait_until(lambda: not (tmp_path / "d.pid").exists(), 10), pid


def test_starter_prints_the_reason_and_exits_1(tmp_path: Path) -> None:
    r = start(tmp_path, "failed")
    assert r.returncode == 1
    assert r.stderr == "forsun-box: cannot listen on Thrift 127.0.0.1:1: Address in use\n"


def test_a_daemon_dying_silently_fails_the_start(tmp_path: Path) -> None:
    began = time.monotonic()
    r = start(tmp_path, "silent")
    assert r.returncode == 1 and "exited during start-up" in r.stderr
    assert time.monotonic() - began < 20
