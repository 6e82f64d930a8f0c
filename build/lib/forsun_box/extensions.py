"""Extensions: the :class:`Extension` base, the loader, and forsun's import paths.

An extension is a class with a ``name`` and a :meth:`Extension.register`
method that calls ``self.register_action(NAME, ActionClass)`` and/or
``self.register_store(NAME, StoreClass)``; it may define ``init()`` and
``uninit()`` (plain or coroutine functions), run at start and stop.

Where extensions come from (:meth:`ExtensionManager.load`):

1. the drop-in folder (the ``extensions_dir`` setting; default
   ``extensions/`` beside the executable when frozen, else
   ``<data_dir>/extensions``): every ``.py`` file and package in it is
   imported, as ``forsun_box_extensions.<name>``, and every
   :class:`Extension` subclass defined there is registered. Its ``lib/``
   folder goes first on ``sys.path``: extensions' own third-party packages
   go there (``pip install --target extensions/lib PACKAGE``), so the
   frozen executable can load extensions needing packages it doesn't
   bundle;
2. forsun's ``--extension-path DIR`` (put on ``sys.path``) and
   ``--extension module.Class`` flags, or the conf file's ``[extension]``
   ``path`` / ``extensions``.

forsun's import paths are aliases of ours (:func:`install_forsun_aliases`):
``forsun.extension.Extension``, ``forsun.action.action.Action``,
``forsun.action.register_action``, ``forsun.store.store.Store``,
``forsun.store.register_store``, ``forsun.error.ActionExecuteRetry``,
``forsun.config.get`` and ``forsun.status.forsun_status``, so an
extension written for forsun loads unchanged.

A broken extension (syntax error, failed import, exception in
``register``/``init``) is logged with its file, line and error and kept in
:attr:`ExtensionManager.errors`; the service still starts without it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import logging
import os
import sys
import traceback
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from forsun_box import __version__, errors
from forsun_box.actions import base as actions_base
from forsun_box.store import DRIVERS, register_driver
from forsun_box.store.base import Store

log = logging.getLogger("forsun_box.extensions")

#: parent package of the modules imported from the drop-in folder
DROP_IN_PACKAGE = "forsun_box_extensions"
LIB_DIR = "lib"


class Extension:
    """Base class of extensions (forsun's ``forsun.extension.Extension``).

    Subclasses set :attr:`name` and override :meth:`register`; :meth:`init`
    and :meth:`uninit` may be plain or coroutine functions.
    """

    #: shown in ``info``'s ``extensions``; the class name when empty
    name: str = ""

    def __init__(self) -> None:
        # (kind, name, previous class or None): what register() did, to undo it
        self._registered: list[tuple[str, str, Any]] = []

    def register_action(self, name: str, cls: Any) -> bool:
        """Register action class ``cls`` under ``name``; False (and a warning) when
        ``cls`` is not an :class:`~forsun_box.actions.base.Action` subclass."""
        if not (isinstance(cls, type) and issubclass(cls, actions_base.Action)):
            log.warning(
                "extension %s: %r is not an Action subclass, not registered", self.display_name, cls
            )
            return False
        self._registered.append(("action", name, actions_base.ACTIONS.get(name)))
        actions_base.register_action(name, cls)
        log.info("extension %s registered action %s", self.display_name, name)
        return True

    def register_store(self, name: str, cls: Any) -> bool:
        """Register store driver ``cls`` under ``name`` (``--driver name``); False
        when ``cls`` does not implement :class:`~forsun_box.store.base.Store`."""
        if not (isinstance(cls, type) and issubclass(cls, Store)):
            log.warning(
                "extension %s: %r is not a forsun_box Store subclass, not registered "
                "(a store must implement forsun-box's store contract)",
                self.display_name,
                cls,
            )
            return False
        self._registered.append(("store", name, DRIVERS.get(name)))
        register_driver(name, cls)
        log.info("extension %s registered store %s", self.display_name, name)
        return True

    def register(self) -> None:
        """Register the extension's actions and stores."""

    def init(self) -> Any:
        """Called once at start, after every extension registered."""

    def uninit(self) -> Any:
        """Called once at stop, after the last firing."""

    @property
    def display_name(self) -> str:
        return self.name or type(self).__name__

    def registered(self, kind: str) -> list[str]:
        """Names of the actions (``kind="action"``) or stores this extension registered."""
        return [name for k, name, _ in self._registered if k == kind]

    def _undo(self) -> None:
        for kind, name, previous in reversed(self._registered):
            table: dict[str, Any] = actions_base.ACTIONS if kind == "action" else DRIVERS
            if previous is None:
                table.pop(name, None)
            else:
                table[name] = previous
        self._registered.clear()


@dataclass(frozen=True)
class ExtensionError:
    """An extension that could not be loaded: where (file or module.Class) and why."""

    source: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


@dataclass
class LoadedExtension:
    """A registered extension."""

    instance: Extension
    source: str  # the file it came from

    @property
    def name(self) -> str:
        return self.instance.display_name


@dataclass
class ExtensionManager:
    """Loads extensions, runs their hooks and remembers what failed."""

    loaded: list[LoadedExtension] = field(default_factory=list)
    errors: list[ExtensionError] = field(default_factory=list)

    # -- loading -------------------------------------------------------------

    def load(
        self,
        folder: str | None = None,
        extension_path: str = "",
        names: Iterable[str] = (),
        config: Any = None,
        stats: Any = None,
    ) -> None:
        """Import and register the drop-in ``folder``'s extensions, then the
        ``module.Class`` ``names`` (found on ``extension_path`` or the import path).

        Never raises for a broken extension: see :attr:`errors`.
        """
        install_forsun_aliases(config=config, stats=stats)
        if folder:
            self._load_folder(folder)
        if extension_path:
            path = os.path.abspath(extension_path)
            if not os.path.isdir(path):
                self._error(path, "the extension path is not a directory")
            elif path not in sys.path:
                sys.path.insert(0, path)
        for spec in names:
            spec = spec.strip()
            if spec:
                self._load_named(spec)

    def _load_folder(self, folder: str) -> None:
        folder = os.path.abspath(folder)
        if not os.path.isdir(folder):
            log.debug("no extensions folder at %s", folder)
            return
        lib = os.path.join(folder, LIB_DIR)
        if os.path.isdir(lib) and lib not in sys.path:
            sys.path.insert(0, lib)
        _drop_in_package(folder)
        for entry in sorted(os.listdir(folder)):
            path = os.path.join(folder, entry)
            if entry.startswith((".", "_")) or entry == LIB_DIR:
                continue
            if entry.endswith(".py") and os.path.isfile(path):
                stem = entry[:-3]
            elif os.path.isfile(os.path.join(path, "__init__.py")):
                stem = entry
            else:
                continue
            if not stem.isidentifier():
                self._error(path, f"{stem!r} is not a valid module name")
                continue
            module_name = f"{DROP_IN_PACKAGE}.{stem}"
            try:
                module = importlib.import_module(module_name)
            except BaseException as e:  # SyntaxError, ImportError, anything the file raised
                if isinstance(e, KeyboardInterrupt | SystemExit):
                    raise
                sys.modules.pop(module_name, None)
                self._error(path, _describe(e, path))
                continue
            found = [
                obj
                for obj in vars(module).values()
                if isinstance(obj, type)
                and issubclass(obj, Extension)
                and obj is not Extension
                and obj.__module__ == module.__name__
            ]
            if not found:
                log.info("extensions folder: %s defines no Extension subclass", path)
            for cls in found:
                self._register(cls, path)

    def _load_named(self, spec: str) -> None:
        module_name, _, class_name = spec.rpartition(".")
        if not module_name or not class_name:
            self._error(spec, "expected module.Class")
            return
        try:
            module = importlib.import_module(module_name)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt | SystemExit):
                raise
            sys.modules.pop(module_name, None)
            self._error(spec, _describe(e, _module_file(module_name)))
            return
        cls = getattr(module, class_name, None)
        source = getattr(module, "__file__", None) or spec
        if not (isinstance(cls, type) and issubclass(cls, Extension)):
            self._error(source, f"{spec} is not an Extension subclass")
            return
        if any(type(x.instance) is cls or _same_class(type(x.instance), cls) for x in self.loaded):
            log.info("extension %s already loaded from the extensions folder", spec)
            return
        self._register(cls, source)

    def _register(self, cls: type[Extension], source: str) -> None:
        try:
            instance = cls()
        except Exception as e:
            self._error(source, _describe(e, source))
            return
        # forsun's extensions may not call our __init__: make sure the bookkeeping exists.
        if not hasattr(instance, "_registered"):
            instance._registered = []
        try:
            instance.register()
        except Exception as e:
            instance._undo()
            self._error(source, f"register() of {cls.__name__} failed: {_describe(e, source)}")
            return
        self.loaded.append(LoadedExtension(instance, source))
        log.info(
            "extension %s loaded from %s (actions: %s; stores: %s)",
            instance.display_name,
            source,
            ", ".join(instance.registered("action")) or "-",
            ", ".join(instance.registered("store")) or "-",
        )

    def _error(self, source: str, message: str) -> None:
        self.errors.append(ExtensionError(source, message))
        log.error("extension %s not loaded: %s", source, message)

    # -- hooks ---------------------------------------------------------------

    async def init_all(self) -> None:
        """Run every loaded extension's ``init`` (errors are reported, not raised)."""
        for ext in self.loaded:
            await self._hook(ext, "init")

    async def uninit_all(self) -> None:
        """Run every loaded extension's ``uninit``, last loaded first."""
        for ext in reversed(self.loaded):
            await self._hook(ext, "uninit")

    async def _hook(self, ext: LoadedExtension, hook: str) -> None:
        try:
            result = getattr(ext.instance, hook)()
            if inspect.isawaitable(result):
                await result
        except Exception as e:
            message = f"{hook}() of {ext.name} failed: {_describe(e, ext.source)}"
            self.errors.append(ExtensionError(ext.source, message))
            log.error("extension %s: %s", ext.source, message)

    # -- facts ---------------------------------------------------------------

    def names(self) -> list[str]:
        """Names of the loaded extensions, in load order (``info``'s ``extensions``)."""
        return [ext.name for ext in self.loaded]


