"""Disk trouble on a real, small filesystem: full, then space back; read-only at start-up.

The data directory is a 2 MiB tmpfs the test mounts (root is needed: the tests
skip with the reason elsewhere, but under CI a mount that works and a wrong
behaviour fail). Corrupted databases and snapshots and a newer schema are
covered by tests/integration/test_durability.py and tests/unit/test_store_contract.py.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Server


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs at tmp_path/fs, unmounted afterwards."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    try:
        done = _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt))
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot run mount: {e}")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def plan(key: str, pad: int = 0) -> dict[str, object]:
    return {
        "key": key,
        "seconds": 3600,
        "count": 1,
        "action": "shell",
        "params": {"cmd": "true", "pad": "x" * pad},
    }


def _fill(path: Path) -> None:
    """Write zeros until the filesystem is full (ENOSPC)."""
    with open(path, "wb", buffering=0) as f:
        for size in (65536, 512):  # then the last bytes too, so not even a page is left
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


def test_full_disk_answers_1004_keeps_serving_and_recovers(small_fs: Path) -> None:
    data = small_fs / "data"
    srv = Server(data, "--driver", "sqlite")
    srv.log_path = small_fs.parent / "server.log"  # the log must not need the full disk
    srv.start()
    try:
        committed = [srv.ok("PUT", "/v1/plan", plan(f"ok:{i}", 200))["key"] for i in range(50)]
        _fill(small_fs / "filler")
        codes = []
        for i in range(40):  # enough to exhaust the free pages of the database and its WAL
            status, reply = srv.call("PUT", "/v1/plan", plan(f"full:{i}", 4000))
            assert status == 200, (status, reply)
            codes.append(reply["errcode"])
        assert 1004 in codes, codes
        assert set(codes) <= {0, 1004}, codes
        failed = [f"full:{i}" for i, c in enumerate(codes) if c == 1004]
        # still running and serving reads; what was committed is intact
        assert srv.proc is not None and srv.proc.poll() is None
        assert srv.ok("GET", "/v1/ping") == {}
        keys = set(srv.ok("GET", "/v1/keys?prefix=ok:"))
        assert keys == set(committed)
        assert srv.ok("GET", "/v1/plan?key=ok:7")["params"]["pad"] == "x" * 200
        for key in failed[:5]:
            assert srv.call("GET", f"/v1/plan?key={key}")[1]["errcode"] == 1003
        # space returns: writes work again without a restart
        os.unlink(small_fs / "filler")
        assert srv.ok("PUT", "/v1/plan", plan("after", 100))["key"] == "after"
        assert srv.ok("DELETE", "/v1/plan?key=ok:0")["key"] == "ok:0"
        assert srv.stop() == 0
        # and a restart finds everything that was acknowledged
        srv = Server(data, "--driver", "sqlite")
        srv.log_path = small_fs.parent / "server2.log"
        srv.start()
        keys = set(srv.ok("GET", "/v1/keys?prefix="))
        assert keys >= (set(committed) - {"ok:0"}) | {"after"}
        assert "ok:0" not in keys
        assert not keys & set(failed)
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


@pytest.mark.parametrize("driver", ["sqlite", "mem"])
def test_read_only_data_dir_stops_startup_with_a_clear_message(small_fs: Path, driver: str) -> None:
    data = small_fs / "data"
    srv = Server(data, "--driver", driver)
    srv.log_path = small_fs.parent / "server.log"
    srv.start()
    srv.ok("PUT", "/v1/plan", plan("kept"))
    assert srv.stop() == 0
    done = _mount("-o", "remount,ro", str(small_fs))
    assert done.returncode == 0, done.stderr
    srv = Server(data, "--driver", driver)
    srv.log_path = small_fs.parent / "server-ro.log"
    with pytest.raises(RuntimeError) as info:
        srv.start()
    message = str(info.value)
    assert "forsun-box:" in message
    # one line on stderr naming the directory and what is wrong, never a silent empty start
    line = next(x for x in message.splitlines() if x.startswith("forsun-box:"))
    assert str(data) in line and ("not writable" in line or "read-only" in line), line
