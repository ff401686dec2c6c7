"""How fast the command line starts: the imports of ``mqi --help``, and ``mqi status`` over
1,000 cases.

Run: .venv/bin/python bench/bench_startup.py   (no cluster needed)

Every figure is a fresh process, as a user or cron starts it:

- imports: ``python -X importtime -m mqi --help``, the sum of every module's own import
  time (the "self" column) -- target: median < 150 ms; printed beside the same sum for
  ``python -X importtime -c pass`` (the interpreter's own start: the floor);
- ``mqi status`` (the table, to a pipe) and ``mqi status --json`` on a store of 1,000 cases
  of 4 beams filled as submit and poll fill it -- target: median wall < 400 ms; printed
  beside the wall of ``python -c pass`` and of ``python -m mqi --help``.

Medians of 9 after 2 warm-ups. Exit 1 when a target is missed.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_web import fill

from mqi.config import parse_config
from mqi.store import Store

CASES = 1_000
REPS = 9
WARMUP = 2
IMPORT_TARGET_MS = 150.0
STATUS_TARGET_MS = 400.0
PYTHON = sys.executable


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return done


def import_ms(args: list[str], env: dict[str, str]) -> float:
    """The sum of every module's own import time that ``-X importtime`` reports, in ms."""
    stderr = run([PYTHON, "-X", "importtime", *args], env).stderr
    total_us = 0
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            own = line.split(":", 1)[1].split("|")[0].strip()
            if own.isdigit():
                total_us += int(own)
    return total_us / 1000


def median_of(measure) -> float:  # type: ignore[no-untyped-def]
    for _ in range(WARMUP):
        measure()
    return statistics.median(measure() for _ in range(REPS))


def wall_ms(args: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    run(args, env)
    return (time.perf_counter() - began) * 1000


def main() -> int:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0", "COLUMNS": "120"}
    with tempfile.TemporaryDirectory(prefix="mqi-bench-startup-") as tmp:
        root = Path(tmp)
        settings = {
            "state_dir": str(root / "state"),
            "results_dir": str(root / "results"),
            "watch_dir": str(root),
        }
        config_file = root / "mqi.yaml"
        config_file.write_text("".join(f"{key}: {value}\n" for key, value in settings.items()))
        with Store(parse_config(settings).db_path) as store:
            fill(store, CASES)

        floor_imports = median_of(lambda: import_ms(["-c", "pass"], env))
        help_imports = median_of(lambda: import_ms(["-m", "mqi", "--help"], env))
        floor_wall = median_of(lambda: wall_ms([PYTHON, "-c", "pass"], env))
        help_wall = median_of(lambda: wall_ms([PYTHON, "-m", "mqi", "--help"], env))
        status = [PYTHON, "-m", "mqi", "status", "--config", str(config_file)]
        rows = run(status, env).stdout.count("\n")
        status_wall = median_of(lambda: wall_ms(status, env))
        json_wall = median_of(lambda: wall_ms([*status, "--json"], env))

    load = os.getloadavg()[0]
    print(f"load average {load:.2f}; {CASES:,} cases, `mqi status` printed {rows:,} lines; medians of {REPS}")
    print(f"{'':34} {'median':>9}  {'floor':>28}  target")
    checks = [
        (
            "imports of `mqi --help`",
            help_imports,
            f"{floor_imports:6.1f} ms python -c pass",
            IMPORT_TARGET_MS,
        ),
        ("wall of `mqi --help`", help_wall, f"{floor_wall:6.1f} ms python -c pass", None),
        ("wall of `mqi status`", status_wall, f"{help_wall:6.1f} ms mqi --help", STATUS_TARGET_MS),
        ("wall of `mqi status --json`", json_wall, f"{help_wall:6.1f} ms mqi --help", STATUS_TARGET_MS),
    ]
    missed = []
    for name, figure, floor, target in checks:
        verdict = "" if target is None else f"< {target:.0f} ms " + ("ok" if figure < target else "MISSED")
        print(f"{name:34} {figure:6.1f} ms  {floor:>28}  {verdict}")
        if target is not None and figure >= target:
            missed.append(name)
    if missed:
        print("target missed: " + ", ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
