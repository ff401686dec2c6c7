"""The Storage SCP behind `mqi listen`: receive cases from the TPS into the spool, hand ready ones over.

Only the configured senders get an association: a calling AE title that is not listed
for the caller's address is rejected at A-ASSOCIATE (rejected-permanent, service-user,
"calling AE title not recognised"), as is a called AE title other than ours. Only RT
Ion Plan, CT Image, RT Structure Set, RT Dose (and Verification) presentation contexts
are accepted; any other abstract syntax is refused at negotiation.

Received instances go to the spool (`mqi.dicomnet.spool`); a ticking loop decides with
`mqi.dicomnet.readiness` which cases are ready and calls ``on_ready(case_folder)`` once
per case, in the loop's thread (never in an association's), and records the hand-over
in the spool so a restart does not hand the same case again.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.events import Event

from mqi.config import DicomCaller, DicomConfig
from mqi.dicomnet.readiness import Arrival, Decision, SpoolIndex, decide, describe
from mqi.dicomnet.sop import (
    ACCEPTED_TRANSFER_SYNTAXES,
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    STORAGE_CLASSES,
    SUCCESS,
    VERIFICATION,
)
from mqi.dicomnet.spool import Spool, SpoolFull
from mqi.errors import ConfigError, OperationalError

log = logging.getLogger(__name__)

# Larger PDUs than the DICOM default (16 kB) cost a Python receiver far fewer round trips.
MAX_PDU_BYTES = 1 << 20
HANDOVER_RETRY_SECONDS = 60.0
# Can never equal a calling AE title (backslash is not allowed in one), so it matches nobody.
_NOBODY = "\\"

OnReady = Callable[[Path], None]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(host: str) -> list[Network]:
    try:
        return [ipaddress.ip_network(host, strict=False)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as err:
        raise ConfigError(f"dicom.allowed: cannot resolve host {host!r}: {err.strerror or err}") from None
    return [ipaddress.ip_network(info[4][0]) for info in infos]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class CallerPolicy:
    """Which calling AE titles may associate from which addresses."""

    rules: tuple[tuple[str, tuple[Network, ...]], ...]

    @classmethod
    def from_config(cls, allowed: list[DicomCaller]) -> CallerPolicy:
        return cls(tuple((caller.ae, tuple(_networks(caller.host))) for caller in allowed))

    def titles_for(self, address: str | None) -> list[str]:
        ip = _address(address or "")
        if ip is None:
            return []
        return [ae for ae, networks in self.rules if any(ip in network for network in networks)]


class _GuardedAE(AE):  # type: ignore[misc]
    """An AE whose list of accepted calling AE titles depends on the caller's address.

    pynetdicom checks ``require_calling_aet`` while negotiating, in the association's own
    thread, and rejects with reason "calling AE title not recognised" on a mismatch.
    """

    def __init__(self, ae_title: str, policy: CallerPolicy) -> None:
        super().__init__(ae_title)
        self._policy = policy

    @property  # type: ignore[override]
    def require_calling_aet(self) -> list[str]:
        association = threading.current_thread()
        requestor = getattr(association, "requestor", None)
        address = getattr(requestor, "address", None)
        return self._policy.titles_for(address) or [_NOBODY]


class StorageSCP:
    """The listener and its spool. ``start()``, then ``check()`` regularly, then ``stop()``."""

    def __init__(
        self, config: DicomConfig, on_ready: OnReady, *, clock: Callable[[], float] = time.time
    ) -> None:
        if not config.allowed:
            raise ConfigError(
                "dicom.allowed lists no sender: add the TPS as {ae: TITLE, host: ADDRESS} to accept cases"
            )
        self.config = config
        self.on_ready = on_ready
        self.clock = clock
        self.spool = Spool(config.spool_dir, int(config.min_free_mb * 2**20))
        self.policy = CallerPolicy.from_config(config.allowed)
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._index = SpoolIndex()
        self._handed: set[str] = set()
        self._retry_after: dict[str, float] = {}
        self._serials = itertools.count(1)
        self._server = None
        self._ae = self._make_ae()

    def _make_ae(self) -> AE:
        ae = _GuardedAE(self.config.ae_title, self.policy)
        ae.require_called_aet = True
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.timeout_seconds
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, ACCEPTED_TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION, ACCEPTED_TRANSFER_SYNTAXES)
        return ae

    @property
    def address(self) -> tuple[str, int]:
        """Where the server listens (the real port when the config asked for port 0)."""
        if self._server is None:
            return self.config.bind, self.config.port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Load the spool and listen; OperationalError when the port is taken."""
        try:
            self.spool.prepare()
        except OSError as err:
            raise OperationalError(f"dicom.spool_dir {self.spool.root}: {err.strerror or err}") from None
        index = self.spool.load()
        with self._lock:
            self._index = index
            self._handed = self.spool.handed_keys()
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ACCEPTED, self._on_accepted),
        ]
        try:
            self._server = self._ae.start_server(
                (self.config.bind, self.config.port), block=False, evt_handlers=handlers
            )
        except OSError as err:
            raise OperationalError(
                f"dicom: cannot listen on {self.config.bind}:{self.config.port}: {err.strerror or err} "
                "(another `mqi listen` or DICOM node running? see `mqi doctor`)"
            ) from None
        host, port = self.address
        log.info("dicom: %s listening on %s:%d, spool %s", self.config.ae_title, host, port, self.spool.root)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> StorageSCP:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- association events (run in pynetdicom's association threads) ---

    def _serial(self, event: Event) -> int:
        association = event.assoc
        serial = getattr(association, "_mqi_serial", None)
        if serial is None:
            serial = next(self._serials)
            association._mqi_serial = serial
        return int(serial)

    def _on_accepted(self, event: Event) -> None:
        self._serial(event)
        log.info("dicom: association from %s (%s) accepted", _caller(event), event.assoc.requestor.address)

    def _on_rejected(self, event: Event) -> None:
        log.warning(
            "dicom: association from %s (%s) rejected: not an allowed caller, or not calling %s",
            _caller(event),
            event.assoc.requestor.address,
            self.config.ae_title,
        )

    def _on_aborted(self, event: Event) -> None:
        log.warning("dicom: association from %s aborted; what it sent waits for the rest", _caller(event))

    def _on_released(self, event: Event) -> None:
        with self._lock:
            self._index.released.add(self._serial(event))
        self.wake.set()

    def _on_store(self, event: Event) -> int:
        try:
            dataset = event.dataset
            instance = describe(dataset)
        except Exception as err:  # a peer's undecodable dataset must not kill the association
            log.warning("dicom: cannot decode a C-STORE dataset: %s", str(err).splitlines()[0])
            return CANNOT_UNDERSTAND
        expected_class = str(event.context.abstract_syntax)
        if instance.sop_class_uid != expected_class:
            return DATASET_DOES_NOT_MATCH_SOP_CLASS
        if not instance.sop_instance_uid or instance.sop_instance_uid != str(
            event.request.AffectedSOPInstanceUID
        ):
            return CANNOT_UNDERSTAND
        try:
            path, new = self.spool.store(instance, event.encoded_dataset())
        except SpoolFull as err:
            log.error("dicom: spool full, refusing %s: %s", STORAGE_CLASSES[expected_class], err)
            return OUT_OF_RESOURCES
        except OSError as err:
            log.error("dicom: cannot write to the spool: %s", err.strerror or err)
            return OUT_OF_RESOURCES
        with self._lock:
            self._index.add(replace(instance, path=path), Arrival(self.clock(), self._serial(event)))
        if not new:
            log.debug("dicom: %s received again, stored once", STORAGE_CLASSES[expected_class])
        return SUCCESS

    # --- readiness (the caller's thread) ---

    def decisions(self) -> list[Decision]:
        """Where every plan in the spool stands (for a status view)."""
        with self._lock:
            snapshot = SpoolIndex(
                dict(self._index.instances), dict(self._index.arrivals), set(self._index.released)
            )
            handed = set(self._handed)
        return decide(snapshot, self.clock(), self.config.quiet_seconds, handed)

    def check(self) -> list[Path]:
        """Hand every ready case over once; the case folders handed over now."""
        handed_now = []
        now = self.clock()
        decisions = self.decisions()
        for decision in decisions:
            key = decision.case.key
            if not decision.ready or self._retry_after.get(key, 0.0) > now:
                continue
            try:
                folder = self.spool.materialise(decision.case)
            except OSError as err:
                log.error("dicom: cannot build the folder of case %s, retrying: %s", key, err.strerror or err)
                self._retry_after[key] = now + HANDOVER_RETRY_SECONDS
                continue
            log.info("dicom: case %s ready (%s), %d instances", key, decision.why, len(decision.case.members))
            try:
                self.on_ready(folder)
            except Exception as err:  # the hand-over is retried; the listener keeps running
                log.error(
                    "dicom: handing over case %s failed, retrying in %.0f s: %s",
                    key,
                    HANDOVER_RETRY_SECONDS,
                    err,
                )
                self._retry_after[key] = now + HANDOVER_RETRY_SECONDS
                continue
            with self._lock:
                self._handed.add(key)
            self._retry_after.pop(key, None)
            try:
                self.spool.mark_handed(decision.case)
            except OSError as err:  # this run will not hand it again; a restart might
                log.error("dicom: cannot record the hand-over of case %s: %s", key, err.strerror or err)
            handed_now.append(folder)
        waiting = [d for d in decisions if d.case.key not in self._handed]
        try:
            self.spool.write_receiving(waiting)
        except OSError as err:
            log.debug("dicom: cannot write the receiving status: %s", err)
        return handed_now

    def wait(self, seconds: float) -> None:
        """Sleep until an association is released or ``seconds`` passed."""
        self.wake.wait(seconds)
        self.wake.clear()


def _caller(event: Event) -> str:
    return str(event.assoc.requestor.ae_title or "?").strip()


def serve(
    config: DicomConfig, on_ready: OnReady, stop: threading.Event, *, tick_seconds: float = 1.0
) -> None:
    """Run the listener until ``stop`` is set, calling ``on_ready(case_folder)`` once per ready case."""
    scp = StorageSCP(config, on_ready)
    scp.start()
    try:
        while not stop.is_set():
            scp.check()
            scp.wait(min(tick_seconds, max(config.quiet_seconds, 0.05)))
    finally:
        scp.stop()
