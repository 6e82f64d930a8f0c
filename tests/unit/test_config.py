"""Settings table, precedence, validation, logging, the serve command line and --demon."""

from __future__ import annotations

import logging
import logging.handlers
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

import psutil
import pytest

from forsun_box import config as config_mod
from forsun_box.cli import main as cli_main
from forsun_box.cli import serve as cli_serve
from forsun_box.config import SETTINGS, Config, load_config, render_markdown, system_zone
from forsun_box.errors import StartupError
from forsun_box.logs import setup_logging
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
CONSOLE_SCRIPT = Path(sys.executable).with_name("forsun-box")


def write_conf(tmp_path: Path, text: str) -> str:
    path = tmp_path / "forsun.conf"
    path.write_text(textwrap.dedent(text))
    return str(path)


# ---------------------------------------------------------------- the table


def test_table_rows_are_unique_and_complete():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    assert len({(s.section, s.key) for s in SETTINGS}) == len(SETTINGS)
    assert len({s.env for s in SETTINGS}) == len(SETTINGS)
    flags = [f for s in SETTINGS for f in (s.flag, s.neg_flag) if f]
    assert len(flags) == len(set(flags))
    for s in SETTINGS:
        assert s.kind in config_mod.KINDS and s.help
    by_name = {s.name: s for s in SETTINGS}
    # forsun's environment names
    assert by_name["driver"].env == "STORE_DRIVER"
    assert by_name["shell_cwd"].env == "ACTION_SHELL_CWD"
    assert by_name["http_bind"].env == "HTTP_BIND"
    assert by_name["port"].env == "PORT"
    assert by_name["bind_address"].env == "BIND_ADDRESS"
    assert by_name["extension_path"].env == "EXTENSION_PATH"
    assert by_name["extensions"].env == "EXTENSIONS"
    assert by_name["store_redis_host"].conf_name == "store.redis_host"
    assert by_name["action_redis_max_connections"].conf_name == "action.redis_max_connections"


def test_defaults(tmp_path):
    cfg = load_config([], {"HOME": str(tmp_path)})
    assert cfg.port == 6458
    assert cfg.bind_address == "127.0.0.1"
    assert (cfg.http_host, cfg.http_port, cfg.http_enabled) == ("127.0.0.1", 9002, True)
    assert cfg.driver == "sqlite"
    assert cfg.demon is False
    assert cfg.log_level == "INFO"
    assert cfg.log_format == "%(asctime)s %(process)d %(levelname)s %(message)s"
    assert cfg.catchup == "fire_once"
    assert cfg.window_seconds == 30.0
    assert cfg.sqlite_synchronous == "NORMAL"
    assert cfg.shell_enabled is True and cfg.shell_allow == ()
    assert cfg.max_body_bytes == 64 * 1024 * 1024
    assert cfg.data_dir == str(tmp_path / ".local" / "share" / "forsun-box")
    assert cfg.sqlite_path == os.path.join(cfg.data_dir, "forsun-box.db")
    assert cfg.mem_path == os.path.join(cfg.data_dir, "forsun-box.mem")
    assert cfg.pid_path == os.path.join(cfg.data_dir, "forsun-box.pid")


def test_data_dir_from_xdg_and_env(tmp_path):
    xdg = tmp_path / "xdg"
    cfg = load_config([], {"HOME": "/nowhere", "XDG_DATA_HOME": str(xdg)})
    assert cfg.data_dir == str(xdg / "forsun-box")
    cfg = load_config([], {"FORSUN_BOX_DATA_DIR": str(tmp_path / "d")})
    assert cfg.data_dir == str(tmp_path / "d")
    assert cfg.sqlite_path == str(tmp_path / "d" / "forsun-box.db")
    cfg = load_config(["--data-dir", str(tmp_path / "e"), "--sqlite-file", "/x/y.db"], {})
    assert cfg.sqlite_path == "/x/y.db"


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(["--data-dir", "data", "--log", "logs/f.log"], {})
    assert cfg.data_dir == str(tmp_path / "data")
    assert cfg.log_file == str(tmp_path / "logs" / "f.log")


