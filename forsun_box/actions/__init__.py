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
from forsun_box.actions.beanstalk import BeanstalkAction
from forsun_box.actions.http import HttpAction
from forsun_box.actions.mysql import MysqlAction
from forsun_box.actions.redis import RedisAction
from forsun_box.actions.shell import ShellAction
from forsun_box.actions.thrift import ThriftAction


def _register_builtins() -> None:
    register_action("shell", ShellAction)
    register_action("http", HttpAction)
    register_action("redis", RedisAction)
    register_action("mysql", MysqlAction)
    register_action("beanstalk", BeanstalkAction)
    register_action("thrift", ThriftAction)


_register_builtins()

__all__ = [
    "ACTIONS",
    "ALIASES",
    "Action",
    "ActionFailed",
    "ActionSettings",
    "BeanstalkAction",
    "HttpAction",
    "MysqlAction",
    "RedisAction",
    "ShellAction",
    "action_names",
    "canonical_name",
    "configure_actions",
    "get_action",
    "register_action",
]
