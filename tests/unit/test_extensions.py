"""The extension loader, forsun's import paths and the shipped example extension."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from forsun_box import extensions as ext_mod
from forsun_box.actions import base as actions_base
from forsun_box.actions.base import Action, ActionFailed
from forsun_box.clock import LoopClock
from forsun_box.config import Config
from forsun_box.dispatcher import Dispatcher
from forsun_box.errors import RetryLater
from forsun_box.extensions import (
    Extension,
    ExtensionManager,
    default_extensions_dir,
    install_forsun_aliases,
)
from forsun_box.plan import Plan
from forsun_box.stats import Stats
from forsun_box.store import DRIVERS
from forsun_box.store.base import Store
from forsun_box.store.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolate() -> Any:
    """Registries, sys.path and imported extension modules restored after each test."""
    actions = dict(actions_base.ACTIONS)
    drivers = dict(DRIVERS)
    path = list(sys.path)
    modules = set(sys.modules)
    yield
    actions_base.ACTIONS.clear()
    actions_base.ACTIONS.update(actions)
    DRIVERS.clear()
    DRIVERS.update(drivers)
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name.startswith(("forsun_box_extensions", "fx_")) or name == "helper_lib":
            del sys.modules[name]


def write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def fire(name: str, params: dict[str, str] | None = None) -> tuple[int, Stats]:
    """Fire a plan of action ``name`` through a real Dispatcher; (status, stats)."""
    stats = Stats()

    async def main() -> int:
        d = Dispatcher(
            actions_base.ActionSettings(), LoopClock(), lambda r: None, lambda *a: None, stats
        )
        try:
            return await d.run(Plan(key="k", kind="at", action=name, params=params or {}), 0)
        finally:
            await d.close()

    return asyncio.run(main()), stats


# -- forsun's import paths ---------------------------------------------------------


def test_forsun_import_paths_resolve_to_forsun_box() -> None:
    install_forsun_aliases(config=Config(mysql_user="timer"), stats=Stats())
    from forsun.action import register_action as forsun_register_action
    from forsun.action.action import Action as ForsunAction
    from forsun.action.action import ExecuteActionError
    from forsun.error import ActionExecuteRetry
    from forsun.extension import Extension as ForsunExtension
    from forsun.store.store import Store as ForsunStore

    assert ForsunExtension is Extension
    assert ForsunAction is Action
    assert ForsunStore is Store
    assert ActionExecuteRetry is RetryLater
    assert ExecuteActionError is ActionFailed
    assert forsun_register_action("fx_alias", ForsunAction) is True
    assert actions_base.ACTIONS["fx_alias"] is Action
    assert forsun_register_action("fx_bad", object) is False


def test_forsun_config_and_status() -> None:
    stats = Stats()
    install_forsun_aliases(config=Config(mysql_user="timer", extensions=("a.B",)), stats=stats)
    from forsun import config
    from forsun.status import forsun_status

    assert config.get("ACTION_MYSQL_USER") == "timer"
    assert config.get("STORE_DRIVER") == "sqlite"
    assert config.get("EXTENSIONS") == ["a.B"]
    assert config.get("NOT_A_SETTING", 42) == 42
    forsun_status.my_counter = 5
    forsun_status.action_executed_count += 2
    assert stats.get("my_counter") == 5 and stats.get("action_executed_count") == 2
    assert forsun_status.my_counter == 5


def test_unknown_forsun_module_is_not_found() -> None:
    install_forsun_aliases()
    with pytest.raises(ModuleNotFoundError):
        __import__("forsun.clients.client")


# -- the drop-in folder ------------------------------------------------------------


def test_drop_in_files_and_packages_are_loaded_without_naming_them(tmp_path: Path) -> None:
    folder = tmp_path / "extensions"
    write(folder, "lib/helper_lib.py", "GREETING = 'hi from lib'\n")
    write(
        folder,
        "one.py",
        """
        from forsun.extension import Extension
        from forsun.action.action import Action
        import helper_lib  # from extensions/lib

        class Hello(Action):
            def execute(self, *args, **kwargs):  # a plain function, as forsun allows
                Hello.seen.append((self.ts, self.plan.key, self.action, self.params, helper_lib.GREETING))
        Hello.seen = []

        class One(Extension):
            name = "one"
            def register(self):
                self.register_action("fx_hello", Hello)
    """,
    )
    write(
        folder,
        "pkg/__init__.py",
        """
        from forsun_box.extensions import Extension
        from .impl import Nop

        class Two(Extension):
            def register(self):
                self.register_action("fx_nop", Nop)
    """,
    )
    write(
        folder,
        "pkg/impl.py",
        """
        from forsun_box.actions.base import Action
        class Nop(Action):
            async def execute(self, *args, **kwargs):
                pass
    """,
    )
    write(folder, "README.md", "not python\n")
    write(folder, "_private.py", "raise RuntimeError('never imported')\n")
    manager = ExtensionManager()
    manager.load(folder=str(folder))
    assert manager.errors == []
    assert manager.names() == ["one", "Two"]
    assert {"fx_hello", "fx_nop"} <= set(actions_base.ACTIONS)
    status, stats = fire("fx_hello", {"a": "1"})
    assert status == 1 and stats.action_executed_error_count == 0
    hello = actions_base.ACTIONS["fx_hello"]
    assert hello.seen == [(0, "k", "fx_hello", {"a": "1"}, "hi from lib")]  # type: ignore[attr-defined]
    assert fire("fx_nop")[0] == 1


def test_tornado_coroutine_execute_works(tmp_path: Path) -> None:
    """forsun's own actions are ``@gen.coroutine``; extensions written like them work."""
    folder = tmp_path / "ext"
    write(
        folder,
        "tornado_style.py",
        """
        from tornado import gen
        from forsun.extension import Extension
        from forsun.action.action import Action
        from forsun.error import ActionExecuteRetry

        class Slow(Action):
            @gen.coroutine
            def execute(self, *args, **kwargs):
                yield gen.sleep(0.01)  # an action that takes a while: the behaviour
                if self.params.get("fail"):
                    raise ActionExecuteRetry()

        class TornadoStyle(Extension):
            name = "tornado-style"
            def register(self):
                self.register_action("fx_slow", Slow)
    """,
    )
    manager = ExtensionManager()
    manager.load(folder=str(folder))
    assert manager.names() == ["tornado-style"]
    assert fire("fx_slow")[0] == 1
    status, stats = fire("fx_slow", {"fail": "1"})
    assert status == -1 and stats.action_executed_error_count == 1