# ---------------------------------------------------------------- precedence


def test_precedence_default_file_env_flag(tmp_path):
    conf = write_conf(
        tmp_path,
        """
        port = 7000
        log_level = WARNING
        [store]
        driver = mem
        [action]
        retry_max_count = 2
        """,
    )
    base = ["--conf", conf]
    cfg = load_config(base, {})
    assert (cfg.port, cfg.driver, cfg.log_level, cfg.retry_max_count) == (7000, "mem", "WARNING", 2)
    assert cfg.http_bind == "127.0.0.1:9002"  # untouched: default

    env = {"PORT": "7100", "STORE_DRIVER": "redis", "ACTION_RETRY_MAX_COUNT": "5"}
    cfg = load_config(base, env)
    assert (cfg.port, cfg.driver, cfg.log_level, cfg.retry_max_count) == (
        7100,
        "redis",
        "WARNING",
        5,
    )

    flags = [*base, "--port", "7200", "--driver=sqlite", "--log-level", "debug"]
    cfg = load_config(flags, env)
    assert (cfg.port, cfg.driver, cfg.log_level, cfg.retry_max_count) == (
        7200,
        "sqlite",
        "DEBUG",
        5,
    )


def test_globals_before_any_section_and_forsun_example(tmp_path):
    conf = write_conf(
        tmp_path,
        """
        # comment
        port=6459
        bind_address=0.0.0.0
        http_bind=
        log_file=/var/log/forsun.log
        log_level=INFO
        log_format=

        [store]
        driver=mem
        status_expried = 0
        mem_store_file=/tmp/forsun.session
        redis_host=10.0.0.1
        redis_port=6380
        redis_max_connections=8
        redis_currenttime_expried=2592000

        [action]
        retry_delay_seconds=3
        retry_delay_rate=1
        retry_max_count=3
        poll_idle_seconds=120
        shell_cwd=/tmp
        http_max_clients=64
        http_user_agent=
        redis_max_connections=4
        thrift_max_connections=64
        mysql_user=root
        mysql_passwd=

        [extension]
        path=
        extensions=a.A;b.B
        """,
    )
    cfg = load_config(["--conf", conf], {})
    assert cfg.port == 6459 and cfg.bind_address == "0.0.0.0"
    assert cfg.http_bind == "" and not cfg.http_enabled and cfg.http_port == 0
    assert cfg.log_file == "/var/log/forsun.log" and cfg.log_format == ""
    assert cfg.mem_path == "/tmp/forsun.session"
    assert (cfg.store_redis_host, cfg.store_redis_port) == ("10.0.0.1", 6380)
    assert (cfg.store_redis_max_connections, cfg.action_redis_max_connections) == (8, 4)
    assert cfg.retry_max_count == 3 and cfg.shell_cwd == "/tmp"
    assert cfg.extensions == ("a.A", "b.B")


def test_explicit_global_section_is_accepted(tmp_path):
    conf = write_conf(tmp_path, "port = 1\n[global]\nbind_address = 10.1.1.1\n")
    cfg = load_config(["--conf", conf], {})
    assert (cfg.port, cfg.bind_address) == (1, "10.1.1.1")


def test_log_format_percent_is_not_interpolated(tmp_path):
    conf = write_conf(tmp_path, "log_format = %(levelname)s: %(message)s\n")
    assert load_config(["--conf", conf], {}).log_format == "%(levelname)s: %(message)s"


# ---------------------------------------------------------------- errors


def test_unknown_conf_key_names_file_section_and_key(tmp_path):
    conf = write_conf(tmp_path, "port = 1\n[store]\ndriverr = mem\n")
    with pytest.raises(
        StartupError,
        match=r"forsun\.conf: unknown setting 'driverr' in section \[store\] "
        r"\(did you mean 'driver'\?\)",
    ):
        load_config(["--conf", conf], {})
    conf = write_conf(tmp_path, "colour = blue\n")
    with pytest.raises(
        StartupError, match=r"forsun\.conf: unknown setting 'colour' before any section;"
    ):
        load_config(["--conf", conf], {})
    # an environment name that no setting has is as unknown as any other key
    conf = write_conf(tmp_path, "[store]\nSTORE_REDIS_PASSWD = x\n")
    with pytest.raises(StartupError, match=r"'store_redis_passwd' in section \[store\]"):
        load_config(["--conf", conf], {})


