"""One error hierarchy, carrying forsun's error codes.

Each API translates :class:`ForsunBoxError` in one place: the HTTP v1 API
into ``errcode``/``errmsg``, Thrift into ``ForsunPlanError``, the CLI into
an exit status and a one-line message.
"""

from __future__ import annotations

UNKNOWN = 1001
TIME_NEVER_ARRIVES = 1002
NOT_FOUND = 1003
STORE_ERROR = 1004
REMOVE_ERROR = 1005
UNKNOWN_ACTION = 1006
MISSING_ARGUMENT = 1007
# forsun-box's own codes, above forsun's range
INVALID_VALUE = 1008
TOO_LARGE = 1009


class ForsunBoxError(Exception):
    """Root error: ``code`` is forsun's error code, ``message`` says what went wrong."""

    code: int = UNKNOWN
    default_message = "unknown error"

    def __init__(self, message: str | None = None, code: int | None = None) -> None:
        self.message = message or self.default_message
        if code is not None:
            self.code = code
        super().__init__(self.message)


class UnknownError(ForsunBoxError):
    code = UNKNOWN


class TimeNeverArrives(ForsunBoxError):
    code = TIME_NEVER_ARRIVES
    default_message = "the time will never arrive"


class PlanNotFound(ForsunBoxError):
    code = NOT_FOUND
    default_message = "plan not found"


class StoreError(ForsunBoxError):
    code = STORE_ERROR
    default_message = "store error"


class RemoveError(ForsunBoxError):
    code = REMOVE_ERROR
    default_message = "remove error"


class UnknownAction(ForsunBoxError):
    code = UNKNOWN_ACTION
    default_message = "unknown action"


class MissingArgument(ForsunBoxError):
    code = MISSING_ARGUMENT

    def __init__(self, name: str) -> None:
        super().__init__(f"missing argument: {name}")
        self.name = name


class InvalidValue(ForsunBoxError):
    code = INVALID_VALUE
    default_message = "invalid value"


class TooLarge(ForsunBoxError):
    code = TOO_LARGE
    default_message = "too large"


class StartupError(Exception):
    """Raised when the service cannot start; the message is shown to the user as is."""


class RetryLater(Exception):
    """Raised by an action to ask for the firing to be retried later."""