def test_broken_extensions_are_reported_and_the_rest_loads(tmp_path: Path) -> None:
    folder = tmp_path / "ext"
    syntax = write(folder, "a_syntax.py", "def broken(:\n    pass\n")
    missing = write(folder, "b_import.py", "\n\nimport no_such_package_xyz\n")
    reg = write(
        folder,
        "c_register.py",
        """
        from forsun_box.extensions import Extension
        from forsun_box.actions.base import Action

        class Half(Extension):
            def register(self):
                self.register_action("fx_half", Action)
                raise ValueError("boom in register")
    """,
    )
    write(
        folder,
        "d_good.py",
        """
        from forsun_box.extensions import Extension
        from forsun_box.actions.base import Action

        class Good(Extension):
            name = "good"
            def register(self):
                self.register_action("fx_good", Action)
    """,
    )
    write(folder, "e-bad-name.py", "x = 1\n")
    manager = ExtensionManager()
    manager.load(folder=str(folder))
    assert manager.names() == ["good"]
    by_source = {e.source: e.message for e in manager.errors}
    assert f"{syntax}:1: SyntaxError" in by_source[str(syntax)]
    assert f"{missing}:3: ModuleNotFoundError" in by_source[str(missing)]
    assert "no_such_package_xyz" in by_source[str(missing)]
    assert "register() of Half failed" in by_source[str(reg)]
    assert f"{reg}:" in by_source[str(reg)] and "boom in register" in by_source[str(reg)]
    assert "not a valid module name" in by_source[str(folder / "e-bad-name.py")]
    # what the failed register() did is undone
    assert "fx_half" not in actions_base.ACTIONS and "fx_good" in actions_base.ACTIONS


def test_hooks_run_sync_or_async_and_failures_are_reported(tmp_path: Path) -> None:
    folder = tmp_path / "ext"
    write(
        folder,
        "hooks.py",
        """
        from forsun_box.extensions import Extension
        calls = []

        class Sync(Extension):
            name = "sync"
            def init(self):
                calls.append("sync init")
            def uninit(self):
                calls.append("sync uninit")

        class Async(Extension):
            name = "async"
            async def init(self):
                calls.append("async init")
            async def uninit(self):
                raise RuntimeError("uninit failed")
    """,
    )
    manager = ExtensionManager()
    manager.load(folder=str(folder))

    async def main() -> None:
        await manager.init_all()
        await manager.uninit_all()

    asyncio.run(main())
    calls = sys.modules["forsun_box_extensions.hooks"].calls
    assert sorted(calls[:2]) == ["async init", "sync init"] and calls[2:] == ["sync uninit"]
    assert any("uninit() of async failed" in e.message for e in manager.errors)


