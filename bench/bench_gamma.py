"""Gamma speed, memory and agreement: mqi.qa against pymedphys in the same run.

Run: .venv/bin/python bench/bench_gamma.py [--skip-pymedphys] [--json]

1. APTG (107x107x110 at 2 mm, ../shared/data/aptg-plan03): the TPS plan dose as reference,
   the beam sum shifted +2 mm in x and scaled +3% as evaluated; global gamma, 10% cutoff,
   3%/3 mm and 2%/2 mm. mqi.qa and pymedphys 0.41 (max_gamma 2) each in a fresh child
   process: wall time of the gamma call alone, peak RSS of the child.
   Targets: >= 50x faster than pymedphys at the same pass rate, pass rates within 0.1
   points, peak <= 0.5 GB. "The same pass rate" sets pymedphys' interp_fraction (its search
   step is about DTA / interp_fraction; mqi's is exact at DTA/40): its default 10 at
   3%/3 mm, where it already reads within 0.1 points; 20 at 2%/2 mm, where 10 reads about
   0.3 points low (68.620% against a converged 68.9%: bench/README.md). Each row prints the
   interp_fraction used and why; the speed-up is against that run. pymedphys at 10 on
   2%/2 mm is not rerun (it would add 2.5 minutes or more); its figure is in a footnote.
2. A 200^3 pair at 2 mm (a 16 x 16 x 14 cm field with erf edges and a 30-50% entrance
   plateau; evaluated moved 1.5 mm in x and y, +2% and 1% Gaussian noise like an MC dose):
   mqi.qa alone (pymedphys takes minutes here). Targets: <= 2 s at 3%/3 mm, <= 5 s at 2%/2 mm.

Every child first runs the gamma once on a small grid so compilation (numba, cached on
disk) is not timed; mqi.qa's time is the median of five calls (pymedphys: one call), with
the CPU seconds of the child beside it and their ratio (less sensitive to other work on a
shared machine; informative, the target is on wall time).
Each figure is printed next to its target or peer; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APTG = ROOT.parent / "shared" / "data" / "aptg-plan03"
CRITERIA = (("3%/3mm/10%", 3.0, 3.0), ("2%/2mm/10%", 2.0, 2.0))
SPEEDUP_TARGET = 50.0
AGREEMENT_POINTS = 0.1
PEAK_GB_TARGET = 0.5
LARGE_TARGETS_S = {"3%/3mm/10%": 2.0, "2%/2mm/10%": 5.0}
# pymedphys' interp_fraction per criterion, chosen so that it reads the pass rate mqi reads
# (within AGREEMENT_POINTS), and the reason printed beside the row.
PEER_INTERP = {
    "3%/3mm/10%": (10, "pymedphys' default; already within 0.1 points"),
    "2%/2mm/10%": (20, "its default 10, about DTA/10, reads 0.3 points low"),
}
FOOTNOTE = (
    "pymedphys at its default interp_fraction 10 on 2%/2 mm, not rerun here (bench/README.md,"
    " 2026-11-30, load 2.4): 68.620% in 149.1 s, 0.297 points below mqi's 68.917%; mqi's own"
    " kernel reads 68.644% at DTA/10, 68.901% at DTA/20, 68.917% at DTA/40."
)

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    sys.path.insert(0, {root!r})
    from mqi.qa.grids import DoseGrid, read_dose, sum_doses
    from mqi.qa.gamma import gamma_index, parse_criterion

    def aptg():
        import glob
        plan = read_dose(glob.glob({aptg!r} + "/RD*.3000.*.dcm")[0])
        beams = sum_doses([read_dose(p) for p in sorted(glob.glob({aptg!r} + "/RD*.[45]000.*.dcm"))])
        return plan, beams.shifted(dx=2.0).scaled(1.03)

    def large():
        n, step = 200, 2.0
        axis = (np.arange(n) - (n - 1) / 2) * step
        from scipy.special import erf
        def box(a, half, sigma=4.0):
            return 0.5 * (erf((a + half) / (sigma * 2**0.5)) - erf((a - half) / (sigma * 2**0.5)))
        def dose(shift):
            x = axis[None, None, :] - shift
            lateral = box(axis[None, :, None] - shift, 80.0) * box(axis[:, None, None], 80.0)
            depth = np.where(x < -70.0, 0.3 + 0.2 * (x + 200.0) / 130.0, 1.0) * box(x + 65.0, 135.0)
            return 2.0 * lateral * depth
        reference = DoseGrid(dose(0.0), axis, axis, axis)
        rng = np.random.default_rng(7)
        noisy = dose(1.5) * 1.02 * (1 + 0.01 * rng.standard_normal((n, n, n)))
        return reference, DoseGrid(noisy, axis, axis, axis)

    which, text, tool, interp_fraction = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    reference, evaluated = aptg() if which == "aptg" else large()
    criterion = parse_criterion(text)
    if tool == "mqi":
        axis = np.arange(8) * 2.0
        small = DoseGrid(np.random.default_rng(1).random((8, 8, 8)), axis, axis, axis)
        gamma_index(small, small, criterion)  # warm the compiled kernels
        times, cpu = [], []
        for _ in range(5):
            started, used = time.perf_counter(), time.process_time()
            result = gamma_index(reference, evaluated, criterion)
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - used)
        seconds, cpu_seconds = float(np.median(times)), float(np.median(cpu))
        rate, voxels = result.pass_rate, result.evaluated_voxels
    else:
        import pymedphys
        started, used = time.perf_counter(), time.process_time()
        gamma = pymedphys.gamma(
            (reference.z, reference.y, reference.x), reference.values,
            (evaluated.z, evaluated.y, evaluated.x), evaluated.values,
            dose_percent_threshold=criterion.dose_percent, distance_mm_threshold=criterion.distance_mm,
            lower_percent_dose_cutoff=criterion.cutoff_percent, interp_fraction=interp_fraction, max_gamma=2,
            global_normalisation=float(reference.values.max()), quiet=True,
        )
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - used
        valid = ~np.isnan(gamma)
        rate, voxels = 100.0 * np.count_nonzero(gamma[valid] <= 1) / np.count_nonzero(valid), int(valid.sum())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({{"seconds": seconds, "cpu_seconds": cpu_seconds, "pass_rate": rate, "voxels": voxels,
                      "peak_gb": peak}}))
    """
)


