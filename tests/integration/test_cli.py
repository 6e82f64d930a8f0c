"""The ``forsun`` client run as a subprocess against a real forsun-box, and its
interactive shell driven through a pty."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from forsun_box.cli.client import (
    CommandError,
    format_params,
    parse_argv,
    parse_instant,
    split_commands,
)
from tests.helpers import ROOT, Server, free_port


def forsun(
    port: int,
    *args: str,
    stdin: str | None = None,
    home: Path | None = None,
    view: tuple[str, ...] = ("--long",),
) -> subprocess.CompletedProcess[str]:
    """The client with its rich view by default (forsun's layout: tests/integration/
    test_forsun_tools.py compares it with forsun's own client)."""
    env = dict(os.environ)
    if home is not None:
        env["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "forsun_box", "--port", str(port), *view, *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=str(ROOT),
        env=env,
        timeout=30,
    )


def fields(text: str) -> dict[str, str]:
    """``name:<TAB>value`` lines as a dict (the first of each name)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":\t")
        if sep and name not in out:
            out[name] = value
    return out


def test_set_as_separate_words_creates_delay_plan(server: Server) -> None:
    before = int(time.time())
    r = forsun(
        server.thrift_port, "set", "c1", "*/50/2", "*", "*", "*", "*", "*", "shell", "cmd=echo hi"
    )
    assert r.returncode == 0, r.stderr
    plan = fields(r.stdout)
    assert plan["key"] == "c1" and plan["is_time_out"] == "true"
    assert plan["second"] == "50" and plan["count"] == "2"
    assert plan["params"] == "cmd='echo hi'"
    assert before + 50 <= int(plan["next_time"].split()[0]) <= int(time.time()) + 50
    assert server.ok("GET", "/v1/plan?key=c1")["params"] == {"cmd": "echo hi"}


def test_exe_runs_several_commands_and_keeps_quoted_url(server: Server) -> None:
    url = "http://127.0.0.1:9000/hook?a=1&b=x=y"
    r = forsun(
        server.thrift_port,
        "--exe",
        f"set c2 0 32 16 * * * http \"url='{url}'\"; get c2; rm c2; ls c2",
    )
    assert r.returncode == 0, r.stderr
    blocks = r.stdout.strip().split("key:\t")[1:]
    assert len(blocks) == 3  # set, get, rm each print the plan; ls prints no key
    for block in blocks:
        plan = fields("key:\t" + block)
        assert plan["key"].startswith("c2")
        assert plan["params"] == f"url={url}"
        assert (plan["second"], plan["minute"], plan["hour"]) == ("0", "32", "16")
        assert plan["is_time_out"] == "false"
    assert r.stdout.strip().splitlines()[-1] != "c2"  # removed before ls
    assert server.call("GET", "/v1/plan?key=c2")[1]["errcode"] == 1003


def test_one_string_command_as_forsun_takes_it(server: Server) -> None:
    r = forsun(server.thrift_port, "set c3 */600 * * * * * http url=http://x/;method=post")
    assert r.returncode == 0, r.stderr
    assert server.ok("GET", "/v1/plan?key=c3")["params"] == {"url": "http://x/", "method": "post"}


def test_ls_and_time(server: Server) -> None:
    forsun(
        server.thrift_port,
        "--exe",
        "set ls-a */900 * * * * * shell true; set ls-b */900 * * * * * shell true",
    )
    r = forsun(server.thrift_port, "ls", "ls-")
    assert r.returncode == 0 and r.stdout.split() == ["ls-a", "ls-b"]
    at = server.ok("GET", "/v1/plan?key=ls-a")["next_time"]
    r = forsun(server.thrift_port, "time", str(at))
    assert r.returncode == 0, r.stderr
    assert {"ls-a", "ls-b"} <= {
        v for k, v in (line.split(":\t", 1) for line in r.stdout.splitlines() if line) if k == "key"
    }
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    r2 = forsun(server.thrift_port, "time", local)
    assert r2.returncode == 0 and r2.stdout == r.stdout
    assert forsun(server.thrift_port, "current").returncode == 0


def test_info_prints_name_tab_value_lines(server: Server) -> None:
    r = forsun(server.thrift_port, "info")
    assert r.returncode == 0, r.stderr
    info = fields(r.stdout)
    assert info["bind_port"] == f"127.0.0.1:{server.thrift_port}"
    assert {"forsun_version", "connected_count", "plan_count", "actions"} <= set(info)
    assert all("\t" in line for line in r.stdout.splitlines())


def test_version_and_help_need_no_server() -> None:
    port = free_port()
    r = forsun(port, "version")
    assert r.returncode == 0 and r.stdout.startswith("forsun-box ")
    r = forsun(port, "help")
    assert r.returncode == 0 and "set KEY S M H D MON W ACTION PARAMS" in r.stdout


def test_unreachable_server_is_one_line_and_status_1() -> None:
    r = forsun(free_port(), "ls")
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1
    assert "cannot connect" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        ("get nope-nope", "1003"),
        ("rm nope-nope", "1003"),
        ("set k1 */5", "missing argument"),
        ("set k1 x * * * * * shell true", "second"),
        ("set k1 */5 * * * * * nosuch a=1", "1006"),
        ("set k1 */5 * * * * * nosuch true", "1008"),
        ("frobnicate", "unknown command"),
        ("time yesterday", "time"),
        ("get 'unterminated", "cannot parse"),
    ],
)
def test_malformed_or_failing_command_is_one_line_and_status_1(
    server: Server, command: str, needle: str
) -> None:
    r = forsun(server.thrift_port, command)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_stops_at_first_failing_command(server: Server) -> None:
    r = forsun(server.thrift_port, "--exe", "get missing-x; set after-fail */900 * * * * * sh ls")
    assert r.returncode == 1
    assert server.call("GET", "/v1/plan?key=after-fail")[1]["errcode"] == 1003


def test_commands_from_piped_stdin(server: Server) -> None:
    r = forsun(server.thrift_port, stdin="set piped */900 * * * * * shell ls\nls piped\nexit\nls\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "piped"


def test_forsun_box_help_client_shows_commands() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "forsun_box", "help", "client"],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=30,
    )
    assert r.returncode == 0 and "forsun> " not in r.stdout and "ls [PREFIX]" in r.stdout


# ---------------------------------------------------------------- the interactive shell


def _read_until(fd: int, needle: bytes, timeout: float = 15) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} not seen; got {data!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


def test_interactive_shell_through_a_pty(server: Server, tmp_path: Path) -> None:
    env = dict(os.environ, HOME=str(tmp_path), TERM="dumb")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the client on the pty
        os.chdir(str(ROOT))
        os.execve(
            sys.executable,
            [sys.executable, "-m", "forsun_box", "--port", str(server.thrift_port), "--long"],
            env,
        )
    try:
        _read_until(fd, b"forsun> ")
        os.write(fd, b"set pty-key */900 * * * * * shell 'cmd=ls'\r")
        out = _read_until(fd, b"forsun> ")
        assert b"key:\tpty-key" in out.replace(b"\r\n", b"\n")
        os.write(fd, b"get missing-in-pty\r")
        out = _read_until(fd, b"forsun> ")
        assert b"1003" in out  # the error is shown and the shell goes on
        os.write(fd, b"ls pty-\r")
        out = _read_until(fd, b"forsun> ")
        assert b"pty-key" in out
        os.write(fd, b"exit\r")
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        history = (tmp_path / ".forsun_history").read_text()
        assert "ls pty-" in history and "exit" in history
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


# ---------------------------------------------------------------- pure helpers


def test_split_commands_respects_quotes() -> None:
    assert split_commands("set a 1 * * * * * shell 'x;y'; get a") == [
        "set a 1 * * * * * shell 'x;y'",
        "get a",
    ]
    assert split_commands("ls; ; info;") == ["ls", "info"]
    assert split_commands("set a 1 * * * * * http url=x;method=post") == [
        "set a 1 * * * * * http url=x;method=post"
    ]


def test_parse_argv() -> None:
    assert parse_argv(["--host", "h", "--port=7", "ls"]) == ("h", 7, "ls", False)
    assert parse_argv(["--exe", "ls; info"]) == ("127.0.0.1", 6458, "ls; info", False)
    assert parse_argv(["set", "k", "*", "shell", "a b"])[2] == "set k '*' shell 'a b'"
    assert parse_argv([])[2] is None
    assert parse_argv(["-h"])[3] is True


def test_format_params_round_trips_through_the_set_parser() -> None:
    from forsun_box.api.formats.crontab import parse_params

    params = {"url": "http://h/?a=1&b=2", "body": "x; y", "q": "it's"}
    assert parse_params(format_params(params), "http") == params


# ---------------------------------------------------------------- forsun-box's additions


def test_help_lists_the_added_commands() -> None:
    r = forsun(free_port(), "help")
    assert r.returncode == 0
    for usage in (
        "pause KEY",
        "resume KEY",
        "fire KEY",
        "runs KEY [N]",
        "preview KEY [N]",
        'cron KEY "EXPR" ACTION PARAMS',
        'at KEY "YYYY-mm-dd HH:MM:SS[.mmm]"',
    ):
        assert usage in r.stdout


def test_pause_and_resume(server: Server) -> None:
    assert forsun(server.thrift_port, "set cp1 */3600 * * * * * shell cmd=true").returncode == 0
    r = forsun(server.thrift_port, "pause cp1")
    assert r.returncode == 0, r.stderr
    assert fields(r.stdout)["key"] == "cp1"
    assert server.call("GET", "/v2/plans/cp1")[1]["paused"] is True
    r = forsun(server.thrift_port, "resume cp1")
    assert r.returncode == 0, r.stderr
    assert fields(r.stdout)["key"] == "cp1"
    assert server.call("GET", "/v2/plans/cp1")[1]["paused"] is False


def test_fire_then_runs(server: Server) -> None:
    assert forsun(server.thrift_port, "set cf1 */3600 * * * * * shell cmd=true").returncode == 0
    r = forsun(server.thrift_port, "--exe", "fire cf1; fire cf1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["status:\t1", "status:\t1"]
    lines: list[str] = []
    deadline = time.monotonic() + 10
    while len(lines) < 2 and time.monotonic() < deadline:
        r = forsun(server.thrift_port, "runs", "cf1")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
    assert len(lines) == 2
    parts = lines[0].split("\t")
    assert parts[0].split()[0].isdigit() and parts[0].endswith(")")
    assert parts[1].startswith("late=") and parts[2].startswith("took=")
    assert parts[3] == "attempt=1" and parts[4] == "ok"
    r = forsun(server.thrift_port, "runs", "cf1", "1")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1


def test_preview_of_a_delay_plan(server: Server) -> None:
    assert forsun(server.thrift_port, "set cv1 */60/3 * * * * * shell cmd=true").returncode == 0
    r = forsun(server.thrift_port, "preview cv1 10")
    assert r.returncode == 0, r.stderr
    times = [int(line.split()[0]) for line in r.stdout.splitlines()]
    assert len(times) == 3 and times[1] - times[0] == 60_000 and times[2] - times[1] == 60_000
    r = forsun(server.thrift_port, "preview cv1")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3


def test_cron_command(server: Server) -> None:
    r = forsun(server.thrift_port, "cron", "cc1", "*/10 * * * *", "shell", "cmd=echo hi")
    assert r.returncode == 0, r.stderr
    plan = fields(r.stdout)
    assert plan["key"] == "cc1" and plan["params"] == "cmd='echo hi'"
    body = server.call("GET", "/v2/plans/cc1")[1]
    assert body["schedule"]["kind"] == "cron" and body["schedule"]["expr"] == "*/10 * * * *"
    r = forsun(server.thrift_port, "preview cc1 3")
    times = [int(line.split()[0]) for line in r.stdout.splitlines()]
    assert len(times) == 3 and all(t % 600_000 == 0 for t in times)


def test_at_command_local_time_with_millis_and_unix_ms(server: Server) -> None:
    moment = datetime.now().replace(microsecond=0) + timedelta(days=2)
    text = moment.strftime("%Y-%m-%d %H:%M:%S") + ".250"
    r = forsun(server.thrift_port, "at", "ca1", text, "shell", "cmd=true")
    assert r.returncode == 0, r.stderr
    expected = int(moment.timestamp()) * 1000 + 250
    assert int(fields(r.stdout)["next_time"].split()[0]) == expected // 1000
    r = forsun(server.thrift_port, "preview ca1")
    assert [int(x.split()[0]) for x in r.stdout.splitlines()] == [expected]
    at_ms = int(time.time() * 1000) + 86_400_000 + 7
    r = forsun(server.thrift_port, f"at ca2 {at_ms} shell cmd=true")
    assert r.returncode == 0, r.stderr
    r = forsun(server.thrift_port, "preview ca2 5")
    assert [int(x.split()[0]) for x in r.stdout.splitlines()] == [at_ms]


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        ("pause nope-nope", "1003"),
        ("resume nope-nope", "1003"),
        ("fire nope-nope", "1003"),
        ("preview nope-nope", "1003"),
        ("pause", "usage: pause KEY"),
        ("runs", "usage: runs KEY [N]"),
        ("runs k x", "N must be a number"),
        ("preview k 0", "N must be a number"),
        ("cron k1 'not cron' shell cmd=true", "1008"),
        ("cron k1 '* * * * *'", "usage: cron"),
        ("cron k1 '* * * * *' nosuch a=1", "1006"),
        ("at k1 tomorrow shell cmd=true", "at: expected"),
        ("at k1 1000 shell cmd=true", "1002"),
        ("at k1 '2030-01-01 00:00:00' nosuch a=1", "1006"),
    ],
)
def test_added_commands_fail_in_one_line(server: Server, command: str, needle: str) -> None:
    r = forsun(server.thrift_port, command)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_parse_instant() -> None:
    assert parse_instant("1700000000123") == 1700000000123
    local = datetime(2030, 1, 2, 3, 4, 5)
    assert parse_instant("2030-01-02 03:04:05") == int(local.timestamp()) * 1000
    assert parse_instant("2030-01-02 03:04:05.250") == int(local.timestamp()) * 1000 + 250
    with pytest.raises(CommandError):
        parse_instant("soon")


def test_forsun_box_help_names_a_command_or_fails() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "forsun_box", *args],
            capture_output=True,
            text=True,
            cwd=str(ROOT),
            timeout=30,
        )

    r = run("help", "bogus")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "forsun-box: no such command 'bogus' (try: forsun-box help)\n"
    r = run("help", "runs")
    assert r.returncode == 0 and "runs KEY [N]" in r.stdout
    r = run("help", "serve")
    assert r.returncode == 0 and "--server-mode" in r.stdout


def test_interactive_shell_in_forsuns_layout(server: Server, tmp_path: Path) -> None:
    env = dict(os.environ, HOME=str(tmp_path), TERM="dumb")
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(str(ROOT))
        os.execve(
            sys.executable,
            [sys.executable, "-m", "forsun_box", "--port", str(server.thrift_port)],
            env,
        )
    try:
        banner = _read_until(fd, b"forsun> ").replace(b"\r\n", b"\n")
        assert b"Type 'help' for help\n\n" in banner
        os.write(fd, b"set pty-f 1 2 3 * * * shell 'cmd=ls'\r")
        out = _read_until(fd, b"forsun> ").replace(b"\r\n", b"\n")
        assert b" pty-f 1 2 3 * * * shell \"cmd='ls'\"\n\n" in out  # a blank line after
        os.write(fd, b"exit\r")
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


def test_an_empty_answer_says_so_in_the_long_view_and_prints_nothing_in_forsuns(
    server: Server,
) -> None:
    for command in (("time", "1000"), ("current",), ("ls", "no-such-prefix-")):
        long = forsun(server.thrift_port, *command)
        assert (long.returncode, long.stdout) == (0, "no plans\n"), command
        plain = forsun(server.thrift_port, *command, view=())
        assert (plain.returncode, plain.stdout) == (0, ""), command
