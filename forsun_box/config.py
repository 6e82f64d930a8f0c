"""The service's settings: one table, one immutable :class:`Config`.

Every setting is declared exactly once, as a field of :class:`Config`, with
its type, default, help text, conf-file section and key, environment
variable and command-line flag. Parsing, validation, ``serve --help`` and
``docs/CONFIG.md`` (:func:`render_markdown`) all derive from that table.

Precedence: defaults < conf file (``--conf FILE``) < environment < flags.

Naming scheme: the attribute is the conf key; where a key exists in more
than one section (``redis_*`` in ``[store]`` and ``[action]``) or is too
generic alone (``[extension] path``) the attribute carries the section as
prefix (``store_redis_host``, ``action_redis_max_connections``,
``extension_path``). The environment variable is the upper-cased
``<section>_<key>`` (upper-cased key for globals), as forsun reads them;
the exceptions are ``FORSUN_BOX_DATA_DIR`` and forsun's ``EXTENSIONS``.

Environment names (:attr:`Setting.env_names`): every setting is read from
``FORSUN_<NAME>`` (``FORSUN_PORT``, ``FORSUN_STORE_DRIVER``). The bare
``<NAME>`` counts too where forsun reads it (its global keys, such as
``PORT``) or where the section prefix makes it specific (``STORE_*``,
``ACTION_*``, ``HTTP_*``, ``EXTENSION_*``); forsun-box's own global
settings (``timezone``, ``catchup``, ...) have generic names that other
programs set for their own ends, so only ``FORSUN_TIMEZONE`` etc. change
them. The start-up log lists every setting taken from the environment
(:func:`environment_settings`).

Regenerate the docs with ``python -m forsun_box.config > docs/CONFIG.md``.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import os
import re
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from forsun_box.enums import CATCHUP_POLICIES, Misfire
from forsun_box.errors import StartupError

DEFAULT_LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(message)s"
_GLOBAL = "global"  # the fake section header put before a conf file's leading keys
KINDS = ("str", "int", "float", "bool", "choice", "list")


# ---------------------------------------------------------------- value checks


def parse_http_bind(value: str, default_host: str = "127.0.0.1") -> tuple[str, int] | None:
    """Split ``HOST:PORT`` (``[v6]:PORT``, ``:PORT`` or ``PORT``) into ``(host, port)``.

    Returns ``None`` for ``""`` (HTTP disabled); a missing host is
    ``default_host``. Raises :class:`ValueError` on anything else.
    """
    value = value.strip()
    if not value:
        return None
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError("expected [IPV6]:PORT")
    elif ":" in value:
        host, _, port = value.rpartition(":")
    else:
        host, port = "", value
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT with a port 0-65535")
    if any(c.isspace() for c in host):
        raise ValueError("the host contains white space")
    return (host or default_host, int(port))


_ROTATE_TIMES = {"midnight": "midnight", "hourly": "H", "daily": "D", "weekly": "W0"}
_ROTATE_SIZE = re.compile(r"^(\d+)\s*([kmg]?)(?:i?b)?$", re.IGNORECASE)


def parse_log_rotate(value: str) -> tuple[str, str] | tuple[str, int] | None:
    """Interpret ``log_rotate``.

    ``""`` → ``None`` (no rotation); ``midnight``/``hourly``/``daily``/
    ``weekly``/``w0``..``w6`` → ``("time", WHEN)`` with ``WHEN`` as
    :class:`logging.handlers.TimedRotatingFileHandler` spells it; a size such
    as ``100M``, ``512K``, ``1G`` or plain bytes → ``("size", BYTES)``.
    Raises :class:`ValueError` otherwise.
    """
    text = value.strip().lower()
    if not text:
        return None
    if text in _ROTATE_TIMES:
        return ("time", _ROTATE_TIMES[text])
    if re.fullmatch(r"w[0-6]", text):
        return ("time", text.upper())
    match = _ROTATE_SIZE.match(text)
    if match:
        size = (
            int(match.group(1))
            * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
        )
        if size > 0:
            return ("size", size)
    raise ValueError("expected midnight, hourly, daily, weekly, w0-w6 or a size like 100M")


def _check_port(value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError("a port is 0-65535")


def _check_non_negative(value: float) -> None:
    if value < 0:
        raise ValueError("must not be negative")


def _check_positive(value: float) -> None:
    if value <= 0:
        raise ValueError("must be greater than 0")


def _check_non_empty(value: str) -> None:
    if not value.strip():
        raise ValueError("must not be empty")


def _check_http_bind(value: str) -> None:
    parse_http_bind(value)


def _check_log_rotate(value: str) -> None:
    parse_log_rotate(value)


def _check_networks(value: tuple[str, ...]) -> None:
    import ipaddress

    for item in value:
        if item.strip():
            ipaddress.ip_network(item.strip(), strict=False)


def _check_timezone(value: str) -> None:
    if value:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc


# ---------------------------------------------------------------- the table


_PY_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "choice": str,
    "int": int,
    "float": (int, float),
    "bool": bool,
    "list": (tuple, list),
}


@dataclass(frozen=True)
class Setting:
    """One row of the settings table, derived from a :class:`Config` field."""

    name: str
    kind: str
    default: Any
    help: str
    section: str  # "" for the global keys that stand before any section
    key: str
    env: str
    flag: str | None
    neg_flag: str | None = None  # bool only: a flag that forces False
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    doc_default: str | None = None  # shown instead of the default when it is computed
    check: Callable[[Any], None] | None = None
    is_path: bool = False  # a file or directory: made absolute (~ expanded) when set

    @property
    def env_names(self) -> tuple[str, ...]:
        """The environment variables read for this setting, the first found wins."""
        if self.env.startswith("FORSUN_"):
            return (self.env,)
        return (f"FORSUN_{self.env}", self.env)

    @property
    def conf_name(self) -> str:
        """``section.key`` (just ``key`` for globals), as shown to users."""
        return f"{self.section}.{self.key}" if self.section else self.key

    def parse(self, raw: str) -> Any:
        """Convert text from a conf file, the environment or a flag; :class:`ValueError` if bad."""
        text = raw.strip()
        if self.kind == "str":
            return raw
        if self.kind == "int":
            try:
                return int(text)
            except ValueError:
                raise ValueError("expected an integer") from None
        if self.kind == "float":
            try:
                return float(text)
            except ValueError:
                raise ValueError("expected a number") from None
        if self.kind == "bool":
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false, yes/no, on/off or 1/0")
        if self.kind == "choice":
            for choice in self.choices:
                if choice.lower() == text.lower():
                    return choice
            raise ValueError("expected one of " + ", ".join(self.choices))
        return tuple(part.strip() for part in raw.split(";") if part.strip())

    def validate(self, value: Any) -> Any:
        """Check a typed value (type and range); return it normalised or raise ValueError."""
        expected = _PY_TYPES[self.kind]
        # bool is an int subclass, but True is no port number
        well_typed = isinstance(value, expected)  # a bool, not narrowing: value stays Any
        if not well_typed or (isinstance(value, bool) and self.kind != "bool"):
            raise ValueError(f"expected a {self.kind} value")
        if self.kind == "float":
            value = float(value)
        elif self.kind == "list":
            value = tuple(value)
            if not all(isinstance(item, str) for item in value):
                raise ValueError("expected a list of strings")
        elif self.kind == "choice" and value not in self.choices:
            value = self.parse(value)
        elif self.is_path and value:
            # absolute now: a daemon changes its directory to "/" before using them
            value = os.path.abspath(os.path.expanduser(value))
        if self.check is not None:
            self.check(value)
        return value


def _s(
    default: Any,
    help: str,
    flag: str | None = None,
    *,
    section: str = "",
    key: str | None = None,
    env: str | None = None,
    neg_flag: str | None = None,
    choices: tuple[str, ...] = (),
    metavar: str | None = None,
    doc_default: str | None = None,
    check: Callable[[Any], None] | None = None,
    path: bool = False,
) -> Any:
    """Declare a setting as a dataclass field; the row is completed in :func:`_build_table`."""
    meta = dict(
        help=help,
        section=section,
        key=key,
        env=env,
        flag=flag,
        neg_flag=neg_flag,
        choices=choices,
        metavar=metavar,
        doc_default=doc_default,
        check=check,
        is_path=path,
    )
    return field(default=default, metadata={"setting": meta})


def _store(default: Any, help: str, flag: str | None = None, **kw: Any) -> Any:
    return _s(default, help, flag, section="store", **kw)


def _action(default: Any, help: str, flag: str | None = None, **kw: Any) -> Any:
    return _s(default, help, flag, section="action", **kw)


def _extension(default: Any, help: str, flag: str | None = None, **kw: Any) -> Any:
    return _s(default, help, flag, section="extension", **kw)


def _http(default: Any, help: str, flag: str | None = None, **kw: Any) -> Any:
    return _s(default, help, flag, section="http", **kw)


def _cluster(default: Any, help: str, flag: str | None = None, **kw: Any) -> Any:
    return _s(default, help, flag, section="cluster", **kw)


_POSITIVE, _NON_NEG, _PORT = _check_positive, _check_non_negative, _check_port


@dataclass(frozen=True)
class Config:
    """The service's settings, immutable; build it with :func:`load_config`.

    Each field is one row of the settings table: ``_s(default, help, flag)``
    for global keys, ``_store``/``_action``/``_extension``/``_http`` for a
    section's keys (the conf key is the attribute without its section
    prefix). Constructing a Config directly (``Config(port=0)`` in tests)
    validates every value too and raises :class:`StartupError` on a bad one.
    """

    # ---- global keys (before any section in the conf file)
    port: int = _s(6458, "Thrift API port.", "--port", check=_PORT)
    bind_address: str = _s("127.0.0.1", "Thrift API listen address.", "--bind", metavar="HOST")
    http_bind: str = _s(
        "127.0.0.1:9002",
        "HTTP API and console address HOST:PORT (PORT or :PORT take the host of --bind); "
        "empty disables HTTP.",
        "--http",
        metavar="HOST:PORT",
        check=_check_http_bind,
    )
    server_mode: str = _s(
        "TIMER",
        "TIMER serves the APIs, stores and fires plans; AGENT serves the APIs and stores "
        "plans but never fires them on their schedule (forsun's API-only node; in a "
        "cluster, a node that takes no partitions).",
        "--server-mode",
        choices=("TIMER", "AGENT"),
    )
    log_file: str = _s("", "Log file; empty logs to stderr.", "--log", path=True)
    log_level: str = _s(
        "INFO", "Log level.", "--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    log_format: str = _s(
        DEFAULT_LOG_FORMAT,
        "Log line format (logging %-style); empty means the default.",
        "--log-format",
        metavar="FORMAT",
    )
    log_rotate: str = _s(
        "",
        "Rotate the log file: midnight, hourly, daily, weekly, w0-w6 (a weekday) or at a "
        "size such as 100M; empty never rotates (external rotation is noticed: the file is "
        "reopened).",
        "--log-rotate",
        metavar="WHEN",
        check=_check_log_rotate,
    )
    log_backup_count: int = _s(7, "Rotated log files kept (0 keeps all).", "--log-backup-count")
    demon: bool = _s(
        False,
        "Run in the background (double fork, pid file); --nodemon forces the foreground.",
        "--demon",
        neg_flag="--nodemon",
    )
    data_dir: str = _s(
        "",
        "Directory of the database, snapshot and pid file; created when missing.",
        "--data-dir",
        env="FORSUN_BOX_DATA_DIR",
        path=True,
        doc_default="$XDG_DATA_HOME/forsun-box (~/.local/share/forsun-box)",
    )
    timezone: str = _s(
        "",
        "Time zone of calendar plans, e.g. Europe/Paris; empty uses the system zone.",
        "--timezone",
        metavar="ZONE",
        check=_check_timezone,
    )
    catchup: str = _s(
        Misfire.FIRE_ONCE.value,
        "After downtime (or a cluster failover) fire a missed plan once, every missed "
        "time, or skip it.",
        "--catchup",
        choices=tuple(p.value for p in CATCHUP_POLICIES),
    )
    window_seconds: float = _s(
        30.0,
        "How far ahead the engine keeps due plans in memory, seconds.",
        "--window-seconds",
        check=_POSITIVE,
    )
    loop_stall_ms: int = _s(
        250,
        "Log a warning, with what the event loop is running, when it goes unanswered "
        "this many milliseconds (firings are then late); 0 turns the watch off.",
        "--loop-stall-ms",
        check=_NON_NEG,
    )
    pid_file: str = _s(
        "",
        "Pid file written with --demon; empty means <data_dir>/forsun-box.pid.",
        "--pid-file",
        path=True,
    )

    # ---- [store]
    driver: str = _store(
        "sqlite",
        "Store driver: sqlite, mem, redis, postgres, or one an extension registers.",
        "--driver",
        metavar="NAME",
        check=_check_non_empty,
    )
    status_expried: int = _store(0, "Accepted for forsun compatibility (its spelling); unused.")
    mem_store_file: str = _store(
        "",
        "Snapshot file of the mem driver; empty means <data_dir>/forsun-box.mem.",
        "--driver-mem-store-file",
        path=True,
    )
    mem_time_rate: float = _store(60.0, "Seconds between mem snapshots.", check=_POSITIVE)
    sqlite_file: str = _store(
        "",
        "SQLite database file; empty means <data_dir>/forsun-box.db.",
        "--sqlite-file",
        path=True,
    )
    sqlite_synchronous: str = _store(
        "NORMAL",
        "SQLite synchronous mode; FULL also survives power loss.",
        "--sqlite-synchronous",
        choices=("OFF", "NORMAL", "FULL"),
    )
    run_retention_days: float = _store(7.0, "Days of run history kept.", check=_NON_NEG)
    max_runs_per_key: int = _store(100, "Run records kept per plan key.", check=_NON_NEG)
    store_redis_host: str = _store("127.0.0.1", "Redis store host.", "--driver-redis-host")
    store_redis_port: int = _store(6379, "Redis store port.", "--driver-redis-port", check=_PORT)
    store_redis_db: int = _store(0, "Redis store database.", "--driver-redis-db", check=_NON_NEG)
    store_redis_password: str = _store("", "Redis store password.", "--driver-redis-password")
    store_redis_prefix: str = _store("forsun", "Redis store key prefix.", "--driver-redis-prefix")
    store_redis_server_id: int = _store(0, "Redis store server id.", "--driver-redis-server-id")
    store_redis_max_connections: int = _store(8, "Redis store pool size.", check=_POSITIVE)
    store_redis_client_timeout: int = _store(7200, "Redis store idle timeout, seconds.")
    store_redis_bulk_size: int = _store(5, "Redis store commands per batch.", check=_POSITIVE)
    store_redis_currenttime_expried: int = _store(2592000, "Redis current-time key expiry, s.")
    store_redis_plan_expried: int = _store(604800, "Redis plan key extra expiry, seconds.")
    store_redis_plantime_expried: int = _store(604800, "Redis plan-time key extra expiry, s.")
    postgres_dsn: str = _store(
        "",
        "PostgreSQL connection string of the postgres driver "
        "(postgresql://USER:PASSWORD@HOST:PORT/DATABASE); what it leaves out comes from "
        "libpq's PG* environment variables.",
        "--postgres-dsn",
        metavar="DSN",
    )
    postgres_pool_size: int = _store(
        8, "Connections the postgres driver opens at most.", "--postgres-pool-size", check=_POSITIVE
    )
    postgres_partitions: int = _store(
        512,
        "Partitions plans hash into, fixed when the postgres database is created; a "
        "database created earlier keeps its own number.",
        check=_POSITIVE,
    )

    # ---- [action]
    retry_delay_seconds: float = _action(
        3.0, "Base retry delay, seconds.", "--retry-delay-seconds", check=_NON_NEG
    )
    retry_delay_rate: float = _action(
        1.0, "Retry delay growth: delay + delay * rate * attempt.", check=_NON_NEG
    )
    retry_max_count: int = _action(
        0, "Retries of a failed firing (0: none).", "--retry-max-count", check=_NON_NEG
    )
    poll_idle_seconds: int = _action(120, "Accepted for forsun compatibility; unused.")
    concurrency: int = _action(256, "Firings run at once per action type.", check=_POSITIVE)
    shell_cwd: str = _action(
        "", "Working directory of shell commands; empty inherits the service's.", path=True
    )
    shell_enabled: bool = _action(True, "Allow the shell action.", "--shell-enabled")
    shell_allow: tuple[str, ...] = _action(
        (), "Commands (first word) the shell action may run, ;-separated; empty allows all."
    )
    shell_timeout: float = _action(600.0, "Seconds before a shell command is killed.")
    http_max_clients: int = _action(256, "Concurrent http action requests.", check=_POSITIVE)
    http_connect_timeout: float = _action(5.0, "http action connect timeout, s.", check=_POSITIVE)
    http_request_timeout: float = _action(
        120.0, "http action request timeout, seconds.", check=_POSITIVE
    )
    http_user_agent: str = _action("", "User-Agent of the http action; empty: its own.")
    action_redis_max_connections: int = _action(8, "Pool size per redis target.", check=_POSITIVE)
    action_redis_client_timeout: int = _action(7200, "Redis action idle timeout, seconds.")
    action_redis_bulk_size: int = _action(5, "Redis action commands per batch.", check=_POSITIVE)
    thrift_max_connections: int = _action(64, "Pool size per thrift target.", check=_POSITIVE)
    mysql_user: str = _action("root", "Default user of the mysql action.")
    mysql_passwd: str = _action("", "Default password of the mysql action.")
    mysql_max_connections: int = _action(8, "Pool size per mysql target.", check=_POSITIVE)
    mysql_wait_connection_timeout: int = _action(7200, "Longest wait for a mysql connection, s.")
    mysql_idle_seconds: int = _action(120, "Idle time before a mysql connection closes, s.")
    beanstalk_max_connections: int = _action(
        8, "Pool size (connections and threads) per beanstalk target.", check=_POSITIVE
    )
    action_connect_timeout: float = _action(
        5.0, "Connect timeout of the redis, mysql and beanstalk actions, s.", check=_POSITIVE
    )
    action_run_timeout: float = _action(
        60.0, "Time limit of one redis/mysql/beanstalk action run, seconds.", check=_POSITIVE
    )

    # ---- [extension]
    extension_path: str = _extension(
        "", "Directory added to the import path for extensions.", "--extension-path", path=True
    )
    extensions: tuple[str, ...] = _extension(
        (),
        "Extensions to load, module.Class, ;-separated; each --extension adds one.",
        "--extension",
        env="EXTENSIONS",
        metavar="MODULE.CLASS",
    )
    extensions_dir: str = _extension(
        "",
        "Drop-in folder: every .py file and package in it is loaded at start; its lib/ "
        "holds their third-party packages. Empty: extensions/ beside the executable when "
        "frozen, else <data_dir>/extensions.",
        "--extensions-dir",
        key="dir",
        path=True,
    )

    # ---- [cluster] (several nodes on one postgres database: docs/CLUSTER.md)
    node_id: str = _cluster(
        "",
        "This node's name in a cluster; set, the node shares the firing with the other "
        "nodes on the same postgres database by partition leases. Empty: a single node "
        "fires every plan.",
        "--node-id",
        metavar="NAME",
    )
    cluster_address: str = _cluster(
        "",
        "HOST:PORT the other nodes and operators reach this node's HTTP API at, shown in "
        "the lease table; empty: the HTTP address.",
        "--cluster-address",
        metavar="HOST:PORT",
    )
    lease_ttl_seconds: float = _cluster(
        10.0,
        "How long a partition lease lasts unrenewed (renewed every third of it); a dead "
        "node's plans fire elsewhere about this long after it died.",
        "--lease-ttl-seconds",
        check=_POSITIVE,
    )

    # ---- [http] (forsun-box's own limits of the HTTP API)
    max_body_bytes: int = _http(
        64 << 20, "Largest request body, bytes (64 MiB).", "--max-body-bytes", check=_POSITIVE
    )
    max_key_length: int = _http(256, "Longest plan key.", "--max-key-length", check=_POSITIVE)
    max_params_bytes: int = _http(
        65536, "Largest params of a plan, bytes.", "--max-params-bytes", check=_POSITIVE
    )
    max_plans_per_request: int = _http(
        100000, "Most plans per request.", "--max-plans-per-request", check=_POSITIVE
    )
    create_worker: bool = _http(
        True,
        "Build big v1 create bodies and v2 batch lines (parse, validate, encode the "
        "answer) in a worker process while the event loop goes on; off builds them in the "
        "event loop.",
        "--create-worker",
        neg_flag="--no-create-worker",
    )
    console_password: str = _http(
        "",
        "Password of the web console; empty (and no api_token) leaves it open. "
        "Prefer the environment or the conf file to a flag (flags show in ps).",
        "--console-password",
        metavar="PASSWORD",
    )
    api_token: str = _http(
        "",
        "API token; also accepted as the web console's password.",
        "--api-token",
        metavar="TOKEN",
    )
    v1_token_required: str = _http(
        "remote",
        "With api_token set, HTTP v1 requires it from non-loopback peers only "
        "(remote: forsun's clients on this machine send none) or from every peer (always).",
        "--v1-token-required",
        choices=("remote", "always"),
    )
    thrift_allow: tuple[str, ...] = _http(
        (),
        "Networks (CIDR or address, ;-separated) whose peers the Thrift port admits "
        "besides loopback; Thrift carries no token.",
        "--thrift-allow",
        metavar="NETS",
        check=_check_networks,
    )
    allow_insecure_bind: bool = _http(
        False,
        "Start even when HTTP or Thrift listens beyond loopback without api_token.",
        "--allow-insecure-bind",
    )
    max_http_connections: int = _http(
        10000,
        "Most open HTTP connections; more are closed at once.",
        "--max-http-connections",
        check=_POSITIVE,
    )
    max_thrift_connections: int = _http(
        10000,
        "Most open Thrift API connections; more are closed at once.",
        "--max-thrift-connections",
        check=_POSITIVE,
    )
    cookie_secret: str = _http(
        "",
        "Secret signing the console's login cookie; empty: generated once and kept in "
        "<data_dir>/console-cookie-secret.",
        metavar="SECRET",
    )

    def __post_init__(self) -> None:
        for setting in SETTINGS:
            value = getattr(self, setting.name)
            try:
                normalised = setting.validate(value)
            except ValueError as exc:
                raise StartupError(f"invalid {setting.name} {value!r}: {exc}") from None
            if normalised is not value:
                object.__setattr__(self, setting.name, normalised)
        if not self.data_dir:
            object.__setattr__(self, "data_dir", default_data_dir(os.environ))

    # ---- derived values

    @property
    def http_enabled(self) -> bool:
        """Whether the HTTP API is to be served (``http_bind`` not empty)."""
        return bool(self.http_bind.strip())

    @property
    def http_host(self) -> str:
        """Host of ``http_bind`` (``""`` when HTTP is disabled)."""
        address = parse_http_bind(self.http_bind, self.bind_address)
        return address[0] if address else ""

    @property
    def http_port(self) -> int:
        """Port of ``http_bind`` (0 when HTTP is disabled: check :attr:`http_enabled`)."""
        address = parse_http_bind(self.http_bind, self.bind_address)
        return address[1] if address else 0

    @property
    def sqlite_path(self) -> str:
        """The SQLite database file, resolved against ``data_dir``."""
        return _in_data_dir(self.sqlite_file, self.data_dir, "forsun-box.db")

    @property
    def mem_path(self) -> str:
        """The mem driver's snapshot file, resolved against ``data_dir``."""
        return _in_data_dir(self.mem_store_file, self.data_dir, "forsun-box.mem")

    @property
    def pid_path(self) -> str:
        """The pid file used with ``demon``, resolved against ``data_dir``."""
        return _in_data_dir(self.pid_file, self.data_dir, "forsun-box.pid")

    @property
    def log_rotation(self) -> tuple[str, str] | tuple[str, int] | None:
        """``log_rotate`` parsed, see :func:`parse_log_rotate`."""
        return parse_log_rotate(self.log_rotate)

    def tzinfo(self, environ: Mapping[str, str] | None = None) -> ZoneInfo:
        """The zone of calendar plans: ``timezone``, else the system zone (:func:`system_zone`)."""
        if self.timezone:
            return ZoneInfo(self.timezone)
        return system_zone(environ)

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Every setting by attribute name."""
        return {s.name: getattr(self, s.name) for s in SETTINGS}


#: forsun's own global conf keys: their bare upper-case environment names (PORT...) count
FORSUN_GLOBAL_KEYS = frozenset(
    {
        "port",
        "bind_address",
        "http_bind",
        "server_mode",
        "log_file",
        "log_level",
        "log_format",
        "log_rotate",
        "log_backup_count",
    }
)


def _build_table() -> tuple[Setting, ...]:
    hints = typing.get_type_hints(Config)
    kinds = {str: "str", int: "int", float: "float", bool: "bool", tuple[str, ...]: "list"}
    rows = []
    for f in dataclasses.fields(Config):
        meta = f.metadata["setting"]
        kind = "choice" if meta["choices"] else kinds[hints[f.name]]
        section = meta["section"]
        key = meta["key"] or f.name.removeprefix(f"{section}_" if section else "")
        env = meta["env"] or (f"{section}_{key}" if section else key).upper()
        if not meta["env"] and not section and key not in FORSUN_GLOBAL_KEYS:
            env = f"FORSUN_{env}"  # a generic word alone: only the prefixed name counts
        rows.append(
            Setting(
                name=f.name,
                kind=kind,
                default=f.default,
                help=meta["help"],
                section=section,
                key=key,
                env=env,
                flag=meta["flag"],
                neg_flag=meta["neg_flag"],
                choices=meta["choices"],
                metavar=meta["metavar"],
                doc_default=meta["doc_default"],
                check=meta["check"],
                is_path=meta["is_path"],
            )
        )
    return tuple(rows)


SETTINGS: tuple[Setting, ...] = _build_table()
"""The settings table, in declaration order."""

_BY_CONF = {(s.section or _GLOBAL, s.key): s for s in SETTINGS}
# forsun's own conf files also spell a key as its environment name
# (``STORE_REDIS_PASSWORD=`` inside ``[store]``); configparser lower-cases keys.
_BY_ENV_KEY = {s.env.lower(): s for s in SETTINGS}
_SECTIONS = ("", "store", "action", "extension", "http", "cluster")


# ---------------------------------------------------------------- paths and zones


def default_data_dir(environ: Mapping[str, str] | None = None) -> str:
    """The user's data directory for forsun-box (XDG_DATA_HOME respected)."""
    env = os.environ if environ is None else environ
    if sys.platform == "win32" and env.get("LOCALAPPDATA"):
        return os.path.join(env["LOCALAPPDATA"], "forsun-box")
    xdg = env.get("XDG_DATA_HOME", "")
    if os.path.isabs(xdg):
        return os.path.join(xdg, "forsun-box")
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".local", "share", "forsun-box")


