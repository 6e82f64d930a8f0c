"""The ``forsun`` command line client (FORSUN_COMPAT §4), speaking Thrift.

``forsun [--host H] [--port P] [--exe CMDS] [CMDS]``: run the commands
(several joined by ``;``), or, with none, read them from an interactive
shell (prompt ``forsun> ``, line editing and history in ``~/.forsun_history``)
when stdin is a terminal, else one command per line of stdin.

Output:

- ``get``, ``rm``, ``set``: the plan, one ``name:<TAB>value`` line per field
  in the IDL's order; ``next_time`` and ``last_timeout`` are unix seconds
  followed by the local time in parentheses (when not 0); ``params`` is
  written in the ``set`` syntax (``name=value;name='quoted value'``).
- ``time``, ``current``: every plan firing at that second, as above,
  separated by blank lines.
- ``ls``: one key per line. ``info``: one ``name:<TAB>value`` line per field.
- ``pause``, ``resume``, ``cron``, ``at``: the plan, as ``get`` shows it.
- ``fire``: ``status:<TAB>N``, the status the action returned.
- ``runs``: one run per line, newest first: the due instant (unix ms and
  local time), then ``late=MS``, ``took=MS``, ``attempt=N``, the result
  (``ok``, ``failed``, ``retrying``) and the error if any, tab-separated.
- ``preview``: one firing per line, unix ms followed by the local time.

An unreachable server, a server error or a malformed command prints one line
on stderr and ends with exit status 1 (the shell reports it and goes on).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TextIO

from thrift.protocol import TBinaryProtocol
from thrift.Thrift import TApplicationException, TException
from thrift.transport import TSocket, TTransport

from forsun_box import __version__, errors
from forsun_box.api import crontab
from forsun_box.thrift.forsun import Forsun
from forsun_box.thrift.forsun.ttypes import ForsunPlanError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6458
PROMPT = "forsun> "
HISTORY_FILE = "~/.forsun_history"
TIMEOUT_MS = 30_000

USAGE = """\
usage: forsun [--host HOST] [--port PORT] [--exe "CMD; CMD..."] [CMD...]