def test_named_extension_from_extension_path_and_dedupe(tmp_path: Path) -> None:
    path = tmp_path / "forsun_ext"
    write(
        path,
        "fx_celery_like.py",
        """
        from forsun.extension import Extension
        from forsun.action.action import Action

        class Push(Action):
            def execute(self, *args, **kwargs):
                pass

        class PushExtension(Extension):
            name = "push"
            def register(self):
                self.register_action("fx_push", Push)
    """,
    )
    manager = ExtensionManager()
    # the same file found in the folder and named by --extension loads once
    manager.load(
        folder=str(path),
        extension_path=str(path),
        names=["fx_celery_like.PushExtension", "fx_celery_like.Missing", "nomodule_here.X", "bare"],
    )
    assert manager.names() == ["push"]
    messages = [str(e) for e in manager.errors]
    assert any("fx_celery_like.Missing is not an Extension subclass" in m for m in messages)
    assert any("nomodule_here" in m and "ModuleNotFoundError" in m for m in messages)
    assert any("bare: expected module.Class" in m for m in messages)
    assert str(path) in sys.path


def test_extensions_register_stores(tmp_path: Path) -> None:
    folder = tmp_path / "ext"
    write(
        folder,
        "stores.py",
        """
        from forsun_box.extensions import Extension
        from forsun_box.store.memory import MemoryStore

        class Volatile(MemoryStore):
            name = "volatile"
            def __init__(self, config):
                super().__init__(None)

        class Stores(Extension):
            def register(self):
                assert self.register_store("volatile", Volatile)
                assert not self.register_store("bogus", dict)
    """,
    )
    manager = ExtensionManager()
    manager.load(folder=str(folder))
    assert manager.errors == []
    assert issubclass(DRIVERS["volatile"], MemoryStore) and "bogus" not in DRIVERS
    assert manager.loaded[0].instance.registered("store") == ["volatile"]


def test_missing_folder_is_not_an_error(tmp_path: Path) -> None:
    manager = ExtensionManager()
    manager.load(folder=str(tmp_path / "nope"), extension_path=str(tmp_path / "nope2"))
    assert manager.names() == []
    assert [e.message for e in manager.errors] == ["the extension path is not a directory"]


def test_default_extensions_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config(data_dir=str(tmp_path))
    assert default_extensions_dir(config) == str(tmp_path / "extensions")
    assert default_extensions_dir(config.replace(extensions_dir=str(tmp_path / "x"))) == str(
        tmp_path / "x"
    )
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "forsun-box"))
    assert default_extensions_dir(config) == str(tmp_path / "bin" / "extensions")


# -- the shipped example -------------------------------------------------------------


def test_example_extension_counts_and_appends(tmp_path: Path) -> None:
    stats = Stats()
    manager = ExtensionManager()
    manager.load(folder=str(ROOT / "extensions"), stats=stats)
    assert manager.errors == [] and manager.names() == ["example"]
    out = tmp_path / "fired.txt"

    async def main() -> list[int]:
        await manager.init_all()
        d = Dispatcher(
            actions_base.ActionSettings(), LoopClock(), lambda r: None, lambda *a: None, stats
        )
        try:
            results = []
            for key in ("a", "b"):
                plan = Plan(
                    key=key,
                    kind="at",
                    action="count",
                    params={"file": str(out), "message": "hello"},
                )
                results.append(await d.run(plan, 1_700_000_000_000))
            bad = Plan(
                key="c",
                kind="at",
                action="count",
                params={"file": str(tmp_path / "no" / "dir.txt")},
            )
            results.append(await d.run(bad, 0))
            return results
        finally:
            await d.close()
            await manager.uninit_all()

    assert asyncio.run(main()) == [1, 1, -1]
    assert out.read_text() == "1700000000 a hello\n1700000000 b hello\n"
    assert stats.get("example_count_fired") == 3
    assert ext_mod.ExtensionManager is ExtensionManager
