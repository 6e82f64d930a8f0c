"""Wiring: config -> store -> scheduler + dispatcher -> servers; start and stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import tornado.netutil
import tornado.web

from forsun_box import actions as actions_pkg
from forsun_box import errors, logs
from forsun_box.actions import thrift as thrift_action
from forsun_box.actions.base import ActionSettings
from forsun_box.api import security
from forsun_box.api.console import handlers as console
from forsun_box.api.formats.bodies import Worker
from forsun_box.api.http import server as http_server
from forsun_box.api.http import v1 as http_v1
from forsun_box.api.http import v2_routes
from forsun_box.api.service import ForsunService, ServiceInfo
from forsun_box.api.thrift.server import ThriftServer
from forsun_box.clock import Clock, LoopClock
from forsun_box.cluster.metrics import ClusterCollector
from forsun_box.cluster.node import ClusterNode, make_cluster_node
from forsun_box.config import Config
from forsun_box.dispatcher import Dispatcher
from forsun_box.extensions import ExtensionManager, default_extensions_dir
from forsun_box.metrics import Metrics
from forsun_box.plan import Limits
from forsun_box.scheduler import EngineOptions, Scheduler
from forsun_box.stats import Stats
from forsun_box.store import DRIVERS, Run, Store
from forsun_box.thrift import codec
from forsun_box.watchdog import LoopWatch

log = logging.getLogger("forsun_box")

DAY_MS = 86_400_000


def make_store(config: Config) -> Store:
    """Build the store driver named by ``config.driver``."""
    driver = config.driver
    cls = DRIVERS.get(driver)
    if cls is None:
        raise errors.StartupError(
            f"unknown store driver {driver!r} (available: {', '.join(sorted(DRIVERS))})"
        )
    retention = int(config.run_retention_days * DAY_MS)
    if driver == "sqlite":
        return cls(
            path=config.sqlite_path,
            synchronous=config.sqlite_synchronous,  # type: ignore[call-arg]
            run_retention_ms=retention,
            max_runs_per_key=config.max_runs_per_key,
        )
    if driver == "mem":
        return cls(
            path=config.mem_path,
            snapshot_interval_s=config.mem_time_rate,  # type: ignore[call-arg]
            run_retention_ms=retention,
            max_runs_per_key=config.max_runs_per_key,
        )
    return cls(config)  # type: ignore[call-arg]


def action_settings(config: Config) -> ActionSettings:
    return ActionSettings(
        retry_delay_seconds=config.retry_delay_seconds,
        retry_delay_rate=config.retry_delay_rate,
        retry_max_count=config.retry_max_count,
        shell_cwd=config.shell_cwd,
        shell_enabled=config.shell_enabled,
        shell_allow=tuple(config.shell_allow),
        shell_timeout_s=config.shell_timeout,
        http_max_clients=config.http_max_clients,
        http_connect_timeout=config.http_connect_timeout,
        http_request_timeout=config.http_request_timeout,
        http_user_agent=config.http_user_agent or ActionSettings().http_user_agent,
        default_concurrency=config.concurrency,
        server_connect_timeout=config.action_connect_timeout,
        server_run_timeout=config.action_run_timeout,
        redis_max_connections=config.action_redis_max_connections,
        mysql_user=config.mysql_user,
        mysql_passwd=config.mysql_passwd,
        mysql_max_connections=config.mysql_max_connections,
        mysql_wait_connection_timeout=config.mysql_wait_connection_timeout,
        mysql_idle_seconds=config.mysql_idle_seconds,
        beanstalk_max_connections=config.beanstalk_max_connections,
    )


class App:
    """One running forsun-box: store, engine, dispatcher and servers."""

    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or LoopClock()
        self.stats = Stats()
        self.metrics = Metrics(self.stats)
        self.extensions = ExtensionManager()
        self.store: Store | None = None
        self.scheduler: Scheduler | None = None
        self.cluster: ClusterNode | None = None
        self.dispatcher: Dispatcher | None = None
        self.service: ForsunService | None = None
        self.http_server: http_server.CountingHTTPServer | None = None
        self.http_port = 0
        self.thrift_server: ThriftServer | None = None
        self.thrift_port = 0
        self._prune_task: asyncio.Task[None] | None = None
        self.loop_watch: LoopWatch | None = None
        self.worker = Worker()  # builds big create bodies (forsun_box.api.formats.bodies)

    async def start(self) -> None:
        config = self.config
        security.check_bind(config)
        os.makedirs(config.data_dir, exist_ok=True)
        tz = config.tzinfo()
        if config.create_worker:
            # forked first: before extensions, the store or the loop watch start threads
            self.worker.start(tz)
        log.info("forsun-box starting: data directory %s, store %s", config.data_dir, config.driver)
        extensions_dir = default_extensions_dir(config)
        log.info("extensions folder %s", extensions_dir)
        # Extensions first: they may register the store driver --driver names.
        self.extensions.load(
            folder=extensions_dir,
            extension_path=config.extension_path,
            names=config.extensions,
            config=config,
            stats=self.stats,
        )
        await self.extensions.init_all()
        self.store = make_store(config)
        await self.store.open()
        engine_store: Store = self.store
        if config.node_id:
            # a cluster node: the engine fires the partitions it holds leases on
            self.cluster = make_cluster_node(config, self.store)
            await self.cluster.start_leases()
            engine_store = self.cluster.view
        self.metrics.instrument_store(engine_store)
        self.scheduler = Scheduler(
            engine_store,
            self.clock,
            tz,
            options=EngineOptions(
                catchup=config.catchup,
                window_ms=int(config.window_seconds * 1000),
                fire=config.server_mode != "AGENT",
            ),
            stats=self.stats,
        )
        self.dispatcher = Dispatcher(
            action_settings(config),
            self.clock,
            on_run=self._on_run,
            on_status=self.scheduler.record_status,
            stats=self.stats,
        )
        self.scheduler.executor = self.dispatcher
        # prepared http and shell firings start in the firing process at their instant
        self.dispatcher.arming = isinstance(self.clock, LoopClock) and self.cluster is None
        if self.cluster is not None:
            # its runs say which node fired them; its firing ids carry the lease epoch
            self.dispatcher.node_id = self.cluster.node
            self.dispatcher.epoch_of = self.cluster.firing_epoch
        await self.scheduler.start()
        if self.cluster is not None:
            await self.cluster.attach(self.scheduler)
            self.metrics.registry.register(ClusterCollector(self.cluster, self.scheduler))
        limits = Limits(
            max_key_length=config.max_key_length, max_params_bytes=config.max_params_bytes
        )
        self.service = ForsunService(
            self.scheduler,
            actions=lambda: actions_pkg.action_names(with_aliases=True),
            limits=limits,
            info=ServiceInfo(
                store_name=config.driver,
                stores=sorted(DRIVERS),
                bind_port=f"{config.bind_address}:{config.port}",
                http_bind_port=config.http_bind,
                server_mode=config.server_mode,
                node_id=config.node_id,
                extensions=self.extensions.names,
                extra=self._extension_facts,
                extension_errors=lambda: [str(e) for e in self.extensions.errors],
            ),
            stats=self.stats,
            max_plans_per_request=config.max_plans_per_request,
            worker=self.worker,
        )
        self.service.cluster = self.cluster
        await self._start_thrift()
        if config.http_bind:
            self._start_http()
        self._prune_task = asyncio.get_running_loop().create_task(self._prune_loop())
        if config.loop_stall_ms:
            # from here on: start-up itself may hold the loop (imports, the store's checks)
            self.loop_watch = LoopWatch(config.loop_stall_ms / 1000)
            self.loop_watch.start()
            self.metrics.watch_loop(self.loop_watch)
        if config.server_mode == "AGENT":
            log.info("server mode AGENT: plans are stored and served, never fired here")
        log.info("forsun-box ready (time zone %s)", tz.key if hasattr(tz, "key") else tz)

    def _on_run(self, run: Run) -> None:
        """Dispatcher callback: the console's per-minute series, then the run history."""
        if run.error:
            # an action's message may quote a URL with a password or a token in it
            run.error = logs.mask_secrets(run.error)
        self.stats.minutes.record_run(run)
        self.metrics.record_run(run)
        assert self.scheduler is not None
        self.scheduler.record_run(run)

    def _extension_facts(self) -> dict[str, str]:
        errors_ = self.extensions.errors
        return {
            "extension_error_count": str(len(errors_)),
            "extension_errors": "; ".join(str(e) for e in errors_),
        }

    async def _start_thrift(self) -> None:
        assert self.service is not None
        config = self.config
        thrift_action.configure(max_connections=config.thrift_max_connections)
        # One plan per message: bound a message by what one plan may carry.
        size = (1 << 20) + 4 * config.max_params_bytes
        server = ThriftServer(
            self.service,
            peers=security.PeerFilter(config.thrift_allow),
            max_connections=config.max_thrift_connections,
            stats=self.stats,
            limits=codec.Limits(
                max_message_bytes=size, max_string_bytes=size, max_container_items=65536
            ),
        )
        try:
            self.thrift_port = await server.start(config.bind_address, config.port)
        except OSError as e:
            raise errors.StartupError(
                f"cannot listen on Thrift {config.bind_address}:{config.port}: {e.strerror}"
                " (choose another port with --port PORT, or the address with --bind HOST)"
            ) from None
        self.thrift_server = server
        self.service.info_facts.bind_port = f"{config.bind_address}:{self.thrift_port}"
        log.info("Thrift API on %s:%d", config.bind_address, self.thrift_port)

    def _start_http(self) -> None:
        assert self.service is not None
        config = self.config
        console_routes, console_settings = console.install(self.service, config)
        v1_not_found = {"service": self.service, "max_body_bytes": config.max_body_bytes}
        app = tornado.web.Application(
            http_v1.routes(
                self.service, config.max_body_bytes, config.api_token, config.v1_token_required
            )
            + v2_routes.routes(self.service, self.metrics, config.max_body_bytes, config.api_token)
            # an unknown /v1 path answers forsun's JSON, any other one the console's 404 page
            + [(r"/v1(?:/.*)?", http_v1.NotFoundHandler, v1_not_found)]
            + console_routes,
            **console_settings,
        )
        router = http_server.Router(
            app, self.service, config.max_body_bytes, config.api_token, config.v1_token_required
        )
        server = http_server.CountingHTTPServer(router, max_body_size=config.max_body_bytes * 2)
        server.stats = self.stats
        server.max_connections = config.max_http_connections
        try:
            sockets = tornado.netutil.bind_sockets(config.http_port, config.http_host)
        except OSError as e:
            raise errors.StartupError(
                f"cannot listen on HTTP {config.http_bind}: {e.strerror}"
                " (choose another address with --http HOST:PORT)"
            ) from None
        server.add_sockets(sockets)
        self.http_port = sockets[0].getsockname()[1]
        self.http_server = server
        log.info("HTTP API on %s:%d", config.http_host, self.http_port)

    async def _prune_loop(self) -> None:
        while True:
            try:
                if self.scheduler is not None:
                    # through the engine, which never overlaps two store calls
                    removed = await self.scheduler.prune_runs()
                    if removed:
                        log.info("pruned %d old run records", removed)
            except Exception as e:  # keep serving; retried next hour
                log.warning("pruning run history failed: %s", e)
            await asyncio.sleep(3600)

    async def stop(self) -> None:
        """Graceful stop: no new requests, running firings finish (bounded), flush, close."""
        log.info("forsun-box stopping")
        if self.http_server is not None:
            self.http_server.stop()
        if self.thrift_server is not None:
            await self.thrift_server.stop()
        if self._prune_task is not None:
            self._prune_task.cancel()
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.cluster is not None:
            # after the last firing's writes: the others take over at once
            await self.cluster.stop()
        if self.dispatcher is not None:
            await self.dispatcher.close()
        if self.store is not None:
            await self.store.close()
        await self.extensions.uninit_all()
        if self.loop_watch is not None:
            self.loop_watch.stop()
        self.worker.close()
        log.info("forsun-box stopped")


async def serve(config: Config, on_ready: Callable[[], None] | None = None) -> None:
    """Run until SIGTERM, SIGINT or SIGHUP; ``on_ready`` is called once both APIs listen."""
    app = App(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP too: forsun's own test stops its daemon with kill -HUP
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
    except BaseException:
        await app.stop()
        raise
    if on_ready is not None:
        on_ready()
    await stop.wait()
    await app.stop()


# How long a thread may keep the interpreter lock while another waits for it.
# SQLite work runs in the sqlite store's thread and needs the lock back after every
# step; with CPython's 5 ms a busy event loop made each of those waits last
# 5 ms, and a bulk commit crawled (see bench/RESULTS.md).
SWITCH_INTERVAL_S = 0.0005


def run(config: Config, on_ready: Callable[[], None] | None = None) -> int:
    """Block running the service; returns the process exit status.

    Raises :class:`~forsun_box.errors.StartupError` when the service can't
    start (the caller reports it once).
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is optional
        runner = asyncio.run
    runner(serve(config, on_ready))
    return 0