def _in_data_dir(path: str, data_dir: str, default_name: str) -> str:
    if path:
        return os.path.expanduser(path)
    return os.path.join(os.path.expanduser(data_dir), default_name)


def system_zone(
    environ: Mapping[str, str] | None = None, localtime: str = "/etc/localtime"
) -> ZoneInfo:
    """The system zone: ``$TZ``, else the zone ``localtime`` links to, else its data, else UTC."""
    env = os.environ if environ is None else environ
    tz = env.get("TZ", "").strip().lstrip(":")
    if tz:
        try:
            if os.path.isabs(tz):
                with open(tz, "rb") as fh:
                    return ZoneInfo.from_file(fh, key=tz)
            return ZoneInfo(tz)
        except (OSError, ValueError, ZoneInfoNotFoundError):
            pass  # a POSIX rule string like "JST-9": fall back to the system file
    if os.path.islink(localtime):
        target = os.path.realpath(localtime)
        _, sep, name = target.partition("zoneinfo/")
        if sep and name:
            try:
                return ZoneInfo(name)
            except (ValueError, ZoneInfoNotFoundError):
                pass
    try:
        with open(localtime, "rb") as fh:
            return ZoneInfo.from_file(fh, key="localtime")
    except (OSError, ValueError):
        return ZoneInfo("UTC")