def default_extensions_dir(config: Any) -> str:
    """The drop-in folder: the ``extensions_dir`` setting, else ``extensions/``
    beside the executable when frozen, else ``<data_dir>/extensions``."""
    configured = getattr(config, "extensions_dir", "")
    if configured:
        return str(configured)
    if getattr(sys, "frozen", False):
        return os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "extensions")
    return os.path.join(config.data_dir, "extensions")


# -- error text ------------------------------------------------------------------


def _module_file(module_name: str) -> str:
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return ""
    return (spec.origin or "") if spec is not None else ""


def _describe(e: BaseException, path: str) -> str:
    """``file:line: Type: message`` for the deepest frame inside ``path``."""
    if isinstance(e, SyntaxError) and e.filename:
        return f"{e.filename}:{e.lineno}: SyntaxError: {e.msg}"
    where = ""
    if path:
        root = os.path.abspath(path)
        if root.endswith("__init__.py"):
            root = os.path.dirname(root)
        for frame in traceback.extract_tb(e.__traceback__):
            if os.path.abspath(frame.filename).startswith(root):
                where = f"{frame.filename}:{frame.lineno}: "
    log.debug("extension error details", exc_info=e)
    text = str(e).strip()
    return f"{where}{type(e).__name__}: {text}" if text else f"{where}{type(e).__name__}"


