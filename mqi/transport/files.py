"""Remote file operations: shell command builders (pure, every path quoted once, by
:func:`mqi.shell.quote`) and ``RemoteFiles``, which runs them through a transport.

The builders let orchestration put a file operation into the same round trip as a
Slurm call; ``RemoteFiles`` is for operations that stand alone.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mqi.errors import OperationalError, TransportError
from mqi.shell import quote
from mqi.transport.base import Transport

# What the jobs write into a bundle (logs, results, engine output): never part of an upload.
_JOB_OUTPUTS = (
    "\\( -path ./logs -o -path ./results -o -path './beams/*/output' \\) -prune "
    "-o -type f ! -path './beams/*/exit_code' ! -path './beams/*/engine.*' -print0"
)


def bundle_listing_command(remote: str) -> str:
    """Prints ``final``, ``partial`` or ``none`` (where the bundle is), then ``sha256  ./path``
    lines for the uploaded files found there."""
    final, partial = quote(remote), quote(remote + ".partial")
    return (
        f"if [ -d {final} ]; then echo final; cd {final}; "
        f"elif [ -d {partial} ]; then echo partial; cd {partial}; else echo none; exit 0; fi; "
        f"find . {_JOB_OUTPUTS} | xargs -0 -r sha256sum"
    )


def parse_bundle_listing(text: str) -> tuple[str, dict[str, str]]:
    """(where, {relative path: sha256}) from :func:`bundle_listing_command` output."""
    lines = text.splitlines()
    kind = lines[0].strip() if lines else "none"
    sums = {}
    for line in lines[1:]:
        digest, _, name = line.partition("  ")
        if name:
            sums[name.removeprefix("./")] = digest
    return kind, sums


def publish_command(remote: str, *, from_partial: bool) -> str:
    """Before submit.sh runs (ends with ``&&``): make the bundle's logs folder (Slurm does
    not create the folder of --output files) and, after an upload, turn ``<remote>.partial``
    into ``<remote>`` by one rename, private to the cluster user (patient data)."""
    if not from_partial:
        return f"mkdir -p {quote(remote)}/logs && "
    partial = quote(remote + ".partial")
    return f"mkdir -p {partial}/logs && chmod 700 {partial} && mv -T {partial} {quote(remote)} && "


def remove_command(path: str) -> str:
    """Removes one file (ends with ``&&``)."""
    return f"rm -f {quote(path)} && "


@dataclass
class TarChunk:
    """A piece of a tar stream: its bytes, how many of them are file content, and the
    files (name, size) whose content ends in it."""

    data: bytes
    content_bytes: int = 0
    finished: list[tuple[str, int]] = field(default_factory=list)


def tar_stream(local_root: Path, names: Iterable[str], chunk: int = 1 << 18) -> Iterator[TarChunk]:
    """A POSIX tar archive of ``local_root/<name>`` for each name, in chunks of about
    ``chunk`` bytes: regular files only, each under its bundle-relative name with its own
    mode bits and no owner names. Raises TransportError for a name that is not a plain
    relative path or a file that is not a regular file or shrinks while it is read."""
    buffer = bytearray()
    piece = TarChunk(b"")
    for name in names:
        parts = PurePosixPath(name).parts
        if not parts or PurePosixPath(name).is_absolute() or ".." in parts or name != "/".join(parts):
            raise TransportError(f"{name!r} is not a relative path inside the bundle")
        path = local_root / name
        try:  # a symbolic link is never followed, a FIFO never waited on
            handle = os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb")
        except OSError as err:
            raise TransportError(f"cannot read {path}: {err.strerror or err}") from None
        with handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise TransportError(f"{path} is not a regular file")
            header = tarfile.TarInfo(name)
            header.size = info.st_size
            header.mode = stat.S_IMODE(info.st_mode)
            header.mtime = int(info.st_mtime)
            header.uname = header.gname = ""
            buffer += header.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            remaining = info.st_size
            while remaining:
                try:
                    block = handle.read(min(chunk, remaining))
                except OSError as err:
                    raise TransportError(f"cannot read {path}: {err.strerror or err}") from None
                if not block:
                    raise TransportError(f"{path} changed while it was being sent")
                buffer += block
                piece.content_bytes += len(block)
                remaining -= len(block)
                if len(buffer) >= chunk:
                    piece.data = bytes(buffer)
                    yield piece
                    buffer, piece = bytearray(), TarChunk(b"")
        buffer += bytes(-info.st_size % tarfile.BLOCKSIZE)
        piece.finished.append((name, info.st_size))
    buffer += bytes(2 * tarfile.BLOCKSIZE)  # the end-of-archive marker
    piece.data = bytes(buffer)
    yield piece


class RemoteFiles:
    """File operations on the cluster side of a transport, one round trip each."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def read_text(self, path: str) -> str | None:
        """The file's text, or None when it does not exist (or cannot be read)."""
        result = self.transport.run(f"cat {quote(path)}", timeout=60)
        return result.stdout if result.ok else None

    def exists(self, path: str) -> bool:
        return self.transport.run(f"test -e {quote(path)}", timeout=60).ok

    def set_aside(self, remote: str, stamp: str) -> None:
        """``<remote>`` becomes ``<remote>.old-<stamp>``; a half upload ``<remote>.partial`` goes."""
        result = self.transport.run(
            f"if [ -d {quote(remote)} ]; then mv -T {quote(remote)} {quote(f'{remote}.old-{stamp}')}; fi; "
            f"rm -rf {quote(remote + '.partial')}",
            timeout=120,
        )
        if not result.ok:
            raise OperationalError(f"cannot set aside {remote} on the cluster: {result.first_error_line()}")

    def discard_partial(self, remote: str) -> None:
        """A half or unneeded upload ``<remote>.partial`` goes."""
        result = self.transport.run(f"rm -rf {quote(remote + '.partial')}", timeout=120)
        if not result.ok:
            said = result.first_error_line()
            raise OperationalError(f"cannot remove {remote}.partial on the cluster: {said}")

    def reopen_upload(self, remote: str) -> None:
        """An uploaded but never submitted bundle goes back to ``<remote>.partial`` to be refreshed."""
        result = self.transport.run(f"mv -T {quote(remote)} {quote(remote + '.partial')}", timeout=60)
        if not result.ok:
            raise OperationalError(f"cannot reopen {remote} on the cluster: {result.first_error_line()}")

    def newest_and_tails(self, pattern_dir: str, pattern: str, tails: list[str], lines: int = 50) -> str:
        """The newest file matching ``pattern_dir/pattern`` (a glob), then the last lines of
        each file in ``tails`` that exists, each under a ``== path`` heading."""
        glob = f"{quote(pattern_dir)}/{pattern}"
        parts = [f"ls -t {glob} 2>/dev/null | head -n1 | xargs -r -d '\\n' cat"]
        for path in tails:
            parts.append(
                f"[ -f {quote(path)} ] && {{ echo {quote(f'== {path} (last {lines} lines)')}; "
                f"tail -n {lines} {quote(path)}; }}"
            )
        result = self.transport.run("; ".join(parts) + "; true", timeout=60)
        return result.stdout

    def present(self, root: str, names: list[str]) -> set[str]:
        """Which of these files (relative to ``root``) exist there."""
        if not names:
            return set()
        tests = " ".join(f"[ -f {quote(name)} ] && printf '%s\\n' {quote(name)};" for name in names)
        result = self.transport.run(f"cd {quote(root)} 2>/dev/null && {{ {tests} true; }}", timeout=60)
        return {line for line in result.stdout.splitlines() if line} & set(names)

    def sizes(self, paths: list[str]) -> dict[str, int]:
        """Bytes under each path that exists (``du -sb``), in one round trip."""
        if not paths:
            return {}
        result = self.transport.run("du -sb -- " + " ".join(quote(p) for p in paths) + " 2>/dev/null; true")
        found = {}
        for line in result.stdout.splitlines():
            size, _, path = line.partition("\t")
            if size.isdigit() and path:
                found[path] = int(size)
        return found

    def folders_older_than(self, root: str, pattern: str, days: float) -> list[str]:
        """Folders directly under ``root`` whose name matches the glob ``pattern``, last
        changed more than ``days`` days ago."""
        minutes = int(days * 24 * 60)
        age = f"-mmin +{minutes} " if minutes > 0 else ""
        result = self.transport.run(
            f"find {quote(root)} -mindepth 1 -maxdepth 1 -type d -name {quote(pattern)} {age}-print"
            " 2>/dev/null; true",
            timeout=120,
        )
        return sorted(line for line in result.stdout.splitlines() if line)

    def remove_trees(self, paths: list[str]) -> None:
        """``rm -rf`` each path (one round trip)."""
        if not paths:
            return
        result = self.transport.run("rm -rf -- " + " ".join(quote(p) for p in paths), timeout=600)
        if not result.ok:
            raise OperationalError(f"cannot remove folders on the cluster: {result.first_error_line()}")
