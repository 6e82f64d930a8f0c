"""The ``forsun`` command line client (FORSUN_COMPAT §4), speaking Thrift.

``forsun [--host H] [--port P] [--long | --json] [--exe CMDS] [CMDS]``: run
the commands (several joined by ``;``), or, with none, read them from an
interactive shell (prompt ``forsun> ``, line editing and history in
``~/.forsun_history``) when stdin is a terminal, else one command per line of
stdin.

What it prints is :mod:`forsun_box.cli.views`': by default forsun's own
layout, line for line (a plan is one line that is also valid ``set`` input,
``ls`` prints plans, ``rm`` prints ``success``, ``info`` forsun's keys);
``--long`` every field as ``name:<TAB>value`` lines; ``--json`` one JSON
document per command. forsun-box's own commands print, by default:
``pause``, ``resume``, ``cron``, ``at`` the plan line; ``fire``
``status:<TAB>N``; ``runs`` one run per line (``no runs`` when there are
none); ``preview`` one firing per line (``no firings``).

Errors print forsun's lines on stdout (``cmd ForsunPlanError:  CODE
MESSAGE``, ``Unknown cmd  NAME``, ``cmd error:  MESSAGE``, ``connect forsun
server fail:  REASON``; with ``--long`` one ``forsun: ...`` line on stderr,
with ``--json`` ``{"errcode", "errmsg"}``) and end the run with exit status 1
(the interactive shell reports them and goes on).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from thrift.protocol import TBinaryProtocol
from thrift.Thrift import TApplicationException, TException
from thrift.transport import TSocket, TTransport

from forsun_box import __version__, errors
from forsun_box.api.formats import crontab
from forsun_box.cli import views
from forsun_box.cli.parsing import (
    COMMAND_ERROR,
    COMMAND_NAMES,
    CONNECT_ERROR,
    PLAN_ERROR,
    UNKNOWN_COMMAND,
    CommandError,
    Exit,
    count_args,
    parse_argv,
    parse_instant,
    parse_options,
    parse_time,
    report,
    split_commands,
)
from forsun_box.cli.views import format_params, format_plan, format_run
from forsun_box.thrift.forsun import Forsun
from forsun_box.thrift.forsun.ttypes import ForsunPlanError

__all__ = [
    "COMMAND_ERROR",
    "CONNECT_ERROR",
    "PLAN_ERROR",
    "UNKNOWN_COMMAND",
    "CommandError",
    "format_params",
    "format_plan",
    "format_run",
    "main",
    "parse_argv",
    "parse_instant",
    "split_commands",
]
DEFAULT_RUNS = 20
DEFAULT_PREVIEW = 5

PROMPT = "forsun> "
HISTORY_FILE = "~/.forsun_history"
TIMEOUT_MS = 30_000

USAGE = """\
usage: forsun [--host HOST] [--port PORT] [--long | --json] [--exe "CMD; CMD..."] [CMD...]

  --long    every field of a plan on its own name:<TAB>value line, every info key
  --json    one JSON document per command
With no command: an interactive shell. Commands (join several with ';'):
"""

#: ``help``'s lines in forsun's layout (``NAME - WHAT (SYNTAX)``), forsun's commands
FORSUN_HELP = """\
help - this list of commands
exit - leave the shell
ls - plans whose key starts with a prefix (ls [PREFIX or *])
current - plans firing at the current second (current)
time - plans firing at a second (time [TIMESTAMP or "YYYY-mm-dd HH:MM:SS"])
get - one plan (get KEY)
rm - remove a plan (rm KEY)
set - create or replace a plan (set KEY SECOND MINUTE HOUR DAY MONTH WEEK ACTION PARAMS)
"""

COMMANDS_HELP = """\
  help                              forsun's command list (with --long: this text)
  exit                              leave the shell
  version                           the client's version
  ls [PREFIX]                       plans whose key starts with PREFIX (--long: keys)
  current                           plans firing at the current second
  time [TIMESTAMP | "YYYY-mm-dd HH:MM:SS"]
                                    plans firing at that second (local time)
  get KEY                           show a plan
  rm KEY                            remove a plan (prints success; --long: the plan)
  set KEY S M H D MON W ACTION PARAMS
                                    create or replace a plan; a field is a number,
                                    * (any) or */N[/C] (every N, C times: delay mode);
                                    PARAMS: name=value;name='quoted value'
  info                              the server's status
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

