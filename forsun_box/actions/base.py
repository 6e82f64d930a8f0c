"""The action contract, its settings and the registry of action names.

An action is a class registered under a name. The dispatcher builds one
instance per firing as ``cls(ts, plan, action, params)`` and calls
:meth:`Action.execute`, which may be a coroutine function or a plain
function (forsun's extensions use both). An action signals "retry later"
by raising :class:`forsun_box.errors.RetryLater`; any other exception is a
failure whose text goes into the run history (:class:`ActionFailed` is the
way to fail with a clean one-line message).

Built-in actions register through :func:`register_action`, the same call
extensions use.

Preparing ahead: an action may also define :meth:`Action.prepare`, which does
before the due instant what does not depend on it (checking and building the
request, the command line...) and returns a :class:`Prepared` whose
``start`` only sends. The dispatcher prepares firings due in the next moments
(told by the engine) and starts them at the instant; a plan changed or removed
meanwhile has another version, so its preparation is dropped, never fired.

Every firing has an idempotency key, :attr:`Action.firing_id`:
``EPOCH:DUE_MS:KEY`` -- the same for every attempt of one firing, different
for every firing -- which the built-in actions hand to their targets where the
target's format has room for it (an HTTP header, an environment variable).
EPOCH is "0" on a single node; on a cluster node, the epoch of the lease on
the plan's partition that the firing's writes are fenced with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from forsun_box import __version__

if TYPE_CHECKING:
    from forsun_box.plan import Plan

DEFAULT_CONCURRENCY = 256


class ActionFailed(Exception):
    """An expected failure of an action; ``str(error)`` is recorded as the run's error."""


@dataclass(frozen=True)
class ActionSettings:
    """Settings every action may read through :attr:`Action.settings`.

    The retry fields follow forsun: a failed firing is retried
    ``retry_max_count`` times; retry *n* (1-based) waits
    ``retry_delay_seconds + retry_delay_seconds * retry_delay_rate * (n - 1)``
    seconds after the attempt before it ended.
    """

    retry_delay_seconds: float = 3
    retry_delay_rate: float = 1
    retry_max_count: int = 0
    #: working directory of shell commands; empty: the service's own
    shell_cwd: str = ""
    shell_enabled: bool = True
    #: when non-empty, the first word of a shell command must be one of these
    shell_allow: tuple[str, ...] = ()
    shell_timeout_s: float = 600
    http_max_clients: int = 256
    http_connect_timeout: float = 5
    http_request_timeout: float = 120
    http_user_agent: str = f"forsun-box/{__version__}"
    #: action name -> most firings of that action running at once
    concurrency: Mapping[str, int] = field(default_factory=dict)
    #: limit used for action names absent from ``concurrency``
    default_concurrency: int = DEFAULT_CONCURRENCY
    #: upper bound on one attempt of any action, in seconds; 0: none (the
    #: built-in actions have their own limits)
    action_timeout_s: float = 0
    #: connect limit of the redis, mysql and beanstalk actions, seconds
    server_connect_timeout: float = 5
    #: limit on one run (commands, statement, put) of those actions, seconds
    server_run_timeout: float = 60
    redis_max_connections: int = 8
    mysql_user: str = "root"
    mysql_passwd: str = ""
    mysql_max_connections: int = 8
    #: longest wait for a free pooled mysql connection, seconds
    mysql_wait_connection_timeout: float = 7200
    #: pooled mysql connections older than this are reopened, seconds
    mysql_idle_seconds: float = 120
    beanstalk_max_connections: int = 8
    #: first part of every firing id: "0" for a single node
    firing_epoch: str = "0"

    def concurrency_for(self, name: str) -> int:
        """The concurrency limit of action ``name`` (at least 1)."""
        return max(1, int(self.concurrency.get(name, self.default_concurrency)))


def firing_id(epoch: str, due_ms: int, key: str) -> str:
    """The idempotency key of ``key``'s firing due at ``due_ms``: ``EPOCH:DUE_MS:KEY``.

    Epoch and due time are digits, so the first two colons split it unambiguously
    whatever the key holds.
    """
    return f"{epoch}:{due_ms}:{key}"


#: what a started preparation reports when it ends: None for success, else the error
Done = Callable[[BaseException | None], None]


