"""From the TPS to the doses back, by DICOM only: DCMTK's storescu sends a case to `mqi listen`,
the case is submitted once on the dev cluster and completes, and DCMTK's storescp receives the
RT Dose files byte-identical to the delivered ones. A destination that is down is retried and
shown, while the case stays completed."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from mqi.testing.synthetic import build_case
from tests.helpers import APTG, cancel_case_jobs, run_mqi
from tests.integration.test_dicomnet import by_uid, dataset_bytes, free_port, storescu

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        shutil.which("storescu") is None, reason="DCMTK is not installed (apt-get install dcmtk)"
    ),
]


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    out = tmp_path / "pacs"
    out.mkdir()
    port = free_port()
    process = subprocess.Popen(
        ["storescp", "-aet", "PACS", "-od", str(out), str(port)], stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 10
    while subprocess.run(["echoscu", "-aec", "PACS", "127.0.0.1", str(port)], capture_output=True).returncode:
        assert process.poll() is None and time.monotonic() < deadline, "storescp did not start"
        time.sleep(0.1)
    yield port, out
    process.terminate()
    process.wait(timeout=10)


def test_cases_sent_by_storescu_come_back_to_storescp(
    make_config: Callable[..., Path], tmp_path: Path, pacs: tuple[int, Path]
) -> None:
    pacs_port, received = pacs
    listen_port, down_port = free_port(), free_port()
    data = yaml.safe_load(make_config().read_text())
    data["intake"] = {"allow_patient_id_mismatch": True}  # the shared APTG objects carry two patient ids
    data["dicom"] = {
        "ae_title": "MQI",
        "port": listen_port,
        "allowed": [{"ae": "TPS1", "host": "127.0.0.1"}],
        "spool_dir": str(tmp_path / "spool"),
        "quiet_seconds": 2,
        "min_free_mb": 0,
        "send_results_to": [
            {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port},
            {"ae_title": "DOWN", "host": "127.0.0.1", "port": down_port},
        ],
        # Attempts every 0.5-1 s while the APTG case runs (its first post job may compile the QA
        # kernels): enough of them that the down destination is still being retried at the end.
        "send_retry": {"first_delay_seconds": 0.5, "factor": 1, "max_delay_seconds": 1, "max_attempts": 1000},
    }
    config = tmp_path / "mqi-dicom.yaml"
    config.write_text(yaml.safe_dump(data))
    synthetic = tmp_path / "tps-export"
    build_case(synthetic, ct_shape=(24, 24, 12), layers=2, spots_per_layer=9)
    listener = subprocess.Popen(
        [sys.executable, "-m", "mqi", "listen", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    case_ids: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(
            ["echoscu", "-aet", "TPS1", "-aec", "MQI", "127.0.0.1", str(listen_port)], capture_output=True
        ).returncode:
            assert listener.poll() is None and time.monotonic() < deadline, "mqi listen did not start"
            time.sleep(0.2)
        for folder in (synthetic, APTG):
            sent = storescu(listen_port, folder)
            assert sent.returncode == 0, sent.stderr
        sent_again = storescu(listen_port, synthetic)  # the TPS sends the same plan again
        assert sent_again.returncode == 0, sent_again.stderr
        deadline = time.monotonic() + 120
        while len(case_ids) < 2:
            assert time.monotonic() < deadline, "the received cases were not submitted"
            listed = json.loads(run_mqi("status", "--config", str(config), "--json").stdout)
            case_ids = [case["case_id"] for case in listed]
            time.sleep(1)
        polled = run_mqi("poll", "--wait", "--timeout", "300", "--config", str(config), timeout=400)
        assert polled.returncode == 0, polled.stderr
        for _ in range(20):  # the down destination is retried on later cycles
            run_mqi("poll", "--config", str(config))
            time.sleep(0.5)
        cases = json.loads(run_mqi("status", "--config", str(config), "--json").stdout)
    finally:
        listener.send_signal(signal.SIGTERM)
        output, _ = listener.communicate(timeout=30)
        for case_id in case_ids:
            uid = json.loads(run_mqi("status", case_id, "--config", str(config), "--json").stdout)["case_uid"]
            cancel_case_jobs(uid)
    assert listener.returncode == 0, output
    assert len(cases) == 2, "each plan submitted once; the re-send is not a new case"
    delivered: list[Path] = []
    for case in cases:
        assert case["status"] == "completed", case
        assert len(case["jobs"]) == 3, "one chain"
        sends = {s["destination"]: s for s in case["sends"]}
        assert sends[f"PACS@127.0.0.1:{pacs_port}"]["state"] == "sent"
        down = sends[f"DOWN@127.0.0.1:{down_port}"]
        assert down["state"] == "retrying" and down["attempts"] >= 2 and "refused" in down["reason"].lower()
        delivered += sorted(Path(case["results_dir"]).glob("RD.*.dcm"))
    assert len(delivered) == 2 * 3
    got = by_uid(sorted(p for p in received.iterdir() if p.is_file()))
    assert got.keys() == by_uid(delivered).keys()
    for uid, path in by_uid(delivered).items():
        assert dataset_bytes(got[uid]) == dataset_bytes(path), path.name
    assert "Traceback" not in output
