"""Receiving a case by DICOM: mqi's Storage SCP against DCMTK's own storescp, same send.

Run: .venv/bin/python bench/bench_dicomnet.py [--runs N]

DCMTK's storescu sends the shared APTG case (66 instances, 10 MB) to each receiver in
turn, in alternating order, a fresh output folder each time; the figure is storescu's
wall time (until every instance is acknowledged), median over the runs. mqi's listener
runs in this process with its real settings (atomic writes with fsync, spool index);
storescp writes plain files without fsync.

Two network settings are measured, because DCMTK's tools leave Nagle's algorithm on
unless the environment says ``TCP_NODELAY=1``:

- ``as shipped``: storescu and storescp with DCMTK's defaults. This is the gate:
  mqi's median must be at most 1.5 times storescp's (exit 1 otherwise).
- ``TCP_NODELAY=1`` for storescu and storescp: shown for information. Here storescp
  is limited by nothing but the copy, and the figure shows mqi's own per-instance cost.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mqi.config import DicomConfig, DicomPeer
from mqi.dicomnet import StorageSCP, echo

ROOT = Path(__file__).resolve().parents[1]
APTG = ROOT.parent / "shared" / "data" / "aptg-plan03"
APTG_INSTANCES = 66
TARGET_RATIO = 1.5
_MQI_CPU: list[float] = []  # the listener's CPU seconds per send (this process)
SCENARIOS = {"as shipped": {}, "TCP_NODELAY=1": {"TCP_NODELAY": "1"}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    return {**env, **extra}


def _send(port: int, called: str, extra_env: dict[str, str]) -> float:
    args = ["storescu", "-R", "-aet", "TPS1", "-aec", called, "+sd", "+r", "+sp", "*.dcm"]
    started = time.perf_counter()
    result = subprocess.run(
        [*args, "127.0.0.1", str(port), str(APTG)], capture_output=True, text=True, env=_env(extra_env)
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"storescu failed ({result.returncode}): {result.stderr.strip()[-300:]}")
    return seconds


def _storescp_run(work: Path, extra_env: dict[str, str]) -> float:
    out = work / f"storescp-{time.monotonic_ns()}"
    out.mkdir()
    port = _free_port()
    process = subprocess.Popen(
        ["storescp", "-aet", "DCMTK", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(extra_env),
    )
    try:
        peer = DicomPeer(ae_title="DCMTK", host="127.0.0.1", port=port)
        deadline = time.monotonic() + 10
        while not echo(peer, timeout=2)[0]:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("storescp did not start")
            time.sleep(0.05)
        seconds = _send(port, "DCMTK", extra_env)
    finally:
        process.terminate()
        process.wait(timeout=10)
    received = len(list(out.iterdir()))
    if received != APTG_INSTANCES:
        raise SystemExit(f"storescp stored {received} of {APTG_INSTANCES} instances")
    shutil.rmtree(out)
    return seconds


def _mqi_run(work: Path, extra_env: dict[str, str]) -> float:
    spool = work / f"spool-{time.monotonic_ns()}"
    config = DicomConfig(
        port=_free_port(),
        allowed=[{"ae": "TPS1", "host": "127.0.0.1"}],
        spool_dir=spool,
        min_free_mb=0,
        quiet_seconds=3600,
    )
    handed: list[Path] = []
    with StorageSCP(config, handed.append) as scp:
        cpu = time.process_time()
        seconds = _send(config.port, config.ae_title, extra_env)
        _MQI_CPU.append(time.process_time() - cpu)
        scp.check()
    received = len(list((spool / "received").rglob("*.dcm")))
    if received != APTG_INSTANCES or len(handed) != 1:
        raise SystemExit(f"mqi stored {received} of {APTG_INSTANCES} instances, handed {len(handed)} case(s)")
    shutil.rmtree(spool)
    return seconds


def _measure(runs: int, extra_env: dict[str, str], work: Path) -> tuple[list[float], list[float]]:
    receivers: list[tuple[str, Callable[[Path, dict[str, str]], float]]] = [
        ("storescp", _storescp_run),
        ("mqi", _mqi_run),
    ]
    times: dict[str, list[float]] = {"storescp": [], "mqi": []}
    for run in range(runs):
        order = receivers if run % 2 == 0 else receivers[::-1]
        for name, receive in order:
            times[name].append(receive(work, extra_env))
    return times["storescp"], times["mqi"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions per receiver and setting")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("storescu", "storescp") if shutil.which(tool) is None]
    if missing:
        print(f"needs DCMTK ({', '.join(missing)} not found): apt-get install -y dcmtk", file=sys.stderr)
        return 2
    if not (APTG / "RP.ramped_2Gy_ver2_full.dcm").is_file():
        print(f"the shared APTG case is not at {APTG}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in APTG.rglob("*.dcm")) / 2**20
    print(f"storescu -> receiver, APTG case: {APTG_INSTANCES} instances, {size:.1f} MB, {args.runs} runs")
    ratios = {}
    with tempfile.TemporaryDirectory(prefix="mqi-bench-dicomnet-") as tmp:
        for scenario, extra_env in SCENARIOS.items():
            _MQI_CPU.clear()
            dcmtk, mqi = _measure(args.runs, extra_env, Path(tmp))
            ratio = statistics.median(mqi) / statistics.median(dcmtk)
            ratios[scenario] = ratio
            print(f"\n{scenario}:")
            print(f"  storescp  median {1000 * statistics.median(dcmtk):7.0f} ms   runs {_ms(dcmtk)}")
            print(f"  mqi       median {1000 * statistics.median(mqi):7.0f} ms   runs {_ms(mqi)}")
            print(f"  mqi CPU   median {1000 * statistics.median(_MQI_CPU):7.0f} ms   (listener threads)")
            print(f"  ratio mqi / storescp: {ratio:.2f}")
    gate = ratios["as shipped"]
    verdict = "met" if gate <= TARGET_RATIO else "MISSED"
    print(f"\ntarget (as shipped): ratio <= {TARGET_RATIO}: {verdict} ({gate:.2f})")
    return 0 if gate <= TARGET_RATIO else 1


def _ms(values: list[float]) -> str:
    return " ".join(f"{1000 * v:.0f}" for v in values)


if __name__ == "__main__":
    raise SystemExit(main())