def test_environment_names_are_keys_in_any_section(tmp_path):
    # forsun's travis.conf writes STORE_REDIS_PASSWORD= inside [store]
    conf = write_conf(
        tmp_path,
        "PORT = 7001\n[store]\nSTORE_REDIS_PASSWORD = s3cret\nREDIS_DB = 3\n"
        "[action]\nACTION_SHELL_CWD = /srv\nSTORE_REDIS_PREFIX = p\n",
    )
    cfg = load_config(["--conf", conf], {})
    assert cfg.port == 7001
    assert (cfg.store_redis_password, cfg.store_redis_db) == ("s3cret", 3)
    assert (cfg.shell_cwd, cfg.store_redis_prefix) == ("/srv", "p")
    conf = write_conf(tmp_path, "[store]\nSTORE_REDIS_PASSWORD=\n")
    assert load_config(["--conf", conf], {}).store_redis_password == ""


def test_unknown_section_and_missing_file(tmp_path):
    conf = write_conf(tmp_path, "[stor]\ndriver = mem\n")
    with pytest.raises(StartupError, match=r"unknown section \[stor\]"):
        load_config(["--conf", conf], {})
    with pytest.raises(StartupError, match="cannot read conf file"):
        load_config(["--conf", str(tmp_path / "missing.conf")], {})


def test_bad_value_in_conf_names_file_key(tmp_path):
    conf = write_conf(tmp_path, "[action]\nretry_max_count = many\n")
    with pytest.raises(StartupError) as exc:
        load_config(["--conf", conf], {})
    assert "forsun.conf:action.retry_max_count" in str(exc.value)
    assert "'many'" in str(exc.value)


def test_bad_int_in_env_names_the_variable():
    with pytest.raises(StartupError, match=r"env STORE_REDIS_PORT: invalid value 'x'"):
        load_config([], {"STORE_REDIS_PORT": "x"})
    with pytest.raises(StartupError, match="env PORT"):
        load_config([], {"PORT": "70000"})  # out of range


def test_bad_flag_values():
    with pytest.raises(StartupError, match=r"--http: invalid value 'nohost'"):
        load_config(["--http", "nohost"], {})
    with pytest.raises(StartupError, match="--http"):
        load_config(["--http", "127.0.0.1:99999"], {})
    with pytest.raises(StartupError, match="--port"):
        load_config(["--port", "notanumber"], {})
    with pytest.raises(StartupError, match="--catchup"):
        load_config(["--catchup", "later"], {})
    with pytest.raises(StartupError, match="--window-seconds"):
        load_config(["--window-seconds", "0"], {})
    with pytest.raises(StartupError, match="--driver"):
        load_config(["--driver", " "], {})
    with pytest.raises(StartupError, match="--log-rotate"):
        load_config(["--log-rotate", "sometimes"], {})
    with pytest.raises(StartupError, match="unrecognized arguments"):
        load_config(["--no-such-flag"], {})


def test_http_bind_forms():
    assert load_config(["--http", "0.0.0.0:80"], {}).http_host == "0.0.0.0"
    cfg = load_config(["--http", "[::1]:9100"], {})
    assert (cfg.http_host, cfg.http_port) == ("::1", 9100)
    cfg = load_config(["--http", ":9101", "--bind", "10.0.0.2"], {})
    assert (cfg.http_host, cfg.http_port) == ("10.0.0.2", 9101)
    cfg = load_config([], {"HTTP_BIND": ""})
    assert not cfg.http_enabled


