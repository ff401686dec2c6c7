"""Slurm on a login node: one SSH connection (fabric), host keys always checked."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from mqi.config import ClusterConfig
from mqi.errors import TransportError
from mqi.shell import quote
from mqi.transport.base import CommandResult, LineStream, Progress, TransferStats
from mqi.transport.files import tar_stream
from mqi.transport.stream import QueuedLines

if TYPE_CHECKING:
    import paramiko


class SSHTransport:
    """A login node over SSH (fabric/paramiko), one connection per instance."""

    def __init__(self, cluster: ClusterConfig) -> None:
        if not cluster.host:
            raise TransportError("cluster.host is not set: name the login host (or an ~/.ssh/config alias)")
        self.cluster = cluster
        self._connection = None
        self._sftp = None
        # Two threads may ask at once (a submit uploads while its survey runs): one connects.
        self._connect_lock = threading.RLock()
        self.connections_opened = 0
        user = f"{cluster.user}@" if cluster.user else ""
        port = f":{cluster.port}" if cluster.port else ""
        self.description = f"ssh {user}{cluster.host}{port}"

    # -- connection -----------------------------------------------------------
    def _connect(self):  # -> fabric.Connection
        with self._connect_lock:
            return self._open()

    def _open(self):  # -> fabric.Connection
        if self._connection is not None:
            if self._connection.is_connected:
                return self._connection
            self.close()  # it dropped (a restarted sshd, a network cut): connect again
        import fabric
        import paramiko

        cluster = self.cluster
        known_hosts = Path(cluster.known_hosts)
        if not known_hosts.is_file():
            raise TransportError(
                f"known_hosts file {known_hosts} does not exist: add the login node's key "
                f"({_keyscan(cluster.port, cluster.host, known_hosts)}) or set cluster.known_hosts"
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
            if not connection.gateway:
                connection.connect_kwargs["sock"] = prompt_socket(
                    connection.host, connection.port, cluster.connect_timeout
                )
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
                    f"({_keyscan(connection.port, connection.host, known_hosts)}) once verified"
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
        if isinstance(sock, socket.socket):  # through a gateway: set once connected
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections_opened += 1
        self._connection = connection
        return connection

    def _lost(self, err: Exception) -> TransportError:
        self.close()
        return TransportError(f"SSH connection to {self.description} dropped: {err}", transient=True)

    def _sftp_client(self):  # -> paramiko.SFTPClient
        with self._connect_lock:
            if self._sftp is None:
                self._sftp = self._connect().sftp()
            return self._sftp

    # -- operations -----------------------------------------------------------
    def run(self, command: str, *, timeout: float | None = None, stdin: str | None = None) -> CommandResult:
        import paramiko

        connection = self._connect()
        try:
            return _exec(connection.transport, command, timeout, stdin)
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise self._lost(err) from None

    def put_files(
        self, local_root: Path, remote_root: str, names: Iterable[str], progress: Progress | None = None
    ) -> TransferStats:
        """One tar stream over one channel: the remote side makes ``remote_root`` (umask 077:
        patient data is private to the cluster user from the start), unpacks, and lists the
        sizes it wrote, which must match what was sent. Per-file SFTP waits for several
        round trips per file (open, write, close, stat); the stream waits for none."""
        import paramiko

        stats = TransferStats()
        start = time.monotonic()
        names = sorted(names)
        if not names:
            return stats
        root = quote(remote_root)
        command = (
            f"umask 077 && mkdir -p {root} && tar -x --no-same-owner -f - -C {root} "
            f"&& cd {root} && find . -type f -printf '%s %P\\0'"
        )
        try:
            channel = self._connect().client.get_transport().open_session(timeout=_CHANNEL_TIMEOUT)
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise self._lost(err) from None
        sent: dict[str, int] = {}
        try:
            channel.settimeout(_CHANNEL_TIMEOUT)
            channel.exec_command(command)
            for piece in tar_stream(local_root, names):  # a local file that cannot be read raises
                try:
                    channel.sendall(piece.data)
                except OSError:
                    if channel.exit_status_ready():  # the remote side ended first: its error says why
                        break
                    raise
                sent.update(piece.finished)
                if progress and piece.content_bytes:
                    progress(piece.content_bytes)
            else:
                channel.shutdown_write()
            stdout, stderr = _drain(channel)
            status = channel.recv_exit_status()
        except (OSError, paramiko.SSHException, EOFError) as err:
            raise self._lost(err) from None
        finally:
            channel.close()
        if status == -1:  # the channel closed without an exit status: the link broke
            raise self._lost(EOFError("the upload channel closed early"))
        if status != 0:
            said = CommandResult(command, status, "", stderr).first_error_line()
            raise TransportError(f"cannot write {remote_root} on the cluster: {said}")
        written = _sizes(stdout)
        wrong = sorted(name for name, size in sent.items() if written.get(name) != size)
        if wrong or len(sent) != len(names):
            raise TransportError(
                f"the upload to {remote_root} is incomplete ({len(wrong)} file(s) differ, e.g. "
                f"{(wrong or names)[0]})",
                transient=True,
            )
        stats.files_sent = len(sent)
        stats.bytes_sent = sum(sent.values())
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

    def stream(self, command: str) -> LineStream:
        """The command on a new channel of the one connection (no second login)."""
        import paramiko

        connection = self._connect()
        try:
            channel = connection.client.get_transport().open_session()
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError, AttributeError) as err:
            raise self._lost(err) from None
        stdout = channel.makefile("rb")

        def ended() -> str:
            code = channel.recv_exit_status()
            errors = channel.makefile_stderr("rb").read().decode("utf-8", errors="replace").strip()
            lines = errors.splitlines()
            if lines:
                return lines[-1]
            return "the connection dropped" if code == -1 else f"exit code {code}"

        def stop() -> None:
            with contextlib.suppress(Exception):
                channel.shutdown_write()  # EOF on its stdin: the command's cue to end
            channel.close()

        return QueuedLines(
            readline=stdout.readline,
            write=channel.sendall,
            ended=ended,
            stop=stop,
            what=f"remote command over {self.description}",
        )

    def close(self) -> None:
        # Not under the connect lock: an interrupt during a background connect must not
        # wait for its timeouts (the process is stopping).
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
            self._sftp = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class PromptSocket(socket.socket):
    """A TCP socket that acknowledges what it receives at once (TCP_QUICKACK after each
    read; Linux). sshd leaves Nagle's algorithm on for commands without a terminal, so a
    reply queued behind an unacknowledged packet (after login: the host keys notice) waits
    for the client's delayed ACK, 40 ms: the first channel of every connection did."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return data


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def prompt_socket(host: str, port: int, timeout: float) -> socket.socket:
    """A connected TCP socket to ``host:port`` with TCP_NODELAY from the first packet (the
    login's small messages otherwise wait on delayed ACKs: 40 ms at least) and, where the
    system has it, quick ACKs."""
    kind = PromptSocket if _QUICKACK is not None else socket.socket
    error: OSError | None = None
    for family, type_, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = kind(family, type_, proto)
        try:
            sock.settimeout(timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect(address)
            return sock
        except OSError as failed:
            sock.close()
            error = failed
    raise error or OSError(f"no address for {host}")


_CHANNEL_TIMEOUT = 300.0  # seconds one send or receive on an upload channel may block


def _drain(channel) -> tuple[bytes, str]:  # channel: paramiko.Channel
    """Everything the remote command printed (stdout as bytes, stderr as text), to its end."""
    out = channel.makefile("rb").read()
    err = channel.makefile_stderr("rb").read()
    return out, err.decode(errors="replace")


def _sizes(listing: bytes) -> dict[str, int]:
    """``find -printf '%s %P\\0'`` output -> {relative path: size}."""
    sizes = {}
    for entry in listing.split(b"\0"):
        size, _, name = entry.partition(b" ")
        if name and size.isdigit():
            sizes[name.decode(errors="replace")] = int(size)
    return sizes


def _exec(
    transport: paramiko.Transport, command: str, timeout: float | None, stdin: str | None
) -> CommandResult:
    """One command on its own channel of the connection (paramiko.Transport): ``stdin``
    written whole and closed (by a thread, so that a large stdin never waits on unread
    output), stdout and stderr read as they come, until the command ends or ``timeout``.

    fabric's ``run`` copies a stdin stream one byte per 10 ms and polls every 10 ms; this
    is the same exec request without those waits.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    channel = transport.open_session(timeout=timeout)
    try:
        channel.exec_command(command)
        if stdin:
            data = stdin.encode()
            threading.Thread(target=_feed, args=(channel, data), name="mqi-ssh-stdin", daemon=True).start()
        else:
            channel.shutdown_write()
        out, err = bytearray(), bytearray()
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TransportError(
                    f"remote command timed out after {timeout:.0f}s: {command[:80]}", transient=True
                )
            ready, _, _ = select.select([channel], [], [], left)
            if not ready:
                continue
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(_CHUNK)
            if channel.recv_ready():
                out += channel.recv(_CHUNK)
            elif channel.eof_received or channel.closed:
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(_CHUNK)
                break
        status = channel.recv_exit_status()
        if status == -1 and not transport.is_active():
            raise EOFError("the connection closed before the command ended")
    finally:
        channel.close()
    return CommandResult(command, status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


_CHUNK = 1 << 16


def _feed(channel: paramiko.Channel, data: bytes) -> None:
    """Write a command's stdin and close it; a dropped connection shows in the reader."""
    with contextlib.suppress(Exception):
        channel.sendall(data)
        channel.shutdown_write()


def _keyscan(port: int | None, host: str, known_hosts: Path) -> str:
    """The exact command that adds a host's key, to run once the key is verified."""
    return f"ssh-keyscan -p {port or 22} {quote(host)} >> {quote(str(known_hosts))}"