def run_child(which: str, criterion: str, tool: str, interp_fraction: int = 0) -> dict[str, float]:
    code = CHILD.format(root=str(ROOT), aptg=str(APTG))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run(
        [sys.executable, "-c", code, which, criterion, tool, str(interp_fraction)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{tool} on {which} {criterion} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-pymedphys", action="store_true", help="only mqi.qa (no speed-up figure)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not APTG.is_dir():
        print(f"APTG data not found at {APTG}", file=sys.stderr)
        return 2
    rows, missed = [], []
    started = time.perf_counter()
    print(f"load average at the start: {_load()}", flush=True)
    for text, _, _ in CRITERIA:
        ours = run_child("aptg", text, "mqi")
        row = {"case": "aptg", "criterion": text, "mqi": ours}
        if ours["peak_gb"] > PEAK_GB_TARGET:
            missed.append(f"aptg {text}: peak {ours['peak_gb']:.2f} GB > {PEAK_GB_TARGET} GB")
        if not args.skip_pymedphys:
            interp_fraction, why = PEER_INTERP[text]
            theirs = run_child("aptg", text, "pymedphys", interp_fraction)
            row["pymedphys"] = theirs | {"interp_fraction": interp_fraction, "why": why}
            row["speedup"] = theirs["seconds"] / ours["seconds"]
            row["difference_points"] = ours["pass_rate"] - theirs["pass_rate"]
            if row["speedup"] < SPEEDUP_TARGET:
                missed.append(f"aptg {text}: {row['speedup']:.0f}x faster < {SPEEDUP_TARGET:.0f}x")
            if abs(row["difference_points"]) > AGREEMENT_POINTS:
                missed.append(f"aptg {text}: {row['difference_points']:+.2f} points from pymedphys")
        rows.append(row)
        print(_line(row), flush=True)
    for text, _, _ in CRITERIA:
        ours = run_child("large", text, "mqi")
        row = {"case": "200^3", "criterion": text, "mqi": ours}
        if ours["seconds"] > LARGE_TARGETS_S[text]:
            missed.append(f"200^3 {text}: {ours['seconds']:.2f} s > {LARGE_TARGETS_S[text]} s")
        rows.append(row)
        print(_line(row), flush=True)
    if args.json:
        print(json.dumps({"rows": rows, "missed": missed, "cpus": os.cpu_count()}, indent=2))
    if not args.skip_pymedphys:
        print(f"note: {FOOTNOTE}")
    for item in missed:
        print(f"MISSED: {item}")
    print(f"load average at the end: {_load()}")
    print(f"bench wall time: {time.perf_counter() - started:.0f} s")
    return 1 if missed else 0


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cpus"


def _line(row: dict) -> str:
    ours = row["mqi"]
    text = (
        f"{row['case']:6} {row['criterion']:11} mqi {ours['seconds']:6.2f} s"
        f" (cpu {ours['cpu_seconds']:6.2f} s) {ours['pass_rate']:8.3f}% peak {ours['peak_gb']:.2f} GB"
    )
    if row["case"] == "aptg":
        text += f" (target <= {PEAK_GB_TARGET} GB)"
    else:
        text += f" | target <= {LARGE_TARGETS_S[row['criterion']]:.0f} s ({ours['voxels']} voxels)"
    if "pymedphys" in row:
        theirs = row["pymedphys"]
        text += (
            f" | pymedphys interp_fraction {theirs['interp_fraction']} ({theirs['why']})"
            f" {theirs['seconds']:6.1f} s {theirs['pass_rate']:8.3f}% peak {theirs['peak_gb']:.2f} GB"
            f" | {row['speedup']:.0f}x faster (target >= {SPEEDUP_TARGET:.0f}x;"
            f" cpu {theirs['cpu_seconds'] / ours['cpu_seconds']:.0f}x),"
            f" {row['difference_points']:+.3f} points (target within {AGREEMENT_POINTS})"
        )
    return text


if __name__ == "__main__":
    raise SystemExit(main())
