"""Post-processing speed and memory: 4 beams on a 512x512x200 grid, against an I/O floor.

Run: .venv/bin/python bench/bench_post.py [--rows 512 --columns 512 --slices 200 --beams 4]

Builds a bundle whose engine output is 4 float64 volumes (419 MB each at full size) and
times ``postprocess_bundle`` in a fresh child process: wall time, the child's peak RSS
(``ru_maxrss`` from wait4) and tracemalloc's peak. The floor, measured in the same run on
the same files, is a child that reads every raw file with ``numpy.fromfile`` and writes
as many bytes as the RT Doses hold. Each is run twice, alternating; the best run counts.
Targets: time ratio <= 2; peak memory < 2 grids of float64.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mqi.bundle import (  # noqa: E402
    EXIT_CODE_NAME,
    Manifest,
    ManifestBeam,
    ManifestGrid,
    write_manifest,
)
from mqi.testing.synthetic import build_case  # noqa: E402

POST_CHILD = textwrap.dedent(
    """
    import json, sys, time, tracemalloc
    from pathlib import Path
    from mqi.post import postprocess_bundle
    tracemalloc.start()
    start = time.perf_counter()
    summary = postprocess_bundle(Path(sys.argv[1]))
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    assert summary["plan_status"] == "completed", summary
    print(json.dumps({"seconds": seconds, "traced_peak": peak}))
    """
)

FLOOR_CHILD = textwrap.dedent(
    """
    import json, sys, time, tracemalloc
    from pathlib import Path
    import numpy as np
    tracemalloc.start()
    raws = [Path(p) for p in sys.argv[2].split(",")]
    sizes = [int(s) for s in sys.argv[3].split(",")]
    out = Path(sys.argv[1])
    start = time.perf_counter()
    data = None
    for index, raw in enumerate(raws):
        data = np.fromfile(raw, dtype="<f8")
        with (out / f"floor{index}.bin").open("wb") as handle:
            handle.write(memoryview(data).cast("B")[: sizes[index]])
    with (out / "floor-plan.bin").open("wb") as handle:
        handle.write(memoryview(data).cast("B")[: sizes[-1]])
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "traced_peak": tracemalloc.get_traced_memory()[1]}))
    """
)

IDLE_CHILD = "import mqi.post, numpy, pydicom; print('{}')"


@dataclass(frozen=True)
class Run:
    seconds: float
    cpu_seconds: float  # user + system of the whole child
    max_rss: int  # bytes
    traced_peak: int  # bytes


def child(code: str, *args: str) -> Run:
    """Run Python ``code`` in a fresh interpreter; its own timing, ru_maxrss and tracemalloc."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    stdout = proc.stdout.read() if proc.stdout else b""
    stderr = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {stderr.decode()[-2000:]}")
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    cpu = usage.ru_utime + usage.ru_stime
    return Run(result.get("seconds", 0.0), cpu, usage.ru_maxrss * 1024, result.get("traced_peak", 0))


def write_volume(path: Path, shape: tuple[int, int, int], factor: float) -> None:
    """A smooth non-negative dose-like volume, written frame by frame."""
    nz, ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    frame = np.exp(-(((x - nx / 2) / (nx / 5)) ** 2 + ((y - ny / 2) / (ny / 4)) ** 2)) * factor
    with path.open("wb") as handle:
        for k in range(nz):
            (frame * (0.5 + k / nz)).astype("<f8").tofile(handle)


