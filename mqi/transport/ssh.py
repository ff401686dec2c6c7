"""Slurm on a login node: one SSH connection (fabric), host keys always checked."""

from __future__ import annotations

import contextlib
import socket
import stat
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from mqi.config import ClusterConfig
from mqi.errors import TransportError
from mqi.shell import quote
from mqi.transport.base import CommandResult, LineStream, Progress, TransferStats
from mqi.transport.stream import QueuedLines


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
            mkdir = self.run("umask 077 && mkdir -p " + " ".join(quote(d) for d in dirs))
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
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
            self._sftp = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _keyscan(port: int | None, host: str, known_hosts: Path) -> str:
    """The exact command that adds a host's key, to run once the key is verified."""
    return f"ssh-keyscan -p {port or 22} {quote(host)} >> {quote(str(known_hosts))}"