def _same_class(a: type, b: type) -> bool:
    """The same class imported twice under two module names (folder and --extension)."""
    try:
        return a.__qualname__ == b.__qualname__ and inspect.getsourcefile(
            a
        ) == inspect.getsourcefile(b)
    except TypeError:
        return False


def _drop_in_package(folder: str) -> None:
    """(Re)create the parent package whose submodules are the folder's extensions."""
    package = sys.modules.get(DROP_IN_PACKAGE)
    if package is None or getattr(package, "__path__", None) != [folder]:
        for name in [n for n in sys.modules if n.startswith(DROP_IN_PACKAGE + ".")]:
            del sys.modules[name]
        package = types.ModuleType(DROP_IN_PACKAGE, "extensions from the drop-in folder")
        package.__path__ = [folder]
        package.__spec__ = importlib.machinery.ModuleSpec(DROP_IN_PACKAGE, None, is_package=True)
        package.__spec__.submodule_search_locations = [folder]
        sys.modules[DROP_IN_PACKAGE] = package
        importlib.invalidate_caches()


# -- forsun's import paths -------------------------------------------------------


class _ForsunState:
    config: Any = None
    stats: Any = None
    overrides: dict[str, Any] = {}


def _config_get(name: str, default: Any = None) -> Any:
    """forsun's ``config.get(NAME, default)``: NAME is forsun's upper-case setting name."""
    if name in _ForsunState.overrides:
        return _ForsunState.overrides[name]
    config = _ForsunState.config
    if config is not None:
        from forsun_box.config import SETTINGS

        for s in SETTINGS:
            if s.env == name:
                value = getattr(config, s.name)
                return list(value) if isinstance(value, tuple) else value
    return os.environ.get(name, default)