def build_bench_bundle(root: Path, rows: int, columns: int, slices: int, beams: int) -> Manifest:
    case = build_case(root / "case", beams=beams, layers=2, spots_per_layer=4, ct_shape=(8, 8, 4))
    input_dir = root / "bundle" / "input"
    input_dir.mkdir(parents=True)
    for path in [case.plan, *case.ct]:
        (input_dir / path.name).write_bytes(path.read_bytes())
    manifest = Manifest(
        case_uid="benchbenchbench0",
        plan_uid=case.plan_uid,
        fractions=1,
        family="upstream",
        scorer="Dose",
        output_format="raw",
        dose_type="EFFECTIVE",
        grid=ManifestGrid(
            rows=rows,
            columns=columns,
            slices=slices,
            spacing=(1.0, 1.0, 1.5),
            origin=(-(columns - 1) / 2, -(rows - 1) / 2, -(slices - 1) * 0.75),
            frame_of_reference_uid=case.frame_of_reference_uid,
            normalised_to_int16=False,
        ),
        beams=[
            ManifestBeam(array_index=i, number=i + 1, name=f"B{i + 1}", dir=f"beams/{i + 1}", meterset=1.0)
            for i in range(beams)
        ],
        plan_file=f"input/{case.plan.name}",
        files={},
    )
    bundle = root / "bundle"
    write_manifest(bundle, manifest)
    for beam in manifest.beams:
        out = bundle / beam.dir / "output"
        out.mkdir(parents=True)
        write_volume(out / f"{beam.name}_0_Dose.raw", (slices, rows, columns), 1.0 + 0.1 * beam.number)
        (bundle / beam.dir / EXIT_CODE_NAME).write_text("0\n")
        (bundle / beam.dir / "engine.out").write_text("Time taken by MC engine: 1234.5 milli-seconds\n")
    return manifest


def mb(value: float) -> str:
    return f"{value / 2**20:8.1f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--columns", type=int, default=512)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the bundle (default: $TMPDIR)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mqi-bench-post-", dir=args.dir) as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        manifest = build_bench_bundle(root, args.rows, args.columns, args.slices, args.beams)
        bundle = root / "bundle"
        grid_bytes = manifest.expected_output_bytes()
        print(
            f"grid {args.columns}x{args.rows}x{args.slices}, {args.beams} beams: "
            f"{mb(grid_bytes)} of float64 per beam (written in {time.perf_counter() - started:.1f} s)"
        )
        raws = [str(bundle / b.dir / "output" / f"{b.name}_0_Dose.raw") for b in manifest.beams]
        floor_dir = root / "floor"
        floor_dir.mkdir()
        posts, floors = [], []
        sizes: list[int] = []
        for _ in range(args.repeat):
            posts.append(child(POST_CHILD, str(bundle)))
            results = bundle / "results"
            names = [f"RD.beam{b.number}.dcm" for b in manifest.beams] + ["RD.plan.dcm"]
            sizes = [(results / name).stat().st_size for name in names]
            floors.append(child(FLOOR_CHILD, str(floor_dir), ",".join(raws), ",".join(map(str, sizes))))
        idle = child(IDLE_CHILD)
        post = min(posts, key=lambda run: run.seconds)
        floor = min(floors, key=lambda run: run.seconds)
        ratio = post.seconds / floor.seconds
        print(f"RT Dose bytes written: {mb(sum(sizes))} in {len(sizes)} files")
        print(f"{'':24}{'post':>12}{'floor':>12}")
        print(
            f"{'wall time':24}{post.seconds:11.2f}s{floor.seconds:11.2f}s   ratio {ratio:.2f} (target <= 2)"
        )
        print(
            f"{'CPU (user+sys, child)':24}{post.cpu_seconds:11.2f}s{floor.cpu_seconds:11.2f}s"
            f"   ratio {post.cpu_seconds / floor.cpu_seconds:.2f}"
        )
        print(f"{'peak RSS (ru_maxrss)':24}{mb(post.max_rss):>12}{mb(floor.max_rss):>12}")
        print(f"{'tracemalloc peak':24}{mb(post.traced_peak):>12}{mb(floor.traced_peak):>12}")
        print(f"{'interpreter + imports':24}{mb(idle.max_rss):>12}")
        above = post.max_rss - idle.max_rss
        print(
            f"post peak RSS above the interpreter: {mb(above).strip()} = {above / grid_bytes:.2f} grids"
            f" (target < 2 grids = {mb(2 * grid_bytes).strip()})"
        )
        print(
            "all runs (s): post "
            + ", ".join(f"{r.seconds:.2f}" for r in posts)
            + "; floor "
            + ", ".join(f"{r.seconds:.2f}" for r in floors)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