def test_direct_construction_is_validated():
    assert Config(port=0).port == 0
    with pytest.raises(StartupError, match="port"):
        Config(port=-1)
    with pytest.raises(StartupError, match="http_bind"):
        Config(http_bind="x:y")
    with pytest.raises(StartupError, match="demon"):
        Config(demon="yes")  # type: ignore[arg-type]
    assert Config(window_seconds=5).window_seconds == 5.0
    assert Config(shell_allow=["ls"]).shell_allow == ("ls",)  # type: ignore[arg-type]
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.port = 1  # type: ignore[misc]
    assert cfg.replace(port=5).port == 5 and cfg.port == 6458


# ---------------------------------------------------------------- booleans, lists, choices


def test_repeatable_extension_appends(tmp_path):
    conf = write_conf(tmp_path, "[extension]\npath = /ext\nextensions = a.A\n")
    cfg = load_config(["--conf", conf, "--extension", "b.B", "--extension=c.C"], {})
    assert cfg.extensions == ("a.A", "b.B", "c.C")
    assert cfg.extension_path == "/ext"
    cfg = load_config(["--extension", "b.B"], {"EXTENSIONS": "x.X;y.Y"})
    assert cfg.extensions == ("x.X", "y.Y", "b.B")


def test_demon_and_nodemon(tmp_path):
    assert load_config(["--demon"], {}).demon is True
    assert load_config(["--demon=false"], {}).demon is False
    assert load_config(["--nodemon"], {}).demon is False
    conf = write_conf(tmp_path, "demon = yes\n")
    assert load_config(["--conf", conf], {}).demon is True
    assert load_config(["--conf", conf, "--nodemon"], {}).demon is False
    assert load_config(["--nodemon", "--demon"], {}).demon is False  # --nodemon wins
    assert load_config([], {"FORSUN_DEMON": "on"}).demon is True
    with pytest.raises(StartupError, match="env FORSUN_DEMON"):
        load_config([], {"FORSUN_DEMON": "maybe"})


def test_choices_are_case_insensitive_and_lists_split():
    cfg = load_config(
        ["--sqlite-synchronous", "full", "--catchup", "SKIP"],
        {"ACTION_SHELL_ALLOW": " ls ; echo ;", "ACTION_SHELL_ENABLED": "0"},
    )
    assert cfg.sqlite_synchronous == "FULL" and cfg.catchup == "skip"
    assert cfg.shell_allow == ("ls", "echo")
    assert cfg.shell_enabled is False


def test_log_rotate_forms():
    parse = config_mod.parse_log_rotate
    assert parse("") is None
    assert parse("midnight") == ("time", "midnight")
    assert parse("hourly") == ("time", "H")
    assert parse("W3") == ("time", "W3")
    assert parse("100M") == ("size", 100 << 20)
    assert parse("512kb") == ("size", 512 << 10)
    assert parse("4096") == ("size", 4096)
    with pytest.raises(ValueError, match="a size like 100M"):
        parse("0")


# ---------------------------------------------------------------- time zone


def test_timezone_setting_and_tz_env():
    assert load_config(["--timezone", "Europe/Paris"], {}).tzinfo() == ZoneInfo("Europe/Paris")
    with pytest.raises(StartupError, match="--timezone"):
        load_config(["--timezone", "Mars/Olympus"], {})
    cfg = load_config([], {})
    assert cfg.tzinfo({"TZ": "Asia/Tokyo"}) == ZoneInfo("Asia/Tokyo")
    assert cfg.tzinfo({"TZ": ":America/New_York"}) == ZoneInfo("America/New_York")


def test_system_zone_fallbacks(tmp_path):
    zone_file = tmp_path / "usr" / "share" / "zoneinfo" / "Europe" / "Berlin"
    zone_file.parent.mkdir(parents=True)
    zone_file.write_bytes(Path(_tzdata_file("Europe/Berlin")).read_bytes())
    link = tmp_path / "localtime"
    link.symlink_to(zone_file)
    assert system_zone({}, str(link)) == ZoneInfo("Europe/Berlin")

    copy = tmp_path / "localtime-copy"
    copy.write_bytes(zone_file.read_bytes())
    zone = system_zone({"TZ": "JST-9"}, str(copy))  # a POSIX rule: not a zone name
    assert zone.utcoffset(_summer()) == ZoneInfo("Europe/Berlin").utcoffset(_summer())

    assert system_zone({}, str(tmp_path / "absent")) == ZoneInfo("UTC")


