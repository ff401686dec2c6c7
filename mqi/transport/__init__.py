"""Run a command, put a tree, get a tree, and operate on remote files: on this machine
or on a login node over SSH.

Both transports take shell command strings (built with :func:`mqi.shell.quote`) and
bundle-relative file lists. An SSH transport opens ONE connection, lazily, and keeps it
for the whole command. Host keys are always checked against the configured known_hosts
file; nothing is ever auto-added.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mqi.transport.base import CommandResult, Progress, TransferStats, Transport
from mqi.transport.files import RemoteFiles
from mqi.transport.local import LocalTransport

if TYPE_CHECKING:
    from mqi.config import ClusterConfig


def open_transport(cluster: ClusterConfig) -> Transport:
    """The transport the config names; SSH connects lazily on first use."""
    if cluster.transport == "local":
        return LocalTransport()
    from mqi.transport.ssh import SSHTransport  # fabric/paramiko only when needed

    return SSHTransport(cluster)


__all__ = [
    "CommandResult",
    "LocalTransport",
    "Progress",
    "RemoteFiles",
    "TransferStats",
    "Transport",
    "open_transport",
]
