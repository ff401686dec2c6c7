"""Render speed: the shared APTG case, and a large synthetic case with an unsigned CT.

Run: .venv/bin/python bench/bench_render.py

Prints the median wall time of `render_bundle` (CT copy or int16 rewrite, sha256 of
every file, templates) over several runs. The APTG case is read with the real intake
(the plan's PatientID differs from the CT's in that export, so the mismatch is allowed).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from mqi.config import parse_config
from mqi.intake import IntakeOptions, read_case
from mqi.intake.model import Case
from mqi.render import render_bundle
from mqi.testing.synthetic import build_case

APTG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aptg-plan03"
LARGE = {"beams": 4, "layers": 25, "spots_per_layer": 500, "ct_shape": (512, 512, 300)}
RUNS = 5


def _case(folder: Path) -> Case:
    result = read_case(folder, IntakeOptions(allow_patient_id_mismatch=True))
    if result.case is None:
        raise SystemExit(f"{folder}: intake refused the case: {result.errors}")
    return result.case


def _median_seconds(case: Case, out: Path, runs: int) -> float:
    config = parse_config({}, "<bench>")
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        render_bundle(case, config, out)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mqi-bench-render-") as tmp:
        root = Path(tmp)
        if APTG.is_dir():
            seconds = _median_seconds(_case(APTG), root / "aptg", RUNS)
            print(f"APTG plan 03 (2 beams, 61 CT slices 128x128, unsigned): {seconds * 1000:.0f} ms")
        else:
            print(f"skipped APTG: {APTG} is absent")
        build_case(root / "large", spacing=(1.0, 1.0, 1.0), **LARGE)
        seconds = _median_seconds(_case(root / "large"), root / "large-bundle", 3)
        print(f"synthetic 4 beams, 300 CT slices 512x512, unsigned: {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
