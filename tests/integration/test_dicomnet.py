"""mqi's DICOM node against DCMTK's storescu, storescp and echoscu (Debian package dcmtk).

The listener runs in this process on 127.0.0.1 with a port from the free-port helper;
DCMTK's tools run as the TPS (sending) and as the PACS (receiving the results).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from mqi.config import DicomConfig, DicomPeer, parse_config
from mqi.dicomnet import StorageSCP, echo, read_receiving, send_files, serve
from mqi.intake import IntakeOptions, read_case
from mqi.testing.synthetic import build_case
from tests.helpers import APTG

pytestmark = pytest.mark.skipif(
    shutil.which("storescu") is None, reason="DCMTK is not installed: apt-get install -y dcmtk"
)

TPS = "TPS1"
APTG_INSTANCES = 66  # plan, structure set, 3 TPS doses, 61 CT images


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dataset_bytes(path: Path) -> bytes:
    """The file without preamble and file meta: what travelled over the network."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"
    (meta_length,) = struct.unpack("<I", data[140:144])
    return data[144 + meta_length :]


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm") if p.is_file())


def by_uid(paths: list[Path]) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


def storescu(port: int, *paths: Path, aet: str = TPS, aec: str = "MQI", extra: tuple[str, ...] = ()):
    args = ["storescu", "-R", "-aet", aet, "-aec", aec, *extra]
    if any(p.is_dir() for p in paths):
        args += ["+sd", "+r", "+sp", "*.dcm"]
    args += ["127.0.0.1", str(port), *map(str, paths)]
    # DCMTK leaves Nagle's algorithm on unless told; it only slows the tests down.
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)


class Listener:
    """A started StorageSCP recording every hand-over."""

    def __init__(self, tmp_path: Path, **settings: object) -> None:
        defaults: dict[str, object] = {
            "ae_title": "MQI",
            "port": free_port(),
            "allowed": [{"ae": TPS, "host": "127.0.0.1"}, {"ae": "ELSEWHERE", "host": "127.0.0.2"}],
            "spool_dir": tmp_path / "spool",
            "quiet_seconds": 3600,
            "min_free_mb": 0,
        }
        self.config = DicomConfig.model_validate({**defaults, **settings})
        self.handed: list[Path] = []
        self.scp = StorageSCP(self.config, self.handed.append)

    @property
    def port(self) -> int:
        return self.config.port

    def received(self) -> list[Path]:
        return sorted((self.config.spool_dir / "received").rglob("*.dcm"))


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    node = Listener(tmp_path)
    node.scp.start()
    yield node
    node.scp.stop()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("synthetic") / "case"
    subprocess.run(
        [sys.executable, "-m", "mqi.testing.synthetic", str(folder)], check=True, capture_output=True
    )
    return folder


@pytest.fixture
def aptg() -> Path:
    if not (APTG / "RP.ramped_2Gy_ver2_full.dcm").is_file():
        pytest.skip(f"the shared APTG case is not at {APTG}")
    return APTG


def assert_case_is(folder: Path, sources: list[Path]) -> None:
    """The case folder holds exactly the sent instances, each dataset byte-identical."""
    received = by_uid(dicom_files(folder))
    sent = by_uid(sources)
    assert received.keys() == sent.keys()
    for uid, path in sent.items():
        assert dataset_bytes(received[uid]) == dataset_bytes(path), path.name


def test_storescu_sends_the_aptg_case_which_is_handed_over_once(listener: Listener, aptg: Path) -> None:
    sent = storescu(listener.port, aptg)
    assert sent.returncode == 0, sent.stderr
    assert len(listener.received()) == APTG_INSTANCES
    [folder] = listener.scp.check()
    assert folder.parent == listener.config.spool_dir / "cases"
    assert_case_is(folder, dicom_files(aptg))
    assert "WTR" not in str(folder) and "test_LET" not in str(folder)
    # Intake reads the spooled case as it reads the original folder (which needs the
    # PatientID mismatch of this export allowed).
    options = IntakeOptions.from_config(parse_config({"intake": {"allow_patient_id_mismatch": True}}))
    result = read_case(folder, options)
    assert result.valid, result.errors
    assert result.case is not None and len(result.case.beams) == 2
    assert listener.scp.check() == []
    # The TPS sends the same case again: stored once, not a new case.
    again = storescu(listener.port, aptg)
    assert again.returncode == 0, again.stderr
    assert len(listener.received()) == APTG_INSTANCES
    assert listener.scp.check() == []
    assert listener.handed == [folder]


def test_synthetic_case_arrives_complete_and_passes_intake(listener: Listener, synthetic: Path) -> None:
    sent = storescu(listener.port, synthetic)
    assert sent.returncode == 0, sent.stderr
    [folder] = listener.scp.check()
    assert_case_is(folder, dicom_files(synthetic))
    result = read_case(folder, IntakeOptions.from_config(parse_config({})))
    assert result.valid, result.errors