With no command: an interactive shell. Commands (join several with ';'):
"""

COMMANDS_HELP = """\
  help                              this text
  exit                              leave the shell
  version                           the client's version
  ls [PREFIX]                       keys (starting with PREFIX)
  current                           plans firing at the current second
  time [TIMESTAMP | "YYYY-mm-dd HH:MM:SS"]
                                    plans firing at that second (local time)
  get KEY                           show a plan
  rm KEY                            remove a plan (and show it)
  set KEY S M H D MON W ACTION PARAMS
                                    create or replace a plan; a field is a number,
                                    * (any) or */N[/C] (every N, C times: delay mode);
                                    PARAMS: name=value;name='quoted value'
  info                              the server's status, one name:<TAB>value per line
  pause KEY                         stop a plan firing until resumed (and show it)
  resume KEY                        let a paused plan fire again (and show it)
  fire KEY                          run the plan's action once now; prints its status
  runs KEY [N]                      the plan's last N runs, newest first (default 20)
  preview KEY [N]                   the plan's next N firings (default 5)
  cron KEY "EXPR" ACTION PARAMS     create or replace a plan on a cron expression
                                    (5 or 6 fields, the server's time zone)
  at KEY "YYYY-mm-dd HH:MM:SS[.mmm]"|UNIX_MS ACTION PARAMS
                                    create or replace a plan firing once at that
                                    instant (local time, or unix milliseconds)
examples:
  set t1 */5/1 * * * * * shell 'cmd=ls'
  set t2 0 32 16 * * * http "url='http://127.0.0.1:9000/'"
  cron t3 "*/5 * * * *" shell 'cmd=date'
  at t4 "2030-01-01 08:00:00.250" shell 'cmd=date'
"""

PLAN_FIELDS = (
    "key",
    "is_time_out",
    "second",
    "minute",
    "hour",
    "day",
    "month",
    "week",
    "count",
    "current_count",
    "status",
    "next_time",
    "last_timeout",
    "action",
    "params",
)
COMMAND_NAMES = frozenset(
    {
        "help",
        "exit",
        "quit",
        "version",
        "ls",
        "current",
        "time",
        "get",
        "rm",
        "set",
        "info",
        "pause",
        "resume",
        "fire",
        "runs",
        "preview",
        "cron",
        "at",
    }
)
RUN_RESULTS = {1: "ok", -1: "failed", 2: "retrying"}
DEFAULT_RUNS = 20
DEFAULT_PREVIEW = 5


class CommandError(Exception):
    """A command can't run: the message is printed as is (one line)."""


class Exit(Exception):
    """The ``exit`` command."""


# ---------------------------------------------------------------- parsing


def split_commands(text: str) -> list[str]:
    """Split on top-level ``;`` (quotes protect it).

    A piece whose first word is not a command name belongs to the previous
    command, so an unquoted ``set ... http url=x;method=post`` survives.
    """
    pieces = crontab.split_top_level(text, escapes=True)
    commands: list[str] = []
    for piece in pieces:
        if not piece.strip():
            continue
        word = piece.split(None, 1)[0].lower()
        if commands and word not in COMMAND_NAMES:
            commands[-1] += ";" + piece
        else:
            commands.append(piece)
    return [c.strip() for c in commands if c.strip()]


def parse_time(words: list[str], now: Callable[[], float] = time.time) -> int:
    """``time``'s argument: nothing (now), unix seconds, or local ``YYYY-mm-dd HH:MM:SS``."""
    text = " ".join(words).strip()
    if not text:
        return int(now())
    if text.lstrip("-").isdigit():
        return int(text)
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return int(datetime.strptime(text, fmt).timestamp())
        except ValueError:
            continue
    raise CommandError(f'time: expected a timestamp or "YYYY-mm-dd HH:MM:SS", got {text!r}')


def parse_instant(text: str) -> int:
    """``at``'s instant: unix milliseconds, or local ``YYYY-mm-dd HH:MM:SS[.mmm]``."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"):
        try:
            moment = datetime.strptime(text, fmt)
        except ValueError:
            continue
        try:
            return int(moment.timestamp()) * 1000 + moment.microsecond // 1000
        except (OverflowError, OSError, ValueError):
            break
    raise CommandError(
        f'at: expected "YYYY-mm-dd HH:MM:SS[.mmm]" or unix milliseconds, got {text!r}'
    )


def _count(name: str, args: list[str], default: int, top: int) -> tuple[str, int]:
    """``KEY [N]`` arguments: the key and N (``default`` when absent; 1..top)."""
    if not 1 <= len(args) <= 2:
        raise CommandError(f"usage: {name} KEY [N]")
    if len(args) == 1:
        return args[0], default
    if not args[1].isdigit() or not 1 <= int(args[1]) <= top:
        raise CommandError(f"{name}: N must be a number from 1 to {top}, got {args[1]!r}")
    return args[0], int(args[1])


# ---------------------------------------------------------------- output


def _when(ts: int) -> str:
    if not ts:
        return "0"
    try:
        local = datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return str(ts)
    return f"{ts} ({local})"


def _quote(value: str) -> str:
    if value and not any(c in value for c in " \t;'\"\\"):
        return value
    if "'" not in value:
        return f"'{value}'"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_params(params: dict[str, str] | None) -> str:
    """Params in the ``set`` syntax: ``name=value;name='quoted value'``."""
    return ";".join(f"{k}={_quote(v)}" for k, v in (params or {}).items())


def _when_ms(ms: int) -> str:
    try:
        local = datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return f"{ms} ({local})"


def format_run(run: Any) -> str:
    """One run (``ForsunRun``) as one tab-separated line (see the module docstring)."""
    parts = [
        _when_ms(run.due_ms),
        f"late={max(0, run.started_ms - run.due_ms)}",
        f"took={run.duration_ms}",
        f"attempt={run.attempt}",
        RUN_RESULTS.get(run.result, "failed"),
    ]
    if run.error:
        parts.append(" ".join(run.error.split()))  # one line per run
    return "\t".join(parts)


def format_plan(plan: Any) -> str:
    """A plan as ``name:<TAB>value`` lines (see the module docstring)."""
    lines = []
    for name in PLAN_FIELDS:
        value = getattr(plan, name)
        if name in ("next_time", "last_timeout"):
            text = _when(value or 0)
        elif name == "params":
            text = format_params(value)
        elif name == "is_time_out":
            text = "true" if value else "false"
        else:
            text = str(value)
        lines.append(f"{name}:\t{text}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the session


class Session:
    """One connection to a server, opened on first use, running commands."""

    def __init__(self, host: str, port: int, out: TextIO = sys.stdout) -> None:
        self.host = host
        self.port = port
        self.out = out
        self._transport: Any = None
        self._client: Any = None
        self.exited = False

    def client(self) -> Any:
        if self._client is None:
            sock = TSocket.TSocket(self.host, self.port)
            sock.setTimeout(TIMEOUT_MS)
            transport = TTransport.TBufferedTransport(sock)
            try:
                transport.open()
            except TTransport.TTransportException as e:
                raise CommandError(
                    f"cannot connect to {self.host}:{self.port}: {_reason(e)}"
                ) from None
            self._transport = transport
            self._client = Forsun.Client(TBinaryProtocol.TBinaryProtocolAccelerated(transport))
        return self._client

    def close(self) -> None:
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.close()
        self._transport = None
        self._client = None

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def run(self, command: str) -> None:
        """Run one command; raises :class:`CommandError` or :class:`Exit`."""
        try:
            words = shlex.split(command, posix=True)
        except ValueError as e:
            raise CommandError(f"cannot parse {command!r}: {e}") from None
        if not words:
            return
        name, args = words[0].lower(), words[1:]
        handler = getattr(self, f"cmd_{name}", None)
        if name not in COMMAND_NAMES or handler is None:
            raise CommandError(f"unknown command {words[0]!r} (try: help)")
        try:
            handler(args)
        except ForsunPlanError as e:
            raise CommandError(f"error {e.code}: {e.message}") from None
        except errors.ForsunBoxError as e:  # refused before reaching the server
            raise CommandError(f"{name}: error {e.code}: {e.message}") from None
        except TApplicationException as e:
            raise CommandError(f"server error: {e.message}") from None
        except (TException, OSError, EOFError) as e:
            self.close()
            raise CommandError(
                f"connection to {self.host}:{self.port} failed: {_reason(e)}"
            ) from None

    # ---- commands

    def cmd_help(self, args: list[str]) -> None:
        self.print(USAGE + COMMANDS_HELP.rstrip("\n"))

    def cmd_exit(self, args: list[str]) -> None:
        raise Exit

    cmd_quit = cmd_exit

    def cmd_version(self, args: list[str]) -> None:
        self.print(f"forsun-box {__version__}")

    def cmd_ls(self, args: list[str]) -> None:
        for key in self.client().getKeys(args[0] if args else ""):
            self.print(key)

    def _plans(self, plans: list[Any]) -> None:
        if plans:
            self.print("\n\n".join(format_plan(p) for p in plans))

    def cmd_current(self, args: list[str]) -> None:
        self._plans(self.client().getCurrent())

    def cmd_time(self, args: list[str]) -> None:
        ts = parse_time(args)
        if not -(2**31) <= ts < 2**31:
            raise CommandError(f"time: {ts} is out of range")
        self._plans(self.client().getTime(ts))

    def _key(self, name: str, args: list[str]) -> str:
        if len(args) != 1:
            raise CommandError(f"usage: {name} KEY")
        return args[0]

    def cmd_get(self, args: list[str]) -> None:
        self.print(format_plan(self.client().get(self._key("get", args))))

    def cmd_rm(self, args: list[str]) -> None:
        self.print(format_plan(self.client().remove(self._key("rm", args))))

    def cmd_set(self, args: list[str]) -> None:
        line = crontab.parse_tokens(args)  # names the first missing field
        f = line.fields
        for name, value in f.items():
            if not -32768 <= value <= 32767:
                raise CommandError(f"set: {name} out of range: {value}")
        if not 0 <= line.count <= 32767:
            raise CommandError(f"set: count out of range: {line.count}")
        client = self.client()
        times = (f["second"], f["minute"], f["hour"], f["day"], f["month"], f["week"])
        if line.is_time_out:
            plan = client.createTimeout(line.key, *times, line.count, line.action, line.params)
        else:
            plan = client.create(line.key, *times, line.action, line.params)
        self.print(format_plan(plan))

    def cmd_info(self, args: list[str]) -> None:
        for name, value in self.client().info().items():
            self.print(f"{name}:\t{value}")

    # ---- forsun-box additions

    def cmd_pause(self, args: list[str]) -> None:
        self.print(format_plan(self.client().pause(self._key("pause", args))))

    def cmd_resume(self, args: list[str]) -> None:
        self.print(format_plan(self.client().resume(self._key("resume", args))))

    def cmd_fire(self, args: list[str]) -> None:
        self.print(f"status:\t{self.client().fire(self._key('fire', args))}")

    def cmd_runs(self, args: list[str]) -> None:
        key, n = _count("runs", args, DEFAULT_RUNS, 1000)
        for run in self.client().getRuns(key, n):
            self.print(format_run(run))

    def cmd_preview(self, args: list[str]) -> None:
        key, n = _count("preview", args, DEFAULT_PREVIEW, 1000)
        for ms in self.client().preview(key, n):
            self.print(_when_ms(ms))

    def _action_params(self, name: str, args: list[str], usage: str) -> tuple[str, dict[str, str]]:
        if len(args) < 3:
            raise CommandError(f"usage: {name} {usage}")
        action = crontab.ACTION_ALIASES.get(args[2], args[2])
        return action, crontab.parse_params(" ".join(args[3:]), action)

    def cmd_cron(self, args: list[str]) -> None:
        action, params = self._action_params("cron", args, '"EXPR" ACTION PARAMS')
        self.print(format_plan(self.client().createCron(args[0], args[1], action, params, "", 0)))

    def cmd_at(self, args: list[str]) -> None:
        action, params = self._action_params(
            "at", args, '"YYYY-mm-dd HH:MM:SS[.mmm]"|UNIX_MS ACTION PARAMS'
        )
        at_ms = parse_instant(args[1])
        if not 0 <= at_ms < 2**63:
            raise CommandError(f"at: {at_ms} is out of range")
        self.print(format_plan(self.client().createAt(args[0], at_ms, action, params)))


def _reason(e: BaseException) -> str:
    inner = getattr(e, "inner", None)
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = getattr(e, "message", None) or str(e) or e.__class__.__name__
    return str(text).splitlines()[0] if text else e.__class__.__name__


# ---------------------------------------------------------------- entry points


def parse_argv(argv: list[str]) -> tuple[str, int, str | None, bool]:
    """``(host, port, commands or None, help)`` from forsun's options."""
    host, port, exe = DEFAULT_HOST, DEFAULT_PORT, None
    words: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg in ("-", ";"):
            words = argv[i:]
            break
        if arg in ("-h", "--help"):
            return host, port, None, True
        name, eq, value = arg.partition("=")
        if name == "--version":
            words = ["version"]
            break
        if name not in ("--host", "--port", "--exe"):
            raise CommandError(f"unknown option {name} (try: forsun --help)")
        if not eq:
            i += 1
            if i >= len(argv):
                raise CommandError(f"option {name} needs a value")
            value = argv[i]
        if name == "--host":
            host = value
        elif name == "--port":
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise CommandError(f"invalid port {value!r}")
            port = int(value)
        else:
            exe = value
        i += 1
    if words:
        # One word is a command line as forsun takes it; several are the
        # words of one command line, already split by the caller's shell.
        text = (
            words[0]
            if len(words) == 1
            else " ".join(w if w == ";" else shlex.quote(w) for w in words)
        )
        exe = text if exe is None else f"{exe};{text}"
    return host, port, exe, False


def run_commands(session: Session, text: str) -> int:
    """Run ``;``-joined commands, stopping at the first failure."""
    for command in split_commands(text):
        try:
            session.run(command)
        except Exit:
            session.exited = True
            return 0
        except CommandError as e:
            print(f"forsun: {e}", file=sys.stderr)
            return 1
    return 0


def _lines(stdin: TextIO) -> Iterator[str]:
    for line in stdin:
        yield line.rstrip("\n")


def shell(session: Session) -> int:
    """The interactive shell: prompt, line editing and history (readline)."""
    history = os.path.expanduser(HISTORY_FILE)
    try:
        import readline
    except ImportError:  # pragma: no cover - readline is absent on some platforms
        readline = None  # type: ignore[assignment]
    if readline is not None:
        with contextlib.suppress(OSError):
            readline.read_history_file(history)
        readline.set_history_length(1000)
    status = 0
    try:
        while True:
            try:
                line = input(PROMPT)
            except EOFError:
                print()
                break
            except KeyboardInterrupt:
                print()
                continue
            status = 0
            try:
                for command in split_commands(line):
                    session.run(command)
            except Exit:
                break
            except CommandError as e:
                print(f"forsun: {e}", file=sys.stderr)
                status = 1
    finally:
        if readline is not None:
            with contextlib.suppress(OSError):
                readline.write_history_file(history)
    return status


def main(argv: list[str]) -> int:
    """Entry point of the client (``forsun ...``, ``forsun-box CMD ...``).

    ``argv`` excludes the program name. Returns the exit status: 0 ok, 1 failure.
    """
    # thrift's TSocket logs failed connects itself; the client says it in one line.
    logging.getLogger("thrift").addHandler(logging.NullHandler())
    logging.getLogger("thrift").propagate = False
    try:
        host, port, commands, want_help = parse_argv(list(argv))
    except CommandError as e:
        print(f"forsun: {e}", file=sys.stderr)
        return 1
    if want_help:
        print(USAGE + COMMANDS_HELP, end="")
        return 0
    session = Session(host, port)
    try:
        if commands is not None:
            return run_commands(session, commands)
        if sys.stdin.isatty():
            return shell(session)
        status = 0
        for line in _lines(sys.stdin):
            if line.strip() and not line.lstrip().startswith("#"):
                status = run_commands(session, line)
                if status or session.exited:
                    break
        return status
    except KeyboardInterrupt:
        return 130
    finally:
        session.close()
