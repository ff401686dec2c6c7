"""Slurm on this machine: commands through bash, files by copying."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from mqi.errors import TransportError
from mqi.transport.base import CommandResult, LineStream, Progress, TransferStats
from mqi.transport.stream import QueuedLines


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

    def stream(self, command: str) -> LineStream:
        proc = subprocess.Popen(
            ["bash", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

        def write(data: bytes) -> None:
            stdin.write(data)
            stdin.flush()

        def ended() -> str:
            errors = stderr.read().decode("utf-8", errors="replace").strip().splitlines()
            code = proc.wait()
            return errors[-1] if errors else f"exit code {code}"

        def stop() -> None:
            try:
                stdin.close()  # the command's cue to end by itself
                proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()

        return QueuedLines(
            readline=stdout.readline, write=write, ended=ended, stop=stop, what="local command"
        )

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