def _config_set(name: str, value: Any) -> Any:
    old = _config_get(name)
    _ForsunState.overrides[name] = value
    return old


def _config_update(values: dict[str, Any]) -> dict[str, Any]:
    _ForsunState.overrides.update(values)
    return dict(_ForsunState.overrides)


class _Status:
    """forsun's ``forsun_status``: counters as attributes, backed by the service's Stats."""

    def __getattr__(self, name: str) -> int:
        stats = _ForsunState.stats
        if stats is None or name.startswith("_"):
            raise AttributeError(name)
        return int(stats.get(name))

    def __setattr__(self, name: str, value: int) -> None:
        stats = _ForsunState.stats
        if stats is not None:
            stats.set(name, int(value))


def _forsun_register_action(name: str, cls: Any) -> bool:
    if isinstance(cls, type) and issubclass(cls, actions_base.Action):
        actions_base.register_action(name, cls)
        return True
    return False


def _forsun_register_store(name: str, cls: Any) -> bool:
    if isinstance(cls, type) and issubclass(cls, Store):
        register_driver(name, cls)
        return True
    return False


def _build(module: types.ModuleType) -> None:
    """Fill alias module ``module`` (by its name) with forsun-box's objects."""
    name = module.__name__
    ns: dict[str, Any]
    if name == "forsun":
        ns = {"__version__": __version__, "version": __version__}
    elif name == "forsun.extension":
        ns = {
            "Extension": Extension,
            "Action": actions_base.Action,
            "Store": Store,
            "register_action": _forsun_register_action,
            "register_store": _forsun_register_store,
        }
    elif name == "forsun.action":
        ns = {
            "Action": actions_base.Action,
            "register_action": _forsun_register_action,
            "get_driver_names": actions_base.action_names,
            "ExecuteActionError": actions_base.ActionFailed,
        }
    elif name == "forsun.action.action":
        ns = {"Action": actions_base.Action, "ExecuteActionError": actions_base.ActionFailed}
    elif name == "forsun.store":
        ns = {
            "Store": Store,
            "register_store": _forsun_register_store,
            "get_store_names": lambda: sorted(DRIVERS),
        }
    elif name == "forsun.store.store":
        ns = {"Store": Store}
    elif name == "forsun.error":
        ns = {
            "ActionExecuteRetry": errors.RetryLater,
            "UnknownError": errors.UnknownError,
            "WillNeverArriveTimeError": errors.TimeNeverArrives,
            "NotFoundPlanError": errors.PlanNotFound,
            "StorePlanError": errors.StoreError,
            "RemovePlanError": errors.RemoveError,
            "UnknownActionError": errors.UnknownAction,
            "RequiredArgumentError": errors.MissingArgument,
        }
    elif name == "forsun.config":
        ns = {"get": _config_get, "set": _config_set, "update": _config_update}
    elif name == "forsun.status":
        ns = {"forsun_status": _Status()}
    else:  # pragma: no cover - find_spec only answers for the names above
        raise ImportError(name)
    module.__dict__.update(ns)


#: alias module name -> is it a package
FORSUN_MODULES: dict[str, bool] = {
    "forsun": True,
    "forsun.extension": False,
    "forsun.action": True,
    "forsun.action.action": False,
    "forsun.store": True,
    "forsun.store.store": False,
    "forsun.error": False,
    "forsun.config": False,
    "forsun.status": False,
}


class ForsunAliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers imports of forsun's module names with forsun-box's objects."""

    def find_spec(
        self, fullname: str, path: Any = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in FORSUN_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=FORSUN_MODULES[fullname])

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        if FORSUN_MODULES.get(module.__name__):
            module.__path__ = []  # a package, so its submodules resolve through us
        _build(module)


_FINDER = ForsunAliasFinder()


def install_forsun_aliases(config: Any = None, stats: Any = None) -> None:
    """Make ``import forsun...`` resolve to forsun-box (idempotent).

    ``config`` backs ``forsun.config.get``; ``stats`` backs ``forsun.status``.
    """
    if config is not None:
        _ForsunState.config = config
    if stats is not None:
        _ForsunState.stats = stats
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    existing = sys.modules.get("forsun")
    if existing is not None and getattr(existing, "__loader__", None) is not _FINDER:
        log.warning(
            "a module named forsun is already imported; forsun's import paths in "
            "extensions may not resolve to forsun-box"
        )
