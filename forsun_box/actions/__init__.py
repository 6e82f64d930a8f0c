"""Actions: what a firing does. Built-ins register here like extensions do.

See :mod:`forsun_box.actions.base` for the contract.
"""

from __future__ import annotations

from forsun_box.actions.base import (
    ACTIONS,
    ALIASES,
    Action,
    ActionFailed,
    ActionSettings,
    action_names,
    canonical_name,
    configure_actions,
    get_action,
    register_action,
)
from forsun_box.actions.http import HttpAction
from forsun_box.actions.shell import ShellAction
from forsun_box.actions.thrift import ThriftAction
from forsun_box.extras import BEANSTALK, MYSQL, REDIS, Extra, MissingExtra, load

#: action name -> the message of its missing library, for actions registered without one
MISSING: dict[str, str] = {}


def _without_library(name: str, problem: MissingExtra) -> type[Action]:
    """An action standing in for one whose library is missing: every firing fails saying so."""
    message = str(problem)

    class Missing(Action):
        async def execute(self, *args: object, **kwargs: object) -> None:
            raise ActionFailed(message)

    Missing.__name__ = Missing.__qualname__ = f"Missing{name.capitalize()}Action"
    return Missing


def _register_optional(name: str, extra: Extra, class_name: str) -> None:
    try:
        cls = getattr(load(extra, f"the {name} action"), class_name)
    except MissingExtra as e:
        MISSING[name] = str(e)
        cls = _without_library(name, e)
    register_action(name, cls)


def _register_builtins() -> None:
    register_action("shell", ShellAction)
    register_action("http", HttpAction)
    _register_optional("redis", REDIS, "RedisAction")
    _register_optional("mysql", MYSQL, "MysqlAction")
    _register_optional("beanstalk", BEANSTALK, "BeanstalkAction")
    register_action("thrift", ThriftAction)


_register_builtins()

__all__ = [
    "ACTIONS",
    "ALIASES",
    "MISSING",
    "Action",
    "ActionFailed",
    "ActionSettings",
    "HttpAction",
    "ShellAction",
    "action_names",
    "canonical_name",
    "configure_actions",
    "get_action",
    "register_action",
]
