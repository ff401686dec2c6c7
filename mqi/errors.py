"""Errors that end a command with one clear line and a documented exit code.

Exit codes (DESIGN.md): 0 success, 1 operational failure (cluster or host
unreachable, Slurm refused), 2 bad input or usage (invalid case, bad config).
"""

from __future__ import annotations


class MqiError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""

    exit_code = 1


class UsageError(MqiError):
    """Bad input or usage: a bad config, an invalid case, a wrong argument."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration file is missing, unreadable or invalid."""


class OperationalError(MqiError):
    """The cluster, the host or Slurm failed; retrying later may work."""

    exit_code = 1


class TransportError(OperationalError):
    """A command or file transfer to the cluster failed."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def one_line(error: BaseException) -> str:
    """An error as the one line a person sees: mqi's own text, else the exception's type and text."""
    if isinstance(error, MqiError):
        return str(error)
    return f"{type(error).__name__}: {error}"