def test_new_plan_version_is_a_new_case_sharing_the_ct(listener: Listener, tmp_path: Path) -> None:
    case = build_case(tmp_path / "v1", ct_shape=(16, 16, 4), seed="versions")
    assert storescu(listener.port, case.folder).returncode == 0
    [first] = listener.scp.check()
    plan = dcmread(case.plan)
    plan.SOPInstanceUID = plan.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    version2 = tmp_path / "v2" / "RP_plan_v2.dcm"
    version2.parent.mkdir()
    plan.save_as(version2)
    assert storescu(listener.port, version2).returncode == 0
    [second] = listener.scp.check()
    assert second != first
    plans = [p for p in second.iterdir() if p.name.startswith("RP_")]
    assert len(plans) == 1 and dataset_bytes(plans[0]) == dataset_bytes(version2)
    assert sum(p.name.startswith("CT_") for p in second.iterdir()) == len(case.ct)


def test_echoscu_gets_an_answer(listener: Listener) -> None:
    result = subprocess.run(
        ["echoscu", "-aet", TPS, "-aec", "MQI", "127.0.0.1", str(listener.port)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_unknown_calling_ae_is_rejected_at_association(listener: Listener, synthetic: Path) -> None:
    result = storescu(listener.port, synthetic, aet="STRANGER")
    assert result.returncode != 0
    assert "Rejected Permanent, Source: Service User" in result.stderr
    assert "Reason: Calling AE Title Not Recognized" in result.stderr
    # A known AE title calling from an address it is not allowed from is rejected alike.
    elsewhere = storescu(listener.port, synthetic, aet="ELSEWHERE")
    assert "Reason: Calling AE Title Not Recognized" in elsewhere.stderr
    wrong_called = storescu(listener.port, synthetic, aec="NOTMQI")
    assert "Reason: Called AE Title Not Recognized" in wrong_called.stderr
    assert listener.received() == []


def test_ct_only_study_never_becomes_a_case(tmp_path: Path, synthetic: Path) -> None:
    node = Listener(tmp_path, quiet_seconds=0)
    with node.scp:
        assert storescu(node.port, synthetic / "ct").returncode == 0
        time.sleep(0.05)
        assert node.scp.check() == [] and node.scp.decisions() == []
    assert len(node.received()) == len(list((synthetic / "ct").iterdir()))


def test_aborted_half_send_never_ready_then_a_complete_send_is(tmp_path: Path, synthetic: Path) -> None:
    node = Listener(tmp_path, quiet_seconds=0)
    ct = sorted((synthetic / "ct").iterdir())
    with node.scp:
        half = [synthetic / "RP_plan.dcm", synthetic / "RS_struct.dcm", *ct[: len(ct) // 2]]
        aborted = storescu(node.port, *half, extra=("--abort",))
        assert aborted.returncode == 0, aborted.stderr
        assert len(node.received()) == len(half)
        time.sleep(0.05)
        assert node.scp.check() == []
        [decision] = node.scp.decisions()
        waiting = f"waiting for {len(ct) - len(ct) // 2} of {len(ct)} CT images the structure set references"
        assert decision.why == waiting
        [shown] = read_receiving(node.config.spool_dir)  # what `mqi status` can show
        assert shown["why"] == waiting and shown["ready"] is False
        assert storescu(node.port, synthetic).returncode == 0
        [folder] = node.scp.check()
        assert_case_is(folder, dicom_files(synthetic))
        assert read_receiving(node.config.spool_dir) == []


def test_unsupported_sop_class_is_refused_at_negotiation(listener: Listener, tmp_path: Path) -> None:
    case = build_case(tmp_path / "case", ct_shape=(16, 16, 4))
    photon = dcmread(case.plan)
    photon.SOPClassUID = photon.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"
    path = tmp_path / "rtplan.dcm"
    photon.save_as(path)
    result = storescu(listener.port, path, extra=("-d",))
    assert result.returncode != 0
    assert "(Abstract Syntax Not Supported)" in result.stdout + result.stderr
    assert "No Acceptable Presentation Contexts" in result.stdout + result.stderr
    assert listener.received() == []


def _assert_intact(received: list[Path], sources: dict[str, Path]) -> None:
    for path in received:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(path) == dataset_bytes(sources[uid])


def test_full_spool_disk_answers_out_of_resources_and_loses_nothing(tmp_path: Path, aptg: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        node = Listener(tmp_path, spool_dir=mount / "spool", quiet_seconds=0)
        with node.scp:
            result = storescu(node.port, aptg, extra=("-v",))
            assert "Received Store Response (Refused: OutOfResources)" in result.stderr
            stored = node.received()
            assert 0 < len(stored) < APTG_INSTANCES
            assert not [p for p in (mount / "spool").rglob("*") if p.name.endswith(".tmp")]
            _assert_intact(stored, by_uid(dicom_files(aptg)))
            assert node.scp.check() == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_spool_below_its_free_space_threshold_refuses_and_keeps_earlier_cases(
    tmp_path: Path, synthetic: Path, aptg: Path
) -> None:
    first = Listener(tmp_path)
    with first.scp:
        assert storescu(first.port, synthetic).returncode == 0
    before = {p: p.read_bytes() for p in first.received()}
    crowded = Listener(tmp_path, min_free_mb=10**9, quiet_seconds=0)  # the same spool, now "full"
    with crowded.scp:
        result = storescu(crowded.port, aptg, extra=("-v",))
        assert "Received Store Response (Refused: OutOfResources)" in result.stderr
        assert {p: p.read_bytes() for p in crowded.received()} == before
        [folder] = crowded.scp.check()  # the synthetic case, received before the disk filled
        assert_case_is(folder, dicom_files(synthetic))


def test_serve_hands_each_case_over_once_even_across_a_restart(tmp_path: Path, synthetic: Path) -> None:
    node = Listener(tmp_path)
    handed: list[Path] = []
    for _ in range(2):  # the second run is a restart of `mqi listen` on the same spool
        stop = threading.Event()
        runner = threading.Thread(target=serve, args=(node.config, handed.append, stop), daemon=True)
        runner.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if storescu(node.port, synthetic).returncode == 0:
                break
            time.sleep(0.1)  # the listener is still starting
        while not handed and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        runner.join(timeout=10)
        assert not runner.is_alive()
    assert len(handed) == 1


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[DicomPeer, Path]]:
    out = tmp_path / "pacs"
    out.mkdir()
    port = free_port()
    process = subprocess.Popen(
        ["storescp", "-aet", "PACS", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    peer = DicomPeer(ae_title="PACS", host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while not echo(peer, timeout=2)[0]:
        assert process.poll() is None and time.monotonic() < deadline, "storescp did not start"
        time.sleep(0.1)
    yield peer, out
    process.terminate()
    process.wait(timeout=10)


def test_storescp_receives_byte_identical_rt_doses(
    storescp: tuple[DicomPeer, Path], aptg: Path, tmp_path
) -> None:
    peer, out = storescp
    doses = sorted(aptg.glob("RD*.dcm")) + build_case(tmp_path / "syn", ct_shape=(16, 16, 4)).doses
    outcome = send_files(peer, doses)
    assert outcome.ok, outcome.reason
    assert outcome.sent == len(doses) and all(f.status == 0 for f in outcome.files)
    received = by_uid(sorted(out.iterdir()))
    assert received.keys() == by_uid(doses).keys()
    for uid, path in by_uid(doses).items():
        assert dataset_bytes(received[uid]) == dataset_bytes(path)
        sent_meta, got_meta = dcmread(path).file_meta, dcmread(received[uid]).file_meta
        assert got_meta.TransferSyntaxUID == sent_meta.TransferSyntaxUID
        assert got_meta.MediaStorageSOPClassUID == sent_meta.MediaStorageSOPClassUID


def test_echo_reaches_storescp(storescp: tuple[DicomPeer, Path]) -> None:
    ok, detail = echo(storescp[0])
    assert ok and detail.startswith("PACS@127.0.0.1:") and "answered C-ECHO" in detail


def test_destination_down_gives_a_failure_outcome_with_a_reason(tmp_path: Path, aptg: Path) -> None:
    port = free_port()
    peer = DicomPeer(ae_title="PACS", host="127.0.0.1", port=port)
    doses = sorted(aptg.glob("RD*.dcm"))
    outcome = send_files(peer, doses, timeout=5)
    assert not outcome.ok and outcome.sent == 0
    assert outcome.reason == f"cannot connect to PACS@127.0.0.1:{port}: Connection refused"
    assert [f.status for f in outcome.files] == [None] * len(doses)
    assert echo(peer, timeout=5) == (False, f"cannot connect to PACS@127.0.0.1:{port}: Connection refused")


def test_destination_refusing_our_ae_title_gives_the_reason(listener: Listener, aptg: Path) -> None:
    # mqi's own listener as the destination: it knows only TPS1, not the sender's "MQI".
    peer = DicomPeer(ae_title="MQI", host="127.0.0.1", port=listener.port)
    outcome = send_files(peer, sorted(aptg.glob("RD*.dcm")))
    assert not outcome.ok
    assert (
        outcome.reason
        == f"MQI@127.0.0.1:{listener.port}: association rejected: Calling AE title not recognised"
    )


def test_failed_hand_over_is_retried_later_and_recorded_only_when_it_worked(
    tmp_path: Path, synthetic: Path
) -> None:
    now = [1000.0]
    calls: list[Path] = []

    def on_ready(folder: Path) -> None:
        calls.append(folder)
        if len(calls) == 1:
            raise RuntimeError("database is locked")

    config = Listener(tmp_path).config
    scp = StorageSCP(config, on_ready, clock=lambda: now[0])
    with scp:
        assert storescu(config.port, synthetic).returncode == 0
        assert scp.check() == [] and len(calls) == 1
        assert not list((config.spool_dir / "handed").iterdir())
        now[0] += 30
        assert scp.check() == [] and len(calls) == 1  # not before the retry delay
        now[0] += 31
        [folder] = scp.check()
        assert calls == [folder, folder]
        assert [p.name for p in (config.spool_dir / "handed").iterdir()] == [folder.name]
        assert scp.check() == []