# ---------------------------------------------------------------- the session


class Session:
    """One connection to a server, opened on first use, running commands."""

    def __init__(
        self, host: str, port: int, out: TextIO | None = None, view: str = views.FORSUN
    ) -> None:
        self.host = host
        self.port = port
        self.out = out if out is not None else sys.stdout
        self.view = view
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
                    f"cannot connect to {self.host}:{self.port}: {_reason(e)}", CONNECT_ERROR
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
            raise CommandError(words[0], UNKNOWN_COMMAND)
        try:
            handler(args)
        except ForsunPlanError as e:
            raise CommandError(e.message or "", PLAN_ERROR, e.code) from None
        except errors.ForsunBoxError as e:  # malformed: refused before reaching the server
            raise CommandError(f"{name}: {e.message}", COMMAND_ERROR, e.code) from None
        except TApplicationException as e:
            raise CommandError(f"server error: {e.message}") from None
        except (TException, OSError, EOFError) as e:
            self.close()
            raise CommandError(
                f"connection to {self.host}:{self.port} failed: {_reason(e)}", CONNECT_ERROR
            ) from None

    # ---- output in the session's view

    def _plan(self, plan: Any) -> None:
        if self.view == views.JSON:
            self.print(views.to_json(views.plan_dict(plan)))
        elif self.view == views.LONG:
            self.print(format_plan(plan))
        else:
            self.print(views.plan_line(plan))

    def _plans(self, plans: list[Any]) -> None:
        if self.view == views.JSON:
            self.print(views.to_json([views.plan_dict(p) for p in plans]))
        elif self.view == views.LONG:
            # people read this view: say so when there is nothing to show
            self.print("\n\n".join(format_plan(p) for p in plans) if plans else "no plans")
        else:
            for plan in plans:  # nothing at all when there are none, as forsun
                self.print(views.plan_line(plan))

    # ---- commands

    def cmd_help(self, args: list[str]) -> None:
        if self.view == views.FORSUN:
            self.print(FORSUN_HELP.rstrip("\n"))
        else:
            self.print(USAGE + COMMANDS_HELP.rstrip("\n"))

    def cmd_exit(self, args: list[str]) -> None:
        raise Exit

    cmd_quit = cmd_exit

    def cmd_version(self, args: list[str]) -> None:
        if self.view == views.JSON:
            self.print(views.to_json({"version": __version__}))
        elif self.view == views.LONG:
            self.print(f"forsun-box {__version__}")
        else:
            self.print(__version__)

    def cmd_ls(self, args: list[str]) -> None:
        client = self.client()
        keys = client.getKeys(args[0] if args else "")
        if self.view == views.LONG:
            for key in keys:
                self.print(key)
            if not keys:
                self.print("no plans")
            return
        plans = []
        for key in keys:
            try:
                plans.append(client.get(key))
            except ForsunPlanError:  # gone meanwhile (fired, removed)
                continue
        self._plans(plans)

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
        self._plan(self.client().get(self._key("get", args)))

    def cmd_rm(self, args: list[str]) -> None:
        plan = self.client().remove(self._key("rm", args))
        if self.view == views.FORSUN:
            self.print("success")
        else:
            self._plan(plan)

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
            # forsun's client sends an idle week of a delay plan as -1 (its "no weeks")
            times = (*times[:5], times[5] or -1)
            plan = client.createTimeout(line.key, *times, line.count, line.action, line.params)
        else:
            plan = client.create(line.key, *times, line.action, line.params)
        self._plan(plan)

    def cmd_info(self, args: list[str]) -> None:
        info = self.client().info()
        if self.view == views.JSON:
            self.print(views.to_json(info))
        elif self.view == views.LONG:
            for name, value in info.items():
                self.print(f"{name}:\t{value}")
        else:
            for line in views.forsun_info(info):
                self.print(line)

    # ---- forsun-box additions

    def cmd_pause(self, args: list[str]) -> None:
        self._plan(self.client().pause(self._key("pause", args)))

    def cmd_resume(self, args: list[str]) -> None:
        self._plan(self.client().resume(self._key("resume", args)))

    def cmd_fire(self, args: list[str]) -> None:
        status = self.client().fire(self._key("fire", args))
        if self.view == views.JSON:
            self.print(views.to_json({"status": status}))
        else:
            self.print(f"status:\t{status}")

    def cmd_runs(self, args: list[str]) -> None:
        key, n = count_args("runs", args, DEFAULT_RUNS, 1000)
        runs = self.client().getRuns(key, n)
        if self.view == views.JSON:
            self.print(views.to_json([views.run_dict(r) for r in runs]))
            return
        for run in runs:
            self.print(format_run(run))
        if not runs:
            self.print(f"no runs of {key}")

    def cmd_preview(self, args: list[str]) -> None:
        key, n = count_args("preview", args, DEFAULT_PREVIEW, 1000)
        firings = self.client().preview(key, n)
        if self.view == views.JSON:
            self.print(views.to_json(list(firings)))
            return
        for ms in firings:
            self.print(views.when_ms(ms))
        if not firings:
            self.print(f"no firings of {key} left")

    def _action_params(self, name: str, args: list[str], usage: str) -> tuple[str, dict[str, str]]:
        if len(args) < 3:
            raise CommandError(f"usage: {name} {usage}")
        action = crontab.ACTION_ALIASES.get(args[2], args[2])
        return action, crontab.parse_params(" ".join(args[3:]), action)

    def cmd_cron(self, args: list[str]) -> None:
        action, params = self._action_params("cron", args, '"EXPR" ACTION PARAMS')
        self._plan(self.client().createCron(args[0], args[1], action, params, "", 0))

    def cmd_at(self, args: list[str]) -> None:
        action, params = self._action_params(
            "at", args, '"YYYY-mm-dd HH:MM:SS[.mmm]"|UNIX_MS ACTION PARAMS'
        )
        at_ms = parse_instant(args[1])
        if not 0 <= at_ms < 2**63:
            raise CommandError(f"at: {at_ms} is out of range")
        self._plan(self.client().createAt(args[0], at_ms, action, params))


def _reason(e: BaseException) -> str:
    inner = getattr(e, "inner", None)
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = getattr(e, "message", None) or str(e) or e.__class__.__name__
    return str(text).splitlines()[0] if text else e.__class__.__name__


# ---------------------------------------------------------------- entry points


def run_commands(session: Session, text: str) -> int:
    """Run ``;``-joined commands, stopping at the first failure."""
    for command in split_commands(text):
        try:
            session.run(command)
        except Exit:
            session.exited = True
            return 0
        except CommandError as e:
            session.out.flush()
            report(e, session.view)
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
    if session.view == views.FORSUN:
        session.print(f"Welcome to forsun-box {__version__}")
        session.print("Type 'help' for help")
        session.print()
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
                    if session.view == views.FORSUN:
                        session.print()  # forsun's blank line after each command
            except Exit:
                break
            except CommandError as e:
                report(e, session.view)
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
        opts = parse_options(list(argv))
    except CommandError as e:
        print(f"forsun: {e.message}", file=sys.stderr)
        return 1
    if opts.help:
        print(USAGE + COMMANDS_HELP, end="")
        return 0
    session = Session(opts.host, opts.port, view=opts.view)
    try:
        if opts.commands is not None:
            return run_commands(session, opts.commands)
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
