"""Run a command, put a tree, get a tree: on this machine or on a login node over SSH.

Both transports take shell command strings (callers quote every value with
``shlex.quote``) and bundle-relative file lists. An SSH transport opens ONE
connection, lazily, and keeps it for the whole CLI command. Host keys are always
checked against the configured known_hosts file; nothing is ever auto-added.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from mqi.config import ClusterConfig
from mqi.errors import TransportError

Progress = Callable[[int], None]
"""Called with the number of bytes just transferred."""


@dataclass(frozen=True)
class CommandResult:
    command: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def first_error_line(self) -> str:
        for text in (self.stderr, self.stdout):
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines:
                return lines[-1]
        return f"exit code {self.returncode}"


@dataclass
class TransferStats:
    files_sent: int = 0
    files_skipped: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    names: list[str] = field(default_factory=list)


class Transport(Protocol):
    """What orchestration needs from a place where Slurm commands run."""

    description: str

    def run(self, command: str, *, timeout: float | None = None, stdin: str | None = None) -> CommandResult:
        """Run a shell command there; never raises for a non-zero exit."""
        ...

    def put_files(
        self, local_root: Path, remote_root: str, names: Iterable[str], progress: Progress | None = None
    ) -> TransferStats:
        """Copy ``local_root/<name>`` to ``remote_root/<name>`` (folders created, modes kept)."""
        ...

    def get_files(
        self, remote_root: str, local_root: Path, names: Iterable[str], progress: Progress | None = None
    ) -> TransferStats:
        """Copy ``remote_root/<name>`` to ``local_root/<name>``."""
        ...

    def close(self) -> None: ...


def list_tree_command(root: str) -> str:
    """A command printing ``<size>\\t<relative path>`` for every file under root (nothing if absent)."""
    quoted = shlex.quote(root)
    return f"if [ -d {quoted} ]; then cd {quoted} && find . -type f -printf '%s\\t%P\\n'; fi"


def parse_tree_listing(text: str) -> dict[str, int]:
    """Parse :func:`list_tree_command` output into {relative path: size}."""
    sizes: dict[str, int] = {}
    for line in text.splitlines():
        size, _, name = line.partition("\t")
        if name:
            sizes[name] = int(size)
    return sizes


class LocalTransport:
    """Slurm on this machine: commands through bash, files by copying."""

    def __init__(self) -> None:
        self.description = "local"

    def run(self, command: str, *, timeout: float | None = None, stdin: str | None = None) -> CommandResult:
        try:
            proc = subprocess.run(
                ["bash", "-c", command],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TransportError(
                f"local command timed out after {timeout:.0f}s: {command[:80]}", transient=True
            ) from None
        return CommandResult(command, proc.returncode, proc.stdout, proc.stderr)

    def put_files(
        self, local_root: Path, remote_root: str, names: Iterable[str], progress: Progress | None = None
    ) -> TransferStats:
        return _copy_files(local_root, Path(remote_root), names, progress)

    def get_files(
        self, remote_root: str, local_root: Path, names: Iterable[str], progress: Progress | None = None
    ) -> TransferStats:
        return _copy_files(Path(remote_root), local_root, names, progress)

    def close(self) -> None:
        pass


def _copy_files(src: Path, dst: Path, names: Iterable[str], progress: Progress | None) -> TransferStats:
    stats = TransferStats()
    start = time.monotonic()
    for name in names:
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, target)
        size = target.stat().st_size
        stats.files_sent += 1
        stats.bytes_sent += size
        if progress:
            progress(size)
    stats.seconds = time.monotonic() - start
    return stats


class SSHTransport:
    """A login node over SSH (fabric/paramiko), one connection per instance."""

    def __init__(self, cluster: ClusterConfig) -> None:
        if not cluster.host:
            raise TransportError("cluster.host is not set: name the login host (or an ~/.ssh/config alias)")
        self.cluster = cluster
        self._connection = None
        self._sftp = None
        self.connections_opened = 0
        user = f"{cluster.user}@" if cluster.user else ""
        port = f":{cluster.port}" if cluster.port else ""
        self.description = f"ssh {user}{cluster.host}{port}"

    # -- connection -----------------------------------------------------------
    def _connect(self):  # -> fabric.Connection
        if self._connection is not None:
            return self._connection
        import fabric
        import paramiko

        cluster = self.cluster
        known_hosts = Path(cluster.known_hosts)
        if not known_hosts.is_file():
            raise TransportError(
                f"known_hosts file {known_hosts} does not exist: add the login node's key "
                f"(ssh-keyscan -p PORT HOST >> {known_hosts}) or set cluster.known_hosts"
            )
        # An explicit OpenSSH config gives host aliases and ProxyJump; fabric reads it.
        ssh_config = cluster.ssh_config if cluster.ssh_config and cluster.ssh_config.is_file() else None
        config = fabric.Config(
            runtime_ssh_path=str(ssh_config) if ssh_config else None,
            overrides={
                "load_ssh_configs": ssh_config is not None,
                "connect_kwargs": {
                    "look_for_keys": cluster.key_file is None,
                    "allow_agent": cluster.key_file is None,
                    **({"key_filename": [str(cluster.key_file)]} if cluster.key_file else {}),
                },
                "timeouts": {"connect": cluster.connect_timeout},
            },
        )
        connection = fabric.Connection(cluster.host, user=cluster.user, port=cluster.port, config=config)
        # Every hop is checked, ProxyJump gateways included (fabric would auto-add theirs).
        hop = connection
        while isinstance(hop, fabric.Connection):
            hop.client.set_missing_host_key_policy(paramiko.RejectPolicy())
            hop.client.load_host_keys(str(known_hosts))
            hop = hop.gateway
        where = f"{connection.user}@{connection.host}:{connection.port}"
        try:
            connection.open()
        except paramiko.BadHostKeyException:
            raise TransportError(
                f"host key of {where} does NOT match {known_hosts}: the host was reinstalled or someone "
                "is intercepting; verify with the cluster admins, then fix that known_hosts entry"
            ) from None
        except paramiko.AuthenticationException:
            key = cluster.key_file or "your SSH agent/default keys"
            raise TransportError(
                f"SSH authentication to {where} failed with {key}: check cluster.user and cluster.key_file"
            ) from None
        except paramiko.SSHException as err:
            text = str(err)
            if "not found in known_hosts" in text:
                raise TransportError(
                    f"{where} is not in {known_hosts}: add its key "
                    f"(ssh-keyscan -p {connection.port} {connection.host} >> {known_hosts}) once verified"
                ) from None
            raise TransportError(f"SSH to {where} failed: {text}", transient=True) from None
        except TimeoutError:
            raise TransportError(
                f"SSH to {where} timed out after {cluster.connect_timeout:.0f}s: is the host reachable?",
                transient=True,
            ) from None
        except socket.gaierror:
            raise TransportError(f"SSH host {connection.host!r} is unknown: check cluster.host") from None
        except (OSError, paramiko.ssh_exception.NoValidConnectionsError) as err:
            reason = getattr(err, "strerror", None) or str(err)
            raise TransportError(
                f"cannot connect to {where}: {reason} (is sshd running and the port right?)",
                transient=True,
            ) from None
        sock = getattr(connection.transport, "sock", None)
        if isinstance(sock, socket.socket):
            # Without it, small SFTP writes (CT slices) and each command wait on Nagle + delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections_opened += 1
        self._connection = connection
        return connection

    def _lost(self, err: Exception) -> TransportError:
        self.close()
        return TransportError(f"SSH connection to {self.description} dropped: {err}", transient=True)

    def _sftp_client(self):  # -> paramiko.SFTPClient
        if self._sftp is None:
            self._sftp = self._connect().sftp()
        return self._sftp

    # -- operations -----------------------------------------------------------
    def run(self, command: str, *, timeout: float | None = None, stdin: str | None = None) -> CommandResult:
        import invoke
        import paramiko

        connection = self._connect()
        try:
            if stdin is not None:
                import io

                result = connection.run(
                    command, hide=True, warn=True, timeout=timeout, in_stream=io.StringIO(stdin)
                )
            else:
                result = connection.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
        except invoke.exceptions.CommandTimedOut:
            raise TransportError(
                f"remote command timed out after {timeout:.0f}s: {command[:80]}", transient=True
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise self._lost(err) from None
        return CommandResult(command, result.exited, result.stdout, result.stderr)

    def put_files(
        self, local_root: Path, remote_root: str, names: Iterable[str], progress: Progress | None = None
    ) -> TransferStats:
        import paramiko

        stats = TransferStats()
        start = time.monotonic()
        names = list(names)
        dirs = sorted({str(PurePosixPath(remote_root, name).parent) for name in names})
        if dirs:
            # Folders of patient data are private to the cluster user from the start.
            mkdir = self.run("umask 077 && mkdir -p " + " ".join(shlex.quote(d) for d in dirs))
            if not mkdir.ok:
                raise TransportError(
                    f"cannot create {remote_root} on the cluster: {mkdir.first_error_line()}"
                )
        sftp = self._sftp_client()
        try:
            for name in names:
                source = local_root / name
                target = str(PurePosixPath(remote_root, name))
                sent = [0]

                def callback(done: int, _total: int, sent: list[int] = sent) -> None:
                    if progress:
                        progress(done - sent[0])
                    sent[0] = done

                sftp.put(str(source), target, callback=callback)
                mode = source.stat().st_mode
                if mode & stat.S_IXUSR:
                    sftp.chmod(target, stat.S_IMODE(mode))
                stats.files_sent += 1
                stats.bytes_sent += source.stat().st_size
        except (OSError, paramiko.SSHException, EOFError) as err:
            raise self._lost(err) from None
        stats.seconds = time.monotonic() - start
        return stats

    def get_files(
        self, remote_root: str, local_root: Path, names: Iterable[str], progress: Progress | None = None
    ) -> TransferStats:
        import paramiko

        stats = TransferStats()
        start = time.monotonic()
        sftp = self._sftp_client()
        try:
            for name in names:
                target = local_root / name
                target.parent.mkdir(parents=True, exist_ok=True)
                sftp.get(str(PurePosixPath(remote_root, name)), str(target))
                size = target.stat().st_size
                stats.files_sent += 1
                stats.bytes_sent += size
                if progress:
                    progress(size)
        except FileNotFoundError as err:
            raise TransportError(f"remote file missing: {err.filename or name}") from None
        except (OSError, paramiko.SSHException, EOFError) as err:
            raise self._lost(err) from None
        stats.seconds = time.monotonic() - start
        return stats

    def close(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
            self._sftp = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def open_transport(cluster: ClusterConfig) -> Transport:
    """The transport the config names; SSH connects lazily on first use."""
    if cluster.transport == "local":
        return LocalTransport()
    return SSHTransport(cluster)


def remote_join(*parts: str) -> str:
    return str(PurePosixPath(*parts))
