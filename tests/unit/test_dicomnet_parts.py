"""The small pure parts of mqi.dicomnet: config, caller policy, retry schedule, spool files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydicom import dcmread

from mqi.config import DicomConfig, SendRetry, parse_config
from mqi.dicomnet.readiness import Arrival, assemble, describe
from mqi.dicomnet.scp import CallerPolicy
from mqi.dicomnet.scu import next_attempt_delay, port_free
from mqi.dicomnet.sop import status_text
from mqi.dicomnet.spool import Spool, SpoolFull
from mqi.errors import ConfigError
from mqi.testing.synthetic import build_case


def test_dicom_is_off_unless_configured_and_defaults_are_explicit() -> None:
    assert parse_config({}).dicom is None
    config = parse_config({"dicom": {"allowed": [{"ae": "TPS1", "host": "10.0.0.5"}]}}).dicom
    assert config is not None
    assert (config.ae_title, config.port, config.bind) == ("MQI", 11112, "127.0.0.1")
    assert config.spool_dir.is_absolute() and config.send_results_to == []


@pytest.mark.parametrize("title", ["", "   ", "A" * 17, "BAD\\AE"])
def test_bad_ae_titles_are_config_errors(title: str) -> None:
    with pytest.raises(ConfigError, match=r"dicom\.ae_title: .* is not an AE title"):
        parse_config({"dicom": {"ae_title": title}})


def test_destination_needs_a_port() -> None:
    with pytest.raises(ConfigError, match=r"dicom\.send_results_to\.0\.port"):
        parse_config({"dicom": {"send_results_to": [{"ae_title": "PACS", "host": "pacs"}]}})


def test_caller_policy_matches_title_and_address() -> None:
    policy = CallerPolicy.from_config(
        DicomConfig(
            allowed=[
                {"ae": "TPS1", "host": "10.0.0.5"},
                {"ae": "TPS2", "host": "10.1.0.0/16"},
                {"ae": "LOCAL", "host": "localhost"},
            ]
        ).allowed
    )
    assert policy.titles_for("10.0.0.5") == ["TPS1"]
    assert policy.titles_for("::ffff:10.0.0.5") == ["TPS1"]
    assert policy.titles_for("10.1.200.3") == ["TPS2"]
    assert policy.titles_for("10.0.0.6") == []
    assert "LOCAL" in policy.titles_for("127.0.0.1")
    assert policy.titles_for(None) == [] and policy.titles_for("not an address") == []


def test_unresolvable_allowed_host_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"cannot resolve host 'no-such-host\.invalid'"):
        CallerPolicy.from_config(DicomConfig(allowed=[{"ae": "X", "host": "no-such-host.invalid"}]).allowed)


def test_retry_schedule_doubles_up_to_the_cap_then_gives_up() -> None:
    retry = SendRetry(first_delay_seconds=60, factor=2, max_delay_seconds=300, max_attempts=6)
    delays = [next_attempt_delay(n, retry) for n in range(7)]
    assert delays == [0.0, 60, 120, 240, 300, 300, None]


def test_status_text() -> None:
    assert status_text(0xA700) == "0xA700 out of resources"
    assert status_text(0xA7F3) == "0xA7F3 out of resources"
    assert status_text(0x0000) == "0x0000 success"
    assert status_text(0xC123) == "0xC123 cannot understand"


def test_port_free_sees_a_listening_socket() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        ok, detail = port_free("127.0.0.1", port)
        assert not ok and detail == f"cannot listen on 127.0.0.1:{port}: Address already in use"
    assert port_free("127.0.0.1", port)[0]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    return build_case(tmp_path_factory.mktemp("synthetic"), ct_shape=(16, 16, 4))


def _store_all(spool: Spool, paths: list[Path]) -> None:
    for path in paths:
        spool.store(describe(dcmread(path, stop_before_pixels=True)), path.read_bytes())


def test_spool_stores_once_atomically_private_and_names_nothing(tmp_path: Path, synthetic) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    instance = describe(dcmread(synthetic.plan))
    data = synthetic.plan.read_bytes()
    path, new = spool.store(instance, data)
    assert new and path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again, new_again = spool.store(instance, b"something else")
    assert again == path and not new_again and path.read_bytes() == data
    names = "/".join(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert "MQI-SYNTH" not in names and "Synthetic" not in names and synthetic.plan_uid not in names
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_spool_below_free_space_threshold_refuses_and_keeps_what_it_has(tmp_path: Path, synthetic) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    first, _ = spool.store(describe(dcmread(synthetic.plan)), synthetic.plan.read_bytes())
    spool.min_free_bytes = 1 << 60
    with pytest.raises(SpoolFull, match="MB must stay free"):
        spool.store(describe(dcmread(synthetic.rtstruct)), synthetic.rtstruct.read_bytes())
    assert first.read_bytes() == synthetic.plan.read_bytes()
    assert [p.name for p in first.parent.iterdir()] == [first.name]


def test_spool_reload_rebuilds_the_index_and_removes_leftover_temporaries(tmp_path: Path, synthetic) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    paths = [synthetic.plan, synthetic.rtstruct, *synthetic.ct, *synthetic.doses]
    _store_all(spool, paths)
    stored = spool.instance_path(synthetic.study_uid, synthetic.plan_uid)
    leftover = stored.with_name(".half-written.123.tmp")
    leftover.write_bytes(b"partial")
    index = spool.load()
    assert not leftover.exists()
    assert len(index.instances) == len(paths)
    assert all(isinstance(a, Arrival) and a.association is None for a in index.arrivals.values())


def test_case_folder_holds_hard_links_named_by_hash(tmp_path: Path, synthetic) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    _store_all(spool, [synthetic.plan, synthetic.rtstruct, *synthetic.ct, *synthetic.doses])
    index = spool.load()
    plan = index.instances[synthetic.plan_uid]
    case = assemble(plan, index.instances.values())
    folder = spool.materialise(case)
    assert folder == spool.cases_dir / case.key
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == len(case.members)
    assert {name[:3] for name in files} == {"RP_", "RS_", "CT_", "RD_"}
    assert all(os.stat(folder / name).st_nlink == 2 for name in files)
    assert spool.materialise(case) == folder  # idempotent
    spool.mark_handed(case)
    assert spool.handed_keys() == {case.key}


def test_send_of_unreadable_files_reports_each_and_never_raises(tmp_path: Path) -> None:
    from mqi.config import DicomPeer
    from mqi.dicomnet import send_files

    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    peer = DicomPeer(ae_title="PACS", host="127.0.0.1", port=9)
    outcome = send_files(peer, [tmp_path / "missing.dcm", text])
    assert not outcome.ok and outcome.reason == "no readable DICOM file to send"
    assert outcome.files[0].detail == "no such file"
    assert outcome.files[1].detail.startswith("not a DICOM file with file meta")
    assert send_files(peer, []).reason == "nothing to send"
