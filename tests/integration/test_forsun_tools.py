"""forsun 0.1.4's own tools against forsun-box: its ``forsun`` client for every
command, its ``ThriftClient`` for every method, and its repository test's flow
(``run-tests``: ``forsund --conf=travis.conf --demon``, then ``forsun "set ..."``
on the next line, then the shell command's file).

forsun's tools come from ``../shared/peers/setup_forsun_peer.sh`` (tests/forsun_peer.py).
forsun-box's own client is compared with forsun's line for line: same stdout,
same exit status, apart from the differences docs/COMPAT.md lists (``help``'s
wording and ``version``'s number).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.forsun_confs import TRAVIS_LIKE_CONF
from tests.forsun_peer import TOOL_ENV, Forsund, Peer
from tests.helpers import ROOT, Server, free_port, thrift_client, wait_until
from tests.servers import ServerProcess

pytest_plugins = ["tests.servers", "tests.forsun_peer"]

FORSUND = str(Path(sys.executable).parent / "forsund")
# a plan line: str(datetime) with its offset, then the rest that is valid ``set`` input
PLAN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00 (\S+) (.*)$")


@pytest.fixture(scope="module")
def box(start_server: Callable[..., Server]) -> Server:
    return start_server(name="box", env=TOOL_ENV)


def ours(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """forsun-box's own ``forsun`` client, as forsun's is called."""
    env = dict(os.environ, **TOOL_ENV)
    return subprocess.run(
        [str(Path(sys.executable).parent / "forsun"), "--port", str(port), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def same(peer: Peer, port: int, *args: str) -> str:
    """Run both clients with ``args``; assert same stdout and exit status; return stdout."""
    theirs = peer.forsun(port, *args)
    mine = ours(port, *args)
    assert "Traceback" not in theirs.stdout + theirs.stderr, theirs
    assert (mine.stdout, mine.returncode) == (theirs.stdout, theirs.returncode), (args, theirs)
    return theirs.stdout


# ---------------------------------------------------------------- forsun's client, every command


def test_forsun_client_every_command_against_forsun_box(forsun_peer: Peer, box: Server) -> None:
    port = box.thrift_port
    # set: forsun's client creates the plans; each line it prints is a plan line
    for key, line in (
        ("cal", "set cal 5 32 16 * * * shell 'cmd=true'"),
        ("cal-2", "set cal-2 0 0 3 1 * * http \"url='http://127.0.0.1:9/x?a=1'\""),
        ("del", "set del */900/3 * * * * * shell 'cmd=true'"),
        ("del-m", "set del-m * */45/2 * * * * sh 'cmd=true'"),
    ):
        r = forsun_peer.forsun(port, line)
        assert r.returncode == 0, r
        m = PLAN_LINE.match(r.stdout.rstrip("\n"))
        assert m and m.group(1) == key, r.stdout
        # ours prints the same line for the same plan (set again: a calendar plan's
        # next time is the same; a delay plan's may be a second on)
        mine = ours(port, line)
        assert mine.returncode == 0, mine
        assert PLAN_LINE.match(mine.stdout.rstrip("\n")).group(2) == m.group(2)  # type: ignore[union-attr]
    assert box.ok("GET", "/v1/plan?key=del")["count"] == 3

    # get, ls (plans, not keys), ls PREFIX, ls PREFIX*, time T, time "local", current
    got = same(forsun_peer, port, "get cal")
    assert PLAN_LINE.match(got.rstrip("\n")).group(2) == "5 32 16 * * * shell \"cmd='true'\""  # type: ignore[union-attr]
    listing = same(forsun_peer, port, "ls")
    assert sorted(PLAN_LINE.match(x).group(1) for x in listing.splitlines()) == [  # type: ignore[union-attr]
        "cal",
        "cal-2",
        "del",
        "del-m",
    ]
    assert len(same(forsun_peer, port, "ls cal").splitlines()) == 2
    assert same(forsun_peer, port, "ls cal*") == same(forsun_peer, port, "ls cal")
    at = box.ok("GET", "/v1/plan?key=cal")["next_time"]
    assert "cal " in same(forsun_peer, port, f"time {at}")
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))  # TZ=UTC for both
    assert same(forsun_peer, port, f"time '{local}'") == same(forsun_peer, port, f"time {at}")
    assert same(forsun_peer, port, "time 1000") == ""  # nothing at all, as forsun
    same(forsun_peer, port, "current")
    same(forsun_peer, port, "time")

    # rm prints success; each client removes its own key
    box.ok("PUT", "/v1/plan", {"key": "gone-1", "seconds": 600})
    box.ok("PUT", "/v1/plan", {"key": "gone-2", "seconds": 600})
    theirs, mine = forsun_peer.forsun(port, "rm gone-1"), ours(port, "rm gone-2")
    assert (theirs.stdout, theirs.returncode) == (mine.stdout, mine.returncode) == ("success\n", 0)

    # errors: the same lines, the same exit status
    assert same(forsun_peer, port, "get nope").startswith("cmd ForsunPlanError:  1003 ")
    assert same(forsun_peer, port, "rm nope").startswith("cmd ForsunPlanError:  1003 ")
    assert same(forsun_peer, port, "set bad */5 * * * * * nosuch 'a=1'").startswith(
        "cmd ForsunPlanError:  1006 "
    )
    assert same(forsun_peer, port, "frobnicate") == "Unknown cmd  frobnicate\n"
    assert same(forsun_peer, port, "exit") == ""

    # info: forsun's client prints every key (it crashed on missing ones), ours the same lines
    theirs = forsun_peer.forsun(port, "info")
    assert theirs.returncode == 0 and "Traceback" not in theirs.stderr, theirs
    lines = theirs.stdout.splitlines()
    assert (
        "timer_loop_count:\t" in theirs.stdout
        and "timer_loop_ready_error_count:\t" in theirs.stdout
    )
    assert re.search(
        r"^start_time:\t\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00:00$", theirs.stdout, re.M
    )
    mine = ours(port, "info")
    assert mine.returncode == 0
    # what moves between two calls: the process, the clock, the connections and
    # requests of the two clients, the engine's wake-ups
    volatile = (
        "cpu_",
        "mem_",
        "current_time",
        "requested_count",
        "connected_count",
        "connecting",
        "timer_loop_count",
    )
    mask = lambda text: [  # noqa: E731
        line.split("\t")[0] if line.startswith(volatile) or "requesting" in line else line
        for line in text.splitlines()
    ]
    assert mask(mine.stdout) == mask(theirs.stdout)
    assert len(lines) == 43  # 36 keys in 7 groups, a blank line after each

    # help: the same commands in the same order, one "NAME - ..." line each
    theirs, mine = forsun_peer.forsun(port, "help"), ours(port, "help")
    assert [x.split(" - ")[0] for x in mine.stdout.splitlines()] == [
        x.split(" - ")[0] for x in theirs.stdout.splitlines()
    ]
    # version: the bare version number (forsun-box's own)
    mine = ours(port, "version")
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*\n", mine.stdout) and mine.returncode == 0


def test_our_client_prints_forsuns_lines_from_forsuns_server(
    forsun_peer: Peer, forsund: Forsund
) -> None:
    port = forsund.thrift_port
    assert forsun_peer.forsun(port, "set fx 1 2 3 * * * shell 'cmd=true'").returncode == 0
    assert forsun_peer.forsun(port, "set fy */700/2 * * * * * shell 'cmd=true'").returncode == 0
    for command in ("get fx", "get fy", "ls", "ls f", "time", "current", "get nope", "rm nope"):
        same(forsun_peer, port, command)
    at = forsund.call("GET", "/v1/plan?key=fx")[1]["data"]["next_time"]
    assert "fx" in same(forsun_peer, port, f"time {at}")


def test_our_long_and_json_views(box: Server) -> None:
    import json

    box.ok("POST", "/v1/plan", {"key": "view", "seconds": 0, "minute": 5, "action": "shell"})
    r = ours(box.thrift_port, "--long", "get view")
    assert r.returncode == 0 and "key:\tview" in r.stdout and "is_time_out:\tfalse" in r.stdout
    r = ours(box.thrift_port, "--json", "get view")
    assert json.loads(r.stdout)["minute"] == 5
    r = ours(box.thrift_port, "--json", "get nope")
    assert r.returncode == 1 and json.loads(r.stdout)["errcode"] == 1003
    r = ours(box.thrift_port, "--long", "ls view")
    assert r.stdout == "view\n"


def test_fire_then_runs_shows_the_run_and_empty_lines(box: Server, tmp_path: Path) -> None:
    mark = tmp_path / "fired"
    box.ok(
        "PUT", "/v1/plan", {"key": "fr", "seconds": 3600, "params": {"cmd": f"echo x >> {mark}"}}
    )
    r = ours(box.thrift_port, "--exe", "runs fr; fire fr; runs fr")
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[0] == "no runs of fr" and lines[1] == "status:\t1"
    assert len(lines) == 3 and lines[2].split("\t")[-1] == "ok"
    r = ours(box.thrift_port, "preview nope-nope")
    assert r.returncode == 1 and r.stdout.startswith("cmd ForsunPlanError:  1003 ")


# ---------------------------------------------------------------- forsun's ThriftClient, every method


def _mask(value: object) -> object:
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, dict):
        return {
            k: ("T" if k in ("next_time", "last_timeout") else _mask(v))
            for k, v in value.items()
            if k != "message"  # forsun's messages are fixed Chinese strings; ours say more
        }
    return value


THRIFT_CALLS: list[tuple[object, ...]] = [
    ("execute", "ping"),
    ("create", "tc", 7, 33, 16, -1, -1, -1, "shell", {"cmd": "true"}),
    ("create_timeout", "tt", 600, 0, 0, 0, 0, -1, 2, "shell", {"cmd": "true"}),
    ("get", "tc"),
    ("get", "nope"),
    ("get", ""),
    ("get_keys", "t"),
    ("get_time", 1000),
    ("get_current",),
    ("remove", "tt"),
    ("remove", "nope"),
    ("create", "bad", 5, -1, -1, -1, -1, -1, "nosuch", {}),
    ("create", "past", 0, 0, 0, 1, 1, -1, "shell", {}),
    ("execute", "forsun_call", "tc", 1000, {"a": "b"}),
]
#: index in THRIFT_CALLS -> (forsun's answer, forsun-box's), as docs/COMPAT.md lists them
THRIFT_DIFFERENCES = {
    5: ({"error": 1003}, {"error": 1007}),  # get(""): a missing key
    # forsun's server doesn't implement forsun_call; forsun-box accepts it (a thrift
    # action's target)
    13: ({"exception": "TApplicationException"}, None),
}


def test_thrift_client_every_method_same_answers(
    forsun_peer: Peer, box: Server, forsund: Forsund
) -> None:
    theirs = forsun_peer.thrift_calls(forsund.thrift_port, THRIFT_CALLS)
    mine = forsun_peer.thrift_calls(box.thrift_port, THRIFT_CALLS)
    assert mine[0] == theirs[0] == 0  # ping
    for i, (call, a, b) in enumerate(zip(THRIFT_CALLS, theirs, mine, strict=True)):
        if i in THRIFT_DIFFERENCES:  # docs/COMPAT.md
            assert (_mask(a), _mask(b)) == THRIFT_DIFFERENCES[i], call
        else:
            assert _mask(b) == _mask(a), call
    # the time and info methods answer what the plans say
    at = mine[3]["next_time"]
    both = [
        forsun_peer.thrift_calls(port, [("get_time", at), ("info",)])
        for port in (forsund.thrift_port, box.thrift_port)
    ]
    for plans, info in both:
        assert [p["key"] for p in plans] == ["tc"]
        assert {"timer_loop_count", "start_time", "plan_count"} <= set(info)
    assert set(both[0][1]) <= set(both[1][1])  # every key forsun's info has


# ---------------------------------------------------------------- forsun's run-tests flow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][0] != "Z"
    except OSError:
        return True


def test_forsun_run_tests_flow_with_a_travis_conf(
    forsun_peer: Peer, redis_server: ServerProcess, tmp_path: Path
) -> None:
    port = free_port()
    conf = tmp_path / "travis.conf"
    conf.write_text(
        TRAVIS_LIKE_CONF.format(
            port=port,
            log=tmp_path / "forsun.log",
            redis_port=redis_server.port,
            prefix=f"run-tests-{port}",
            cwd=tmp_path,
        )
    )
    script = tmp_path / "forsun_test.sh"
    result = tmp_path / "forsun_test.log"
    script.write_text(f"#!/bin/bash\necho success > {result}\n")
    script.chmod(0o755)
    env = dict(os.environ, FORSUN_BOX_DATA_DIR=str(tmp_path / "data"), **TOOL_ENV)
    pid_file = tmp_path / "data" / "forsun-box.pid"
    with open(tmp_path / "start.log", "wb") as out:
        started = subprocess.run(
            [FORSUND, f"--conf={conf}", "--demon"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=60,
            cwd=str(ROOT),
        )
    assert started.returncode == 0, (tmp_path / "start.log").read_text()
    pid = int(pid_file.read_text())
    try:
        assert _alive(pid)
        # the very next command, as run-tests does: the Thrift port already answers
        r = forsun_peer.forsun(port, f"set shell */2/1 * * * * * shell 'cmd={script}'")
        assert r.returncode == 0 and PLAN_LINE.match(r.stdout.rstrip("\n")), r
        assert wait_until(lambda: result.exists() and "success" in result.read_text(), 20)
    finally:
        os.kill(pid, signal.SIGHUP)  # run-tests stops it with HUP
        assert wait_until(lambda: not _alive(pid), 20)
    assert not pid_file.exists()


def test_demon_reports_a_failed_start_once_and_exits_1(tmp_path: Path) -> None:
    env = dict(os.environ, FORSUN_BOX_DATA_DIR=str(tmp_path / "data"))
    r = subprocess.run(
        [FORSUND, "--demon", "--driver", "nosuch", "--port", "0", "--http", ""],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 1
    assert r.stderr.count("unknown store driver 'nosuch'") == 1, r.stderr
    with thrift_busy() as taken:
        r = subprocess.run(
            [FORSUND, "--demon", "--port", str(taken), "--http", ""],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert r.returncode == 1 and f"cannot listen on Thrift 127.0.0.1:{taken}" in r.stderr, r.stderr
    assert not (tmp_path / "data" / "forsun-box.pid").exists()


class thrift_busy:
    """A port held open by a listening socket for the duration of the block."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        port: int = self.sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_foreground_start_error_is_printed_once(tmp_path: Path) -> None:
    r = subprocess.run(
        [FORSUND, "--data-dir", str(tmp_path), "--driver", "nosuch", "--port", "0", "--http", ""],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and r.stderr.count("unknown store driver 'nosuch'") == 1, r.stderr


# ---------------------------------------------------------------- server_mode AGENT


def test_agent_stores_and_serves_but_never_fires_then_a_timer_fires_once(tmp_path: Path) -> None:
    mark = tmp_path / "fired"
    data = tmp_path / "data"
    agent = Server(data, "--server-mode", "AGENT").start()
    try:
        plan = agent.ok(
            "PUT",
            "/v1/plan",
            {"key": "ag", "seconds": 1, "count": 1, "params": {"cmd": f"echo x >> {mark}"}},
        )
        assert agent.ok("GET", "/v1/plan?key=ag")["key"] == "ag"
        info = agent.ok("GET", "/v1/info")
        assert info["server_mode"] == "AGENT"
        due = plan["next_time"]
        # well past its due second, the agent has not run its engine once
        assert wait_until(lambda: time.time() > due + 2, 10)
        info = agent.ok("GET", "/v1/info")
        assert (info["timer_loop_count"], info["action_executed_count"]) == ("0", "0")
        assert not mark.exists()
        with thrift_client(agent.thrift_port) as client:
            assert client.getRuns("ag", 10) == []
    finally:
        assert agent.stop() == 0
    # the same store under a TIMER node: the plan the agent stored fires, once
    timer = Server(data).start()
    try:
        assert wait_until(lambda: mark.exists() and mark.read_text() == "x\n", 20)
        assert wait_until(
            lambda: timer.call("GET", "/v1/plan?key=ag")[1]["errcode"] == 1003, 10
        )  # a one-shot: gone once fired
        assert mark.read_text() == "x\n"
    finally:
        assert timer.stop() == 0


def test_agent_on_redis_hands_over_and_never_shares_a_live_namespace(
    redis_server: ServerProcess, tmp_path: Path
) -> None:
    mark = tmp_path / "fired"
    store = [
        "--driver",
        "redis",
        "--driver-redis-port",
        str(redis_server.port),
        "--driver-redis-prefix",
        f"agent-{redis_server.port}-{os.getpid()}",
    ]
    agent = Server(tmp_path / "agent", "--server-mode", "AGENT", *store).start()
    try:
        plan = agent.ok(
            "PUT",
            "/v1/plan",
            {"key": "rg", "seconds": 1, "count": 1, "params": {"cmd": f"echo x >> {mark}"}},
        )
        assert wait_until(lambda: time.time() > plan["next_time"] + 2, 10)
        assert agent.ok("GET", "/v1/info")["timer_loop_count"] == "0" and not mark.exists()
        # a TIMER beside the live agent on the same namespace is refused, not run twice
        beside = Server(tmp_path / "beside", *store).start(wait=False)
        assert beside.proc is not None and beside.proc.wait(30) == 1
        assert "in use by another forsun-box node" in beside.log()
    finally:
        assert agent.stop() == 0
    timer = Server(tmp_path / "timer", *store).start()
    try:
        assert wait_until(lambda: mark.exists() and mark.read_text() == "x\n", 20)
        assert wait_until(lambda: timer.call("GET", "/v1/plan?key=rg")[1]["errcode"] == 1003, 10)
        assert mark.read_text() == "x\n"
    finally:
        assert timer.stop() == 0


def test_unreachable_server_is_forsuns_line_and_status_1(forsun_peer: Peer) -> None:
    with thrift_busy() as port:
        pass  # now closed: nothing listens there
    theirs, mine = forsun_peer.forsun(port, "get x"), ours(port, "get x")
    prefix = "connect forsun server fail:  "
    assert theirs.stdout.startswith(prefix) and mine.stdout.startswith(prefix), (theirs, mine)
    assert theirs.returncode == mine.returncode == 1
    assert len(mine.stdout.splitlines()) == 1 and "Connection refused" in mine.stdout
