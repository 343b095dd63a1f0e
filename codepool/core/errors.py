"""Errors the core raises. Each front door maps them in one place:
the CLI to exit codes (cli/render.py), the daemon to HTTP statuses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class CodepoolError(Exception):
    """Base of every error meant for a person: its message is the whole story."""


class ConfigError(CodepoolError):
    """A config file or value is wrong; the message names file, key, value and what is allowed."""


class InvalidInput(CodepoolError):
    """A user name, duration or other argument is not acceptable. Nothing was changed."""


class NoWorkspace(CodepoolError):
    """The user has no workspace (or not in the state the operation needs)."""


class PoolFull(CodepoolError):
    """Every box the group may have is taken; try again later."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StartsFull(PoolFull):
    """pool.max_concurrent_starts starts are in flight, and the caller would not wait in
    line (the API): try again shortly."""


class Busy(CodepoolError):
    """Another process holds this user's lock (an assignment or a stop is under way)."""


class AssignTimeout(CodepoolError):
    """A box did not become ready in time."""


class BackendError(CodepoolError):
    """The backend (local slots or AWS) failed or cannot be reached."""


class NotASpare(BackendError):
    """A box offered as a spare is not (or no longer) an unowned running box."""


class UntrustedBox(BackendError):
    """A box answered over TLS with a certificate the router does not trust. Waiting does
    not mend that, so an assignment stops at once and says what to check."""


class StoreUnavailable(CodepoolError):
    """The store (SQLite or Redis) failed or cannot be reached."""


def classify(exc: CodepoolError, table: Mapping[type[CodepoolError], T], default: T) -> T:
    """The entry for the most specific class of exc in a front door's table."""
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return default