# ---------------------------------------------------------------- loading


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`StartupError` instead of exiting on a bad command line."""

    def error(self, message: str) -> typing.NoReturn:
        raise StartupError(message)


def _flag_help(setting: Setting) -> str:
    default = setting.doc_default or _show_default(setting)
    env = " or ".join(setting.env_names)
    text = f"{setting.help} (default: {default}; conf: {setting.conf_name}; env: {env})"
    return text.replace("%", "%%")  # argparse %-formats help strings


def _metavar(setting: Setting) -> str:
    if setting.metavar:
        return setting.metavar
    if setting.choices:
        return "{" + ",".join(setting.choices) + "}"
    if setting.is_path:
        return "PATH"
    return {"int": "N", "float": "NUMBER"}.get(setting.kind, "VALUE")


def build_parser(prog: str = "forsun-box serve") -> argparse.ArgumentParser:
    """The serve command line, generated from :data:`SETTINGS`."""
    without_flag = [s for s in SETTINGS if not s.flag]
    epilog = (
        "Settings without a flag (conf section.key / environment variable): "
        + ", ".join(f"{s.conf_name} / {s.env}" for s in without_flag)
        + ". Precedence: defaults < --conf file < environment < flags."
    )
    parser = _Parser(
        prog=prog,
        description="Run the forsun-box timer service (forsun compatible).",
        epilog=epilog.replace("%", "%%"),
        allow_abbrev=False,
    )
    parser.add_argument("--conf", metavar="FILE", help="INI conf file (forsun's format)")
    for s in SETTINGS:
        if not s.flag:
            continue
        common: dict[str, Any] = {"dest": s.name, "default": argparse.SUPPRESS}
        if s.kind == "bool":
            parser.add_argument(
                s.flag, nargs="?", const="true", metavar="BOOL", help=_flag_help(s), **common
            )
            if s.neg_flag:
                parser.add_argument(
                    s.neg_flag,
                    dest=f"{s.name}__neg",
                    action="store_true",
                    default=argparse.SUPPRESS,
                    help=f"Force {s.name} off; wins over {s.flag}.",
                )
        elif s.kind == "list":
            parser.add_argument(
                s.flag, action="append", metavar=s.metavar or "ITEM", help=_flag_help(s), **common
            )
        else:
            parser.add_argument(s.flag, metavar=_metavar(s), help=_flag_help(s), **common)
    return parser


def _convert(setting: Setting, raw: str, source: str) -> Any:
    try:
        return setting.validate(setting.parse(raw))
    except ValueError as exc:
        raise StartupError(f"{source}: invalid value {raw!r} for {setting.name}: {exc}") from None


_HEADER = re.compile(r"^\[[^\]\n]+\]\s*(?:[#;].*)?$")


def _check_section_headers(path: str, text: str) -> None:
    """A line opening with ``[`` that is no ``[name]`` header is a broken header, said so.

    configparser would read ``[store`` as a key without a value, reported as
    an unknown setting.
    """
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("[") and not _HEADER.match(stripped):
            raise StartupError(
                f"{path}:{number}: malformed section header {stripped!r}"
                " (write it as [name], e.g. [store])"
            )


def _read_conf(path: str) -> configparser.RawConfigParser:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"cannot read conf file {path}: {exc}") from None
    _check_section_headers(path, text)
    # forsun's files start with global keys before any section; strict=False lets a file
    # that also spells out [global] merge into the same section.
    parser = configparser.RawConfigParser(allow_no_value=True, strict=False)
    try:
        parser.read_string(f"[{_GLOBAL}]\n" + text, source=path)
    except configparser.Error as exc:
        raise StartupError(f"{path}: cannot parse conf file: {exc}") from None
    return parser


def conf_setting(section: str, key: str) -> Setting | None:
    """The setting a conf file's ``key`` in ``section`` (``global`` before any) sets.

    Keys are matched without regard to case, by their conf name in that
    section or, in any section, by their environment name, as forsun's own
    conf files write some of them.
    """
    key = key.lower()
    return _BY_CONF.get((section, key)) or _BY_ENV_KEY.get(key)


def unknown_key_message(path: str, section: str, key: str) -> str:
    """The start-up error for a conf key no setting has: file, section, key, a near name."""
    import difflib

    where = "before any section" if section == _GLOBAL else f"in section [{section}]"
    known = [k for (sec, k) in _BY_CONF if sec == section]
    near = difflib.get_close_matches(key.lower(), known, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"{path}: unknown setting {key!r} {where}{hint}; docs/CONFIG.md lists them all"


def environment_settings(environ: Mapping[str, str]) -> list[tuple[Setting, str]]:
    """The settings ``environ`` sets, each with the variable it is read from."""
    found = []
    for s in SETTINGS:
        for name in s.env_names:
            if name in environ:
                found.append((s, name))
                break
    return found


_SECRET_WORDS = ("password", "passwd", "token", "secret")


def describe_environment(environ: Mapping[str, str]) -> str:
    """One line naming the settings ``environ`` sets (secret values hidden), "" for none.

    Bare generic names present but not read (``TIMEZONE`` for ``FORSUN_TIMEZONE``)
    are named too, so that nobody wonders why they did nothing.
    """
    parts = []
    for s, name in environment_settings(environ):
        secret = any(w in s.name for w in _SECRET_WORDS)
        value = "(set)" if secret else repr(environ[name])
        parts.append(f"{name}={value} ({s.conf_name})")
    ignored = [
        s.env.removeprefix("FORSUN_")
        for s in SETTINGS
        if len(s.env_names) == 1
        and s.env != "FORSUN_BOX_DATA_DIR"
        and s.env.removeprefix("FORSUN_") in environ
    ]
    line = "settings from the environment: " + (", ".join(parts) or "none")
    if ignored:
        line += f"; not read (forsun-box reads FORSUN_ + the name): {', '.join(ignored)}"
    return line if parts or ignored else ""


def load_config(
    argv: list[str],
    environ: Mapping[str, str] | None = None,
    *,
    prog: str = "forsun-box serve",
) -> Config:
    """Build the :class:`Config` from defaults, ``--conf`` file, environment and ``argv``.

    ``argv`` holds the serve flags only (no program name). ``environ``
    defaults to ``os.environ``. Raises :class:`StartupError` on an unknown
    conf key, an ill-typed or invalid value (naming where it came from) or a
    bad command line; ``--help`` prints the help and raises ``SystemExit(0)``.
    """
    env = os.environ if environ is None else environ
    args = vars(build_parser(prog).parse_args(argv))
    values: dict[str, Any] = {s.name: s.default for s in SETTINGS}

    conf_path = args.pop("conf", None)
    if conf_path:
        conf = _read_conf(conf_path)
        for section in conf.sections():
            if (section if section != _GLOBAL else "") not in _SECTIONS:
                raise StartupError(f"{conf_path}: unknown section [{section}]")
            for key, raw in conf.items(section):
                setting = conf_setting(section, key)
                where = key if section == _GLOBAL else f"{section}.{key}"
                if setting is None:
                    raise StartupError(unknown_key_message(conf_path, section, key))
                values[setting.name] = _convert(setting, raw or "", f"{conf_path}:{where}")

    for s, name in environment_settings(env):
        values[s.name] = _convert(s, env[name], f"env {name}")

    for s in SETTINGS:
        if s.name in args:
            raw = args[s.name]
            if s.kind == "list":
                items = [_convert(s, r, s.flag or s.name) for r in raw]
                values[s.name] = tuple(values[s.name]) + tuple(i for item in items for i in item)
            else:
                values[s.name] = _convert(s, raw, s.flag or s.name)
        if args.get(f"{s.name}__neg"):
            values[s.name] = False

    if not values["data_dir"]:
        values["data_dir"] = default_data_dir(env)
    return Config(**values)


# ---------------------------------------------------------------- docs


def _show_default(setting: Setting) -> str:
    value = setting.default
    if setting.kind == "bool":
        return "true" if value else "false"
    if setting.kind == "float":
        return f"{value:g}"
    if setting.kind == "list":
        return ";".join(value) if value else '""'
    if value == "":
        return '""'
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown() -> str:
    """``docs/CONFIG.md``: every setting with flag, conf key, env, type, default and help."""
    titles = {
        "": "Global keys (before any section)",
        "store": "[store]",
        "action": "[action]",
        "extension": "[extension]",
        "http": "[http]",
        "cluster": "[cluster]",
    }
    out = [
        "# forsun-box configuration",
        "",
        "<!-- Generated by forsun_box.config.render_markdown(); do not edit by hand. -->",
        "<!-- Regenerate: python -m forsun_box.config > docs/CONFIG.md -->",
        "",
        "Precedence: defaults < conf file (`--conf FILE`) < environment < command-line flags.",
        "The conf file is INI in forsun's format: its first keys stand before any section.",
        "An unknown key or section, or a value of the wrong type, stops start-up with a",
        "message naming where it came from. Booleans accept true/false, yes/no, on/off, 1/0;",
        "lists are `;`-separated. A list flag (`--extension`) may be repeated and adds to",
        "the list from the conf file or environment.",
        "",
        "Environment: every setting is read from `FORSUN_` + the name in the env column",
        "(`FORSUN_PORT`, `FORSUN_STORE_DRIVER`; the prefixed name wins when both are set).",
        "The bare name counts too where forsun reads it (its global keys: `PORT`, `HTTP_BIND`,",
        "`LOG_FILE`, ...) and for the section-prefixed names (`STORE_*`, `ACTION_*`, `HTTP_*`,",
        "`EXTENSION_*`). forsun-box's own global settings are read only with the prefix",
        "(`FORSUN_TIMEZONE`, `FORSUN_CATCHUP`, ...): a `TIMEZONE` or `PID_FILE` set for",
        "another program changes nothing here. At start-up one log line lists every",
        "setting taken from the environment (`settings from the environment: ...`).",
        "",
    ]
    for section in _SECTIONS:
        out += [
            f"## {titles[section]}",
            "",
            "| Attribute | Conf key | Env | Flag | Type | Default | Description |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s in SETTINGS:
            if s.section != section:
                continue
            flag = " / ".join(f"`{f}`" for f in (s.flag, s.neg_flag) if f) or "—"
            kind = s.kind + (": " + ", ".join(s.choices) if s.choices else "")
            default = s.doc_default or _show_default(s)
            out.append(
                "| "
                + " | ".join(
                    _cell(c)
                    for c in (
                        f"`{s.name}`",
                        f"`{s.conf_name}`",
                        f"`{s.env}`",
                        flag,
                        kind,
                        f"`{default}`",
                        s.help,
                    )
                )
                + " |"
            )
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
