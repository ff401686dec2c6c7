"""Sending results (C-STORE), C-ECHO, the retry schedule and the listener's port check.

Nothing here raises on a peer that is down or refuses: every call returns an outcome
with a one-line reason, so the poller can record the attempt and try again later.
Files are sent as stored (the dataset bytes are not decoded and re-encoded), so the
receiver gets byte-identical datasets.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config

from mqi.config import DicomPeer, SendRetry
from mqi.dicomnet.sop import VERIFICATION, is_success, status_text

# Send files from disk without decoding them: byte-identical datasets, less memory.
_config.STORE_SEND_CHUNKED_DATASET = True

MAX_CONTEXTS = 128  # the DICOM limit of presentation contexts in one association


@dataclass(frozen=True)
class FileStatus:
    path: Path
    status: int | None  # the peer's DIMSE status; None when nothing was answered
    detail: str

    @property
    def ok(self) -> bool:
        return self.status is not None and is_success(self.status)


@dataclass(frozen=True)
class SendOutcome:
    destination: str  # AE@host:port
    ok: bool
    reason: str  # one line: "sent 3 files" or why not
    files: tuple[FileStatus, ...] = ()
    seconds: float = 0.0

    @property
    def sent(self) -> int:
        return sum(item.ok for item in self.files)


@dataclass
class _Item:
    path: Path
    sop_class: str = ""
    transfer_syntax: str = ""
    problem: str = ""


@dataclass
class _Plan:
    items: list[_Item] = field(default_factory=list)
    contexts: dict[tuple[str, str], None] = field(default_factory=dict)


def _read(paths: Iterable[Path]) -> _Plan:
    plan = _Plan()
    for raw in paths:
        item = _Item(Path(raw))
        try:
            meta = read_file_meta_info(item.path)
            item.sop_class = str(meta.MediaStorageSOPClassUID)
            item.transfer_syntax = str(meta.TransferSyntaxUID)
        except FileNotFoundError:
            item.problem = "no such file"
        except Exception as err:  # unreadable or no file meta: reported per file, never raised
            item.problem = f"not a DICOM file with file meta: {str(err).splitlines()[0]}"
        if not item.problem:
            plan.contexts[(item.sop_class, item.transfer_syntax)] = None
        plan.items.append(item)
    return plan


def _connect_problem(host: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as err:
        return err.strerror or str(err)


def _association_problem(assoc: object, destination: DicomPeer, timeout: float) -> str:
    """Why an association was not established, as one line starting with the destination."""
    label = destination.label()
    if getattr(assoc, "is_rejected", False):
        primitive = getattr(getattr(assoc, "acceptor", None), "primitive", None)
        reason = getattr(primitive, "reason_str", "") or "no reason given"
        return f"{label}: association rejected: {reason}"
    # pynetdicom reports a failed connection as an abort, without the reason: ask the socket layer.
    problem = _connect_problem(destination.host, destination.port, timeout)
    if problem is not None:
        return f"cannot connect to {label}: {problem}"
    if getattr(assoc, "is_aborted", False):
        return f"{label}: association aborted by the peer"
    return f"{label}: no answer to A-ASSOCIATE within {timeout:g} s"


def _new_ae(calling_ae: str, timeout: float) -> AE:
    ae = AE(calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def send_files(
    destination: DicomPeer, paths: Iterable[Path], *, calling_ae: str = "MQI", timeout: float = 30
) -> SendOutcome:
    """C-STORE each file to ``destination`` in one association; per-file statuses, never raises."""
    started = time.monotonic()
    label = destination.label()
    plan = _read(paths)

    def outcome(ok: bool, reason: str, files: list[FileStatus]) -> SendOutcome:
        return SendOutcome(label, ok, reason, tuple(files), time.monotonic() - started)

    if not plan.items:
        return outcome(True, "nothing to send", [])
    if len(plan.contexts) > MAX_CONTEXTS:
        return outcome(False, f"{len(plan.contexts)} kinds of file: more than one association allows", [])
    unsent = [FileStatus(item.path, None, item.problem or "not sent") for item in plan.items]
    if not plan.contexts:
        return outcome(False, "no readable DICOM file to send", unsent)
    ae = _new_ae(calling_ae, timeout)
    for sop_class, syntax in plan.contexts:
        ae.add_requested_context(sop_class, [syntax])
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except Exception as err:  # pynetdicom raises on a few socket errors too
        return outcome(False, f"cannot associate with {label}: {str(err).splitlines()[0]}", unsent)
    if not assoc.is_established:
        return outcome(False, _association_problem(assoc, destination, timeout), unsent)

    files: list[FileStatus] = []
    try:
        for item in plan.items:
            if item.problem:
                files.append(FileStatus(item.path, None, item.problem))
                continue
            if not assoc.is_established:
                files.append(FileStatus(item.path, None, "not sent: the association ended"))
                continue
            files.append(_store_one(assoc, item))
    finally:
        if assoc.is_established:
            assoc.release()
    failed = [item for item in files if not item.ok]
    if not failed:
        return outcome(True, f"sent {len(files)} file(s) to {label}", files)
    first = failed[0]
    return outcome(
        False, f"{len(failed)} of {len(files)} file(s) not stored by {label}: {first.detail}", files
    )


def _store_one(assoc: object, item: _Item) -> FileStatus:
    try:
        response = assoc.send_c_store(item.path)  # type: ignore[attr-defined]
    except ValueError as err:  # no accepted presentation context for this SOP class / syntax
        return FileStatus(item.path, None, f"refused by the peer: {str(err).splitlines()[0]}")
    except Exception as err:
        return FileStatus(item.path, None, f"send failed: {str(err).splitlines()[0]}")
    status = getattr(response, "Status", None)
    if status is None:
        return FileStatus(item.path, None, "no answer (timeout or association aborted)")
    return FileStatus(item.path, int(status), status_text(int(status)))


def echo(destination: DicomPeer, *, calling_ae: str = "MQI", timeout: float = 10) -> tuple[bool, str]:
    """C-ECHO ``destination``: (answered with success, one line for `mqi doctor`)."""
    label = destination.label()
    ae = _new_ae(calling_ae, timeout)
    ae.add_requested_context(VERIFICATION)
    started = time.monotonic()
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except Exception as err:
        return False, f"cannot associate with {label}: {str(err).splitlines()[0]}"
    if not assoc.is_established:
        return False, _association_problem(assoc, destination, timeout)
    try:
        response = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    status = getattr(response, "Status", None)
    if status is None:
        return False, f"{label}: no answer to C-ECHO"
    if int(status) != 0:
        return False, f"{label}: C-ECHO answered {status_text(int(status))}"
    return True, f"{label} answered C-ECHO in {1000 * (time.monotonic() - started):.0f} ms"


def next_attempt_delay(attempts_made: int, retry: SendRetry) -> float | None:
    """Seconds to wait before the next attempt after ``attempts_made`` failed ones; None: give up.

    The first retry waits ``first_delay_seconds``, each further one ``factor`` times longer,
    at most ``max_delay_seconds``; after ``max_attempts`` attempts there is none.
    """
    if attempts_made < 1:
        return 0.0
    if attempts_made >= retry.max_attempts:
        return None
    delay = retry.first_delay_seconds * retry.factor ** (attempts_made - 1)
    return min(delay, retry.max_delay_seconds)


def port_free(bind: str, port: int) -> tuple[bool, str]:
    """Whether the listener could bind ``bind:port`` now (for `mqi doctor`)."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listener binds
        try:
            sock.bind((bind, port))
        except OSError as err:
            return False, f"cannot listen on {bind}:{port}: {err.strerror or err}"
    return True, f"{bind}:{port} is free"
