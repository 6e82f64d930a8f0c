"""The built-in shell and http actions, run for real (subprocesses, a loopback server)."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from forsun_box.actions import (
    ACTIONS,
    ActionFailed,
    ActionSettings,
    HttpAction,
    ShellAction,
    action_names,
    configure_actions,
    get_action,
)
from forsun_box.actions.shell import parse_env
from forsun_box.errors import RetryLater
from forsun_box.firing.client import close_shared
from forsun_box.plan import Plan
from tests.helpers import wait_until
from tests.servers import unavailable

TS = 1_700_000_123


pytestmark = pytest.mark.usefixtures("restore_action_settings")


def _plan(action: str, params: dict[str, str]) -> Plan:
    return Plan(key="k1", kind="at", action=action, params=params)


def shell(params: dict[str, str], **settings) -> None:
    configure_actions(ActionSettings(**settings))
    plan = _plan("shell", params)
    asyncio.run(ShellAction(TS, plan, "shell", params).execute())


# -- registry -----------------------------------------------------------------


def test_builtins_registered_with_forsun_aliases():
    assert ACTIONS["shell"] is ShellAction
    assert ACTIONS["http"] is HttpAction
    assert get_action("sh") is ShellAction
    assert get_action("bash") is ShellAction
    assert get_action("nope") is None
    assert {"shell", "http"} <= set(action_names())
    assert {"sh", "bash"} <= set(action_names(with_aliases=True))
    assert "sh" not in action_names()


# -- shell ----------------------------------------------------------------------


def test_parse_env():
    assert parse_env("a=1;b=c") == {"a": "1", "b": "c"}
    assert parse_env("a=x=y;;junk; b =2") == {"a": "x=y", "b": "2"}
    assert parse_env("") == {}


def test_shell_runs_command_with_env_cwd_and_timestamp(tmp_path: Path):
    shell(
        {
            "cmd": 'printf "%s|%s|%s" "$FOO" "$BAR" "$FORSUN_TIMESTAMP" > out.txt',
            "cwd": str(tmp_path),
            "env": "FOO=1;BAR=two words",
        }
    )
    assert (tmp_path / "out.txt").read_text() == f"1|two words|{TS}"


def test_shell_inherits_environment_and_uses_shell_cwd_setting(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FB_INHERITED", "yes")
    shell({"cmd": 'echo "$FB_INHERITED" > inh.txt; pwd > where.txt'}, shell_cwd=str(tmp_path))
    assert (tmp_path / "inh.txt").read_text().strip() == "yes"
    assert os.path.samefile((tmp_path / "where.txt").read_text().strip(), tmp_path)


def test_shell_missing_cmd_fails():
    with pytest.raises(ActionFailed, match="missing param cmd"):
        shell({})


def test_shell_nonzero_exit_fails_with_code_and_stderr(tmp_path: Path):
    with pytest.raises(ActionFailed) as info:
        shell({"cmd": "echo partial-out; echo boom-on-stderr >&2; exit 3", "cwd": str(tmp_path)})
    text = str(info.value)
    assert "exit status 3" in text
    assert "boom-on-stderr" in text


def test_shell_error_text_keeps_only_the_tail(tmp_path: Path):
    # ~200 KiB on stderr: the error keeps the end, bounded.
    cmd = "i=0; while [ $i -lt 4000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx >&2; i=$((i+1)); done; exit 1"
    with pytest.raises(ActionFailed) as info:
        shell({"cmd": cmd, "cwd": str(tmp_path)})
    text = str(info.value)
    assert "line-3999-" in text
    assert "line-0-" not in text
    assert len(text) < 5000


def test_shell_bad_cwd_fails(tmp_path: Path):
    with pytest.raises(ActionFailed, match="cwd"):
        shell({"cmd": "true", "cwd": str(tmp_path / "absent")})


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")  # zombie = dead
    except FileNotFoundError:
        return True


def test_shell_timeout_kills_the_process_group(tmp_path: Path):
    cmd = "sleep 60 & echo $! > child.pid; sleep 60"
    started = time.monotonic()
    with pytest.raises(ActionFailed, match="timed out"):
        shell({"cmd": cmd, "cwd": str(tmp_path)}, shell_timeout_s=2)
    assert time.monotonic() - started < 20
    child = int((tmp_path / "child.pid").read_text())
    assert wait_until(lambda: _gone(child), 30), "background child survived the time limit"


def test_shell_disabled_refuses_and_does_not_run(tmp_path: Path):
    with pytest.raises(ActionFailed, match="disabled"):
        shell({"cmd": "touch ran", "cwd": str(tmp_path)}, shell_enabled=False)
    assert not (tmp_path / "ran").exists()


def test_shell_allowlist(tmp_path: Path):
    allow = ("echo", "touch")
    shell({"cmd": "touch ok1", "cwd": str(tmp_path)}, shell_allow=allow)
    assert (tmp_path / "ok1").exists()
    with pytest.raises(ActionFailed, match="allowlist"):
        shell({"cmd": "mkdir nope", "cwd": str(tmp_path)}, shell_allow=allow)
    # chaining would smuggle another program past the first word
    for cmd in (
        "echo a; mkdir nope",
        "echo a && mkdir nope",
        "echo $(mkdir nope)",
        "echo `mkdir nope`",
        "echo a | mkdir nope",
    ):
        with pytest.raises(ActionFailed, match="allowlist"):
            shell({"cmd": cmd, "cwd": str(tmp_path)}, shell_allow=allow)
    assert not (tmp_path / "nope").exists()


# -- http -----------------------------------------------------------------------


class _Recorder(RequestHandler):
    SUPPORTED_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH")

    def initialize(self, seen: list, status: int = 200) -> None:
        self.seen = seen
        self.status = status

    def _handle(self) -> None:
        r = self.request
        self.seen.append(
            {
                "method": r.method,
                "path": r.path,
                "body": r.body.decode(),
                "headers": dict(r.headers),
            }
        )
        self.set_status(self.status)
        if r.method != "HEAD":
            self.write("answer-body")

    get = post = put = delete = head = patch = _handle  # type: ignore[assignment]


class _Slow(RequestHandler):
    async def get(self) -> None:
        await asyncio.sleep(30)  # a server far slower than the request timeout
        self.write("late")


async def _serve(seen: list) -> tuple[HTTPServer, int]:
    app = Application(
        [
            (r"/ok", _Recorder, {"seen": seen}),
            (r"/created", _Recorder, {"seen": seen, "status": 201}),
            (r"/unavailable", _Recorder, {"seen": seen, "status": 503}),
            (r"/slow", _Slow),
        ]
    )
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


def http(params_for_port, **settings):
    """Start a server, run the http action with ``params_for_port(port)``.

    Returns (exception or None, requests seen by the server).
    """
    configure_actions(ActionSettings(**settings))

    async def main():
        seen: list = []
        server, port = await _serve(seen)
        params = params_for_port(port)
        try:
            await HttpAction(TS, _plan("http", params), "http", params).execute()
            error = None
        except Exception as e:
            error = e
        finally:
            server.stop()
            close_shared()
        return error, seen

    return asyncio.run(main())


def test_http_get_sends_timestamp_headers_and_user_agent():
    error, seen = http(
        lambda port: {
            "url": f"http://127.0.0.1:{port}/ok",
            "header_X-Custom": "v1",
            "header_Accept": "text/plain",
        },
        http_user_agent="ua-from-settings",
    )
    assert error is None
    (req,) = seen
    assert req["method"] == "GET"
    assert req["headers"]["X-Forsun-Timestamp"] == str(TS)
    assert req["headers"]["X-Custom"] == "v1"
    assert req["headers"]["Accept"] == "text/plain"
    assert req["headers"]["User-Agent"] == "ua-from-settings"


@pytest.mark.parametrize("method", ["post", "put", "PATCH", "delete"])
def test_http_methods_and_body(method):
    error, seen = http(
        lambda port: {
            "url": f"http://127.0.0.1:{port}/created",
            "method": method,
            "body": "a=1&b=2",
            "user_agent": "ua-param",
        }
    )
    assert error is None
    (req,) = seen
    assert req["method"] == method.upper()
    assert req["body"] == "a=1&b=2"
    assert req["headers"]["User-Agent"] == "ua-param"


def test_http_post_without_body_and_head():
    error, seen = http(lambda port: {"url": f"http://127.0.0.1:{port}/ok", "method": "post"})
    assert error is None and seen[0]["method"] == "POST" and seen[0]["body"] == ""
    error, seen = http(lambda port: {"url": f"http://127.0.0.1:{port}/ok", "method": "head"})
    assert error is None and seen[0]["method"] == "HEAD"


def test_http_basic_auth():
    error, seen = http(
        lambda port: {
            "url": f"http://127.0.0.1:{port}/ok",
            "auth_username": "alice",
            "auth_password": "s3cret",
            "auth_mode": "basic",
        }
    )
    assert error is None
    auth = seen[0]["headers"]["Authorization"]
    assert auth == "Basic " + base64.b64encode(b"alice:s3cret").decode()


def test_http_5xx_asks_for_retry():
    error, seen = http(lambda port: {"url": f"http://127.0.0.1:{port}/unavailable"})
    assert isinstance(error, RetryLater)
    assert "503" in str(error)
    assert len(seen) == 1


def test_http_404_is_a_failure():
    error, _ = http(lambda port: {"url": f"http://127.0.0.1:{port}/absent"})
    assert isinstance(error, ActionFailed)
    assert "404" in str(error)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_http_connection_refused_is_a_failure():
    port = _closed_port()
    error, _ = http(lambda _port: {"url": f"http://127.0.0.1:{port}/ok"})
    assert isinstance(error, ActionFailed)
    assert not isinstance(error, RetryLater)
    assert f"127.0.0.1:{port}" in str(error)


def test_http_request_timeout_param():
    started = time.monotonic()
    error, _ = http(lambda port: {"url": f"http://127.0.0.1:{port}/slow", "request_timeout": "0.3"})
    assert isinstance(error, ActionFailed)
    assert "timed out" in str(error).lower() or "timeout" in str(error).lower()
    # given up long before the answer; room left for starting the firing process
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "missing param url"),
        ({"url": "ftp://x/"}, "unsupported url"),
        ({"url": "http://127.0.0.1:1/", "method": "brew"}, "unsupported method"),
        ({"url": "http://127.0.0.1:1/", "connect_timeout": "soon"}, "connect_timeout"),
        ({"url": "http://127.0.0.1:1/", "auth_username": "a", "auth_mode": "ntlm"}, "auth_mode"),
    ],
)
def test_http_bad_params_fail_clearly(params, message):
    action = HttpAction(TS, _plan("http", params), "http", params)
    with pytest.raises(ActionFailed, match=message):
        action.build_request()


def test_shell_sees_its_firing_id(tmp_path: Path):
    configure_actions(ActionSettings(firing_epoch="3"))
    plan = Plan(key="job 7", kind="at", action="shell", params={})
    params = {"cmd": 'printf "%s" "$FORSUN_FIRING_ID" > id.txt', "cwd": str(tmp_path)}
    action = ShellAction(TS, plan, "shell", params)
    action.due_ms = TS * 1000 + 5
    asyncio.run(action.execute())
    assert (tmp_path / "id.txt").read_text() == f"3:{TS * 1000 + 5}:job 7"


def test_prepared_shell_command_runs_when_started(tmp_path: Path):
    configure_actions(ActionSettings())
    out = tmp_path / "out.txt"

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        results = []
        for cmd in (f'echo "$FORSUN_TIMESTAMP" > {out}', "echo oops >&2; exit 3"):
            ready = ShellAction(TS, _plan("shell", {"cmd": cmd}), "shell", {"cmd": cmd}).prepare()
            fut = loop.create_future()
            ready.start(fut.set_result)
            assert not fut.done()
            results.append(await asyncio.wait_for(fut, 10))
        return results

    ok, failed = asyncio.run(main())
    assert ok is None and out.read_text().strip() == str(TS)
    assert isinstance(failed, ActionFailed) and str(failed) == "exit status 3: oops"


def test_shell_cwd_with_odd_characters(tmp_path: Path):
    odd = tmp_path / "it's a dir; $(x)"
    odd.mkdir()
    shell({"cmd": "pwd > here.txt", "cwd": str(odd)})
    assert os.path.samefile((odd / "here.txt").read_text().strip(), odd)


@pytest.mark.parametrize("through_libc", [True, False])
def test_spawn_with_and_without_libc_functions(tmp_path: Path, monkeypatch, through_libc: bool):
    """Both ways of spawning: libc's posix_spawn (the interpreter lock let go) and, where
    its functions are missing, os.posix_spawn; its own process group in the spawner's
    session, the signals the spawner ignores at their defaults, stdin /dev/null, two pipes."""
    from forsun_box.firing import spawn

    if not through_libc:
        monkeypatch.setattr(spawn, "_libc", None)
    elif spawn._libc is None:
        unavailable("no libc posix_spawn here")  # glibc has it: CI's does
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "X_ONE": "1"}
    cmd = 'read -r line; echo "out:$X_ONE:${line:-none}"; echo err >&2; cut -d" " -f5,6 /proc/$$/stat > ids; grep SigIgn /proc/$$/status > ign'
    argv = ["/bin/sh", "-c", f"cd {tmp_path} && {cmd}"]
    command = spawn.CommandLine("/bin/sh", argv, spawn.Environment(env))
    pid, out_fd, err_fd = spawn.spawn_now(command)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(out_fd, "rb") as out, os.fdopen(err_fd, "rb") as err:
        assert out.read() == b"out:1:none\n"  # stdin is /dev/null: nothing read
        assert err.read() == b"err\n"
    assert os.waitstatus_to_exitcode(status) == 0
    group, session = (int(n) for n in (tmp_path / "ids").read_text().split())
    assert group == pid and session == os.getsid(0)  # its own group, the same session
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # (Python's own, here)
    ignored = int((tmp_path / "ign").read_text().split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))  # not for the command


def test_a_commands_own_variables_go_on_top_of_the_shared_ones():
    from forsun_box.firing import spawn

    base = spawn.Environment({"PATH": "/bin", "SHARED": "base"})
    alone = spawn.CommandLine("/bin/sh", ["/bin/sh"], base)
    assert list(alone.c_env) == [b"PATH=/bin", b"SHARED=base", None]
    added = spawn.CommandLine("/bin/sh", ["/bin/sh"], base, {"OWN": "1"})
    assert list(added.c_env) == [b"PATH=/bin", b"SHARED=base", b"OWN=1", None]
    over = spawn.CommandLine("/bin/sh", ["/bin/sh"], base, {"SHARED": "own", "OWN": "é"})
    assert sorted(over.c_env[:3]) == [b"OWN=\xc3\xa9", b"PATH=/bin", b"SHARED=own"]
    assert over.c_env[3] is None
    assert over.env == {"PATH": "/bin", "SHARED": "own", "OWN": "é"}
    assert base.variables == {"PATH": "/bin", "SHARED": "base"}  # the shared ones stay


def test_shell_commands_of_a_burst_all_run(tmp_path: Path):
    configure_actions(ActionSettings())

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        futures = []
        for i in range(40):
            cmd = f"echo {i} > {tmp_path}/f{i}"
            ready = ShellAction(TS, _plan("shell", {"cmd": cmd}), "shell", {"cmd": cmd}).prepare()
            fut = loop.create_future()
            ready.start(fut.set_result)
            futures.append(fut)
        return await asyncio.wait_for(asyncio.gather(*futures), 30)

    assert asyncio.run(main()) == [None] * 40
    assert sorted(int((tmp_path / f"f{i}").read_text()) for i in range(40)) == list(range(40))
