"""Intake speed on a large case, against a bare pydicom header-reading loop.

Run: .venv/bin/python bench/bench_intake.py

Builds a 4-beam plan with 50,000 spots and a 300-slice 512x512 CT in a temporary
folder, then times `read_case` and a loop of ``pydicom.dcmread(f, stop_before_pixels=True)``
over the same files (median of several alternating runs) and prints the ratio of the
wall times (the target: at most 1.5) and, as a figure less disturbed by other load on
the machine, the ratio of CPU times.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom

from mqi.intake import IntakeOptions, read_case
from mqi.testing.synthetic import build_case

BEAMS = 4
LAYERS = 25
SPOTS_PER_LAYER = 500  # 4 x 25 x 500 = 50,000 spots
CT_SHAPE = (512, 512, 300)
SPACING = (1.0, 1.0, 1.0)
RUNS = 9
TARGET_RATIO = 1.5


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _bare_loop(files: list[Path]) -> None:
    for path in files:
        pydicom.dcmread(path, stop_before_pixels=True)


def _time(action: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mqi-bench-") as tmp:
        folder = Path(tmp) / "bench-case"
        build_seconds, _ = _time(
            lambda: build_case(
                folder,
                beams=BEAMS,
                layers=LAYERS,
                spots_per_layer=SPOTS_PER_LAYER,
                ct_shape=CT_SHAPE,
                spacing=SPACING,
            )
        )
        files = _files(folder)
        options = IntakeOptions(read_structure=True)
        result = read_case(folder, options)
        if not result.valid:
            print("the benchmark case is invalid:", [p.message for p in result.errors])
            return 1
        spots = sum(beam.spots for beam in result.beams)
        print(
            f"case: {len(result.beams)} beams, {spots:,} spots, {result.ct.slices if result.ct else 0} "
            f"CT slices, {len(files)} files (built in {build_seconds:.1f} s)"
        )
        _bare_loop(files)  # warm the page cache for both contenders
        intake, bare = [], []
        for _ in range(RUNS):
            intake.append(_time(lambda: read_case(folder, options)))
            bare.append(_time(lambda: _bare_loop(files)))
    wall = _report("wall", [t[0] for t in intake], [t[0] for t in bare])
    _report("CPU", [t[1] for t in intake], [t[1] for t in bare])
    print(f"target: wall ratio <= {TARGET_RATIO}")
    return 0 if wall <= TARGET_RATIO else 1


def _report(kind: str, intake: list[float], bare: list[float]) -> float:
    intake_median, bare_median = statistics.median(intake), statistics.median(bare)
    ratio = intake_median / bare_median
    print(
        f"{kind:>4}: read_case {intake_median * 1000:7.1f} ms, bare dcmread loop "
        f"{bare_median * 1000:7.1f} ms (medians of {RUNS}), ratio {ratio:.2f}"
    )
    return ratio


if __name__ == "__main__":
    sys.exit(main())