def _tzdata_file(name: str) -> str:
    import importlib.resources

    return str(importlib.resources.files("tzdata").joinpath("zoneinfo", *name.split("/")))


def _summer():
    from datetime import datetime

    return datetime(2024, 7, 1, 12)


# ---------------------------------------------------------------- docs and help


def test_docs_config_md_is_up_to_date():
    committed = (ROOT / "docs" / "CONFIG.md").read_text()
    assert committed == render_markdown(), (
        "docs/CONFIG.md is stale: python -m forsun_box.config > docs/CONFIG.md"
    )
    for s in SETTINGS:
        assert f"`{s.name}`" in committed and f"`{s.env}`" in committed


def test_help_lists_every_flag_and_conf_only_setting():
    text = config_mod.build_parser().format_help()
    for s in SETTINGS:
        if s.flag:
            assert s.flag in text
        else:
            assert s.env in text
    assert "--nodemon" in text and "--conf" in text


def test_python_m_serve_help_subprocess():
    proc = subprocess.run(
        [PYTHON, "-m", "forsun_box", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--driver-mem-store-file" in proc.stdout and "STORE_DRIVER" in proc.stdout


def test_console_script_bad_port_is_one_line_exit_1(tmp_path):
    command = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [PYTHON, "-m", "forsun_box"]
    proc = subprocess.run(
        [*command, "serve", "--port", "notanumber"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines == ["forsun-box: --port: invalid value 'notanumber' for port: expected an integer"]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


# ---------------------------------------------------------------- cli dispatch


def test_main_version_help_and_unknown(capsys, monkeypatch):
    assert cli_main.main(["--version"], prog="forsun-box") == 0
    assert capsys.readouterr().out.strip().startswith("forsun-box ")
    assert cli_main.main(["help"], prog="forsun-box") == 0
    assert "serve" in capsys.readouterr().out
    monkeypatch.setattr(cli_main, "_client", lambda: None)
    assert cli_main.main(["frobnicate"], prog="forsun-box") == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli_main.main([], prog="forsun-box") == 2


def test_main_dispatch_by_command_and_program_name(monkeypatch):
    calls: list[tuple[str, list[str]]] = []

    def fake_serve(argv, prog="forsun-box serve"):
        calls.append((prog, argv))
        return 0

    def fake_client(argv):
        calls.append(("client", argv))
        return 3

    monkeypatch.setattr(cli_main, "serve_main", fake_serve)
    monkeypatch.setattr(cli_main, "_client", lambda: fake_client)
    assert cli_main.main(["serve", "--port", "1"], prog="forsun-box") == 0
    assert cli_main.main(["--port", "2"], prog="/usr/bin/forsund") == 0
    assert cli_main.main(["ls", "k"], prog="forsun.exe") == 3
    assert cli_main.main(["--host", "h", "info"], prog="forsun-box") == 3
    assert cli_main.forsund(["--port", "3"]) == 0
    assert calls == [
        ("forsun-box serve", ["--port", "1"]),
        ("forsund", ["--port", "2"]),
        ("client", ["ls", "k"]),
        ("client", ["--host", "h", "info"]),
        ("forsund", ["--port", "3"]),
    ]


def test_serve_main_runs_app_with_config(monkeypatch):
    import forsun_box.app
    import forsun_box.logs

    seen = {}
    monkeypatch.setattr(forsun_box.logs, "setup_logging", lambda cfg: seen.setdefault("log", cfg))
    monkeypatch.setattr(
        forsun_box.app, "run", lambda cfg, on_ready=None: seen.setdefault("run", cfg) and 7
    )
    assert cli_serve.serve_main(["--port", "1234", "--nodemon"]) == 7
    assert seen["run"].port == 1234 and seen["log"] is seen["run"]


def test_serve_main_startup_error_from_app(monkeypatch, capsys, tmp_path):
    import forsun_box.app
    import forsun_box.logs

    def failing_run(cfg, on_ready=None):
        raise StartupError("cannot listen on 127.0.0.1:1: in use")

    monkeypatch.setattr(forsun_box.logs, "setup_logging", lambda cfg: None)
    monkeypatch.setattr(forsun_box.app, "run", failing_run)
    assert cli_serve.serve_main(["--log", str(tmp_path / "x.log")]) == 1
    assert capsys.readouterr().err.strip() == "forsun-box: cannot listen on 127.0.0.1:1: in use"


# ---------------------------------------------------------------- logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    saved_levels = {n: logging.getLogger(n).level for n in ("forsun_box", "tornado")}
    yield
    for handler in root.handlers[:]:
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(saved[1])
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)


def test_setup_logging_file_format_and_level(tmp_path, restore_logging):
    log_file = tmp_path / "logs" / "forsun.log"
    cfg = load_config(["--log", str(log_file), "--log-level", "WARNING"], {})
    handler = setup_logging(cfg)
    assert isinstance(handler, logging.handlers.WatchedFileHandler)
    logging.getLogger("forsun_box.test").info("hidden")
    logging.getLogger("forsun_box.test").warning("shown %d", 42)
    logging.getLogger("tornado.general").error("tornado line")
    handler.flush()
    lines = log_file.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(f"{os.getpid()} WARNING shown 42")
    assert lines[1].endswith("ERROR tornado line")
    # a second call replaces the handler rather than doubling lines
    setup_logging(cfg)
    assert sum(getattr(h, "_forsun_box_handler", False) for h in logging.getLogger().handlers) == 1


def test_setup_logging_rotation_handlers(tmp_path, restore_logging):
    cfg = load_config(
        ["--log", str(tmp_path / "a.log"), "--log-rotate", "midnight", "--log-backup-count", "3"],
        {},
    )
    handler = setup_logging(cfg)
    assert isinstance(handler, logging.handlers.TimedRotatingFileHandler)
    assert handler.backupCount == 3 and handler.when == "MIDNIGHT"
    cfg = load_config(["--log", str(tmp_path / "b.log"), "--log-rotate", "1M"], {})
    handler = setup_logging(cfg)
    assert isinstance(handler, logging.handlers.RotatingFileHandler)
    assert handler.maxBytes == 1 << 20


def test_setup_logging_unwritable_file(tmp_path, restore_logging):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = load_config(["--log", str(blocker / "sub" / "x.log")], {})
    with pytest.raises(StartupError, match="cannot open log file"):
        setup_logging(cfg)


# ---------------------------------------------------------------- daemon


SLEEPER = """
import os, sys, time
from forsun_box.daemon import daemonize
pid_file, log_file = sys.argv[1], sys.argv[2]
daemonize(pid_file, log_file).ready()
print("stderr of the daemon", file=sys.stderr, flush=True)
stop = pid_file + ".stop"
deadline = time.monotonic() + 30
while time.monotonic() < deadline and not os.path.exists(stop):
    time.sleep(0.02)  # the daemon polls for its stop file (no test helpers here)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_daemonize_detaches_writes_and_removes_pid_file(tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    pid_file = tmp_path / "run" / "sleeper.pid"
    log_file = tmp_path / "daemon.log"
    proc = subprocess.run(
        [PYTHON, str(script), str(pid_file), str(log_file)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    # the launching process returns once the daemon says it is ready
    assert proc.returncode == 0, proc.stderr
    assert pid_file.exists()
    pid = int(pid_file.read_text())
    try:
        daemon = psutil.Process(pid)
        assert pid not in (os.getpid(), os.getppid())
        assert daemon.ppid() != os.getpid()
        assert os.getsid(pid) != os.getsid(0)  # its own session
        assert os.getsid(pid) != pid  # not a session leader: can't regain a terminal
        assert daemon.cwd() == "/"
        assert wait_until(lambda: "stderr of the daemon" in log_file.read_text(), 10)

        # a second instance refuses the live pid file
        again = subprocess.run(
            [PYTHON, str(script), str(pid_file), str(log_file)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        assert again.returncode != 0 and "already running" in again.stderr

        (tmp_path / "run" / "sleeper.pid.stop").touch()
        assert wait_until(lambda: not pid_file.exists(), 10), "pid file not removed at exit"
        assert wait_until(lambda: _gone(pid), 10)
    finally:
        if not _gone(pid):
            os.kill(pid, 9)


# ---------------------------------------------------------------- environment names


def test_generic_names_of_forsun_box_settings_need_the_prefix():
    env = {"TIMEZONE": "Asia/Tokyo", "CATCHUP": "skip", "PID_FILE": "/tmp/x.pid", "DEMON": "1"}
    cfg = load_config([], env)
    # set for other programs: they change nothing here
    assert (cfg.timezone, cfg.catchup, cfg.pid_file, cfg.demon) == ("", "fire_once", "", False)
    cfg = load_config([], {"FORSUN_TIMEZONE": "Asia/Tokyo", "FORSUN_CATCHUP": "skip"})
    assert (cfg.timezone, cfg.catchup) == ("Asia/Tokyo", "skip")


def test_forsun_names_count_and_the_prefixed_one_wins():
    assert load_config([], {"PORT": "7100"}).port == 7100  # forsun reads PORT
    assert load_config([], {"FORSUN_PORT": "7200", "PORT": "7100"}).port == 7200
    assert load_config([], {"STORE_DRIVER": "mem"}).driver == "mem"
    assert load_config([], {"FORSUN_STORE_DRIVER": "mem"}).driver == "mem"
    with pytest.raises(StartupError, match="env FORSUN_PORT: invalid value 'x'"):
        load_config([], {"FORSUN_PORT": "x"})


def test_the_environment_is_described_in_one_line():
    env = {
        "PORT": "7100",
        "HTTP_API_TOKEN": "s3cret-token",
        "FORSUN_CATCHUP": "skip",
        "TIMEZONE": "Asia/Tokyo",
        "HOME": "/root",
    }
    line = config_mod.describe_environment(env)
    assert line.startswith("settings from the environment: ")
    assert "PORT='7100' (port)" in line and "FORSUN_CATCHUP='skip' (catchup)" in line
    assert "HTTP_API_TOKEN=(set) (http.api_token)" in line and "s3cret" not in line
    assert line.endswith("not read (forsun-box reads FORSUN_ + the name): TIMEZONE")
    assert "\n" not in line
    assert config_mod.describe_environment({"HOME": "/root"}) == ""


def test_serve_logs_the_settings_from_the_environment(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORSUN_") and k != "TIMEZONE"}
    env.update({"FORSUN_CATCHUP": "skip", "TIMEZONE": "Asia/Tokyo"})
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        got = subprocess.run(
            [
                sys.executable,
                "-m",
                "forsun_box",
                "serve",
                "--data-dir",
                str(tmp_path),
                "--http",
                f"127.0.0.1:{busy.getsockname()[1]}",
                "--port",
                "0",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    # the HTTP port is taken: start-up stops, after logging where its settings came from
    assert got.returncode == 1
    lines = [line for line in got.stderr.splitlines() if "settings from the environment" in line]
    assert len(lines) == 1, got.stderr
    assert "FORSUN_CATCHUP='skip' (catchup)" in lines[0] and "TIMEZONE" in lines[0]
    assert "(choose another address with --http HOST:PORT)" in got.stderr  # the flag to change


def test_a_malformed_section_header_is_reported_as_such(tmp_path):
    conf = write_conf(tmp_path, "port = 7000\n[store\ndriver = mem\n")
    with pytest.raises(StartupError, match=r":2: malformed section header '\[store'"):
        load_config(["--conf", conf], {})
    conf = write_conf(tmp_path, "[store] # the store\ndriver = mem\n")
    assert load_config(["--conf", conf], {}).driver == "mem"