class Prepared(Protocol):
    """A firing made ready ahead of its instant by :meth:`Action.prepare`.

    It may also have a true ``bounded`` attribute: where it is started bounds how many
    run at once by the action's concurrency limit, so the dispatcher holds no slot of
    that limit for it.

    It may also be *armable*, with two more methods: ``arm(at_ms)`` has it start by
    itself at the wall-clock instant ``at_ms`` (its :meth:`start` then only learns its
    end), and ``disarm()`` takes that back, returning an awaitable of whether the
    instant came first and it went out already (None: it was not armed); ``ended()``
    says whether the end of one that went out came already. When the end of
    one its arm started is reported, its ``went_out`` says when it started and when it
    ended there (unix ms); else it is None.
    """

    def start(self, done: Done) -> None:
        """Send it now. ``done`` is called exactly once, later, from the event loop
        (never from within ``start``); an error that ``start`` raises instead means
        nothing was sent and ``done`` will not be called."""

    def discard(self) -> None:
        """It will not be started (the plan changed or went): let go of what it holds."""


class Action:
    """Base class of every action, built once per firing.

    Attributes: ``ts`` the firing's due time in unix seconds (int, as
    forsun passes it), ``due_ms`` the same in milliseconds (set by the
    dispatcher), ``plan`` the fired :class:`~forsun_box.plan.Plan`,
    ``action`` the name the plan used, ``params`` the plan's params.
    """

    #: shared settings, installed once by the dispatcher (:func:`configure_actions`)
    settings: ClassVar[ActionSettings] = ActionSettings()
    #: this firing's epoch, set by the dispatcher on a cluster node; None: the
    #: settings' ``firing_epoch``
    firing_epoch: str | None = None

    def __init__(self, ts: int, plan: Plan, action: str, params: dict[str, str]) -> None:
        self.ts = ts
        self.due_ms = ts * 1000
        self.plan = plan
        self.action = action
        self.params = params

    @property
    def firing_id(self) -> str:
        """This firing's idempotency key (see :func:`firing_id`)."""
        epoch = self.firing_epoch
        if epoch is None:
            epoch = self.settings.firing_epoch
        return firing_id(epoch, self.due_ms, self.plan.key)

    def prepare(self) -> Prepared | None:
        """Do ahead of the instant what does not depend on it; None: nothing to prepare
        (the default: :meth:`execute` runs at the instant).

        Raises as :meth:`execute` would for bad params; the dispatcher then leaves
        the firing to :meth:`execute` at the instant, which reports the error.
        """
        return None

    async def execute(self, *args: Any, **kwargs: Any) -> None:
        """Do the action's work.

        Returns None on success. Raises :class:`~forsun_box.errors.RetryLater`
        to ask for a retry, anything else (preferably :class:`ActionFailed`)
        to fail. Subclasses may define it as a plain function instead of a
        coroutine function; it must then return quickly.
        """
        raise NotImplementedError

    @classmethod
    async def close_shared(cls) -> None:
        """Release resources shared by all instances (connection pools...).

        Called once per registered class when the dispatcher closes.
        """


#: registered action name -> class
ACTIONS: dict[str, type[Action]] = {}

#: forsun's alternative names; a registered name of the same spelling wins
ALIASES: dict[str, str] = {"sh": "shell", "bash": "shell"}


def register_action(name: str, cls: type[Action]) -> None:
    """Register ``cls`` under ``name``, replacing any earlier registration."""
    if not name:
        raise ValueError("an action name must not be empty")
    ACTIONS[name] = cls


def canonical_name(name: str) -> str:
    """``name`` with forsun's aliases resolved (``sh`` -> ``shell``)."""
    if name in ACTIONS:
        return name
    return ALIASES.get(name, name)


def get_action(name: str) -> type[Action] | None:
    """The class registered for ``name`` (aliases resolved), or None."""
    return ACTIONS.get(canonical_name(name))


def action_names(with_aliases: bool = False) -> list[str]:
    """Sorted registered names; with ``with_aliases`` also the aliases that resolve."""
    names = set(ACTIONS)
    if with_aliases:
        names.update(a for a, target in ALIASES.items() if target in ACTIONS)
    return sorted(names)


def configure_actions(settings: ActionSettings) -> None:
    """Install ``settings`` for every action class."""
    Action.settings = settings
