"""A corpus of corrupted variants of a synthetic case (issue 11): every invalid value,
broken pixel data per transfer syntax, truncations at random offsets and byte flips, all
from a fixed seed. Every variant MOQUI could not run is rejected; nothing crashes: intake
never ends in INTAKE_FAILED, and whatever intake accepts renders without an error.

Most variants run in-process (read_case + render_bundle); a handful through the CLI.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mqi.config import parse_config
from mqi.intake import IntakeOptions, read_case
from mqi.render import render_bundle
from mqi.testing.synthetic import SyntheticCase
from tests.unit.corrupt_cases import REJECT, VALID, Breaker, variants
from tests.unit.intake_fixtures import pristine_fixture, relocate  # noqa: F401 (fixture)

SEED = 20261130
TRUNCATIONS = 36
FLIPS = 30
MAY_PASS = "MAY_PASS"  # damage that can leave a usable case (a flip inside pixel values)


@dataclass(frozen=True)
class Corrupt:
    name: str
    expect: str  # a code, REJECT, VALID or MAY_PASS
    breaker: Breaker
    read_structure: bool = False


def _files(case: SyntheticCase) -> list[Path]:
    return sorted([case.plan, case.rtstruct, *case.ct, *case.doses])


def _truncate(pick: int, fraction: float) -> Breaker:
    def breaker(case: SyntheticCase) -> None:
        files = _files(case)
        path = files[pick % len(files)]
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])

    return breaker


def _flip(pick: int, offsets: list[float], header_only: bool) -> Breaker:
    def breaker(case: SyntheticCase) -> None:
        files = _files(case)
        path = files[pick % len(files)]
        data = bytearray(path.read_bytes())
        span = min(len(data), 1500) if header_only else len(data)
        for where in offsets:
            data[int(where * span)] ^= 0xFF
        path.write_bytes(bytes(data))

    return breaker


def _truncation_expectation(pick: int, pristine: SyntheticCase) -> str:
    """A CT slice or RT Dose cut anywhere loses pixel data: it must be rejected. A cut plan
    or structure set may still be complete enough (a cut after the last element used)."""
    path = _files(pristine)[pick % len(_files(pristine))]
    return REJECT if path in (*pristine.ct, *pristine.doses) else MAY_PASS


def corpus(pristine: SyntheticCase) -> list[Corrupt]:
    rng = random.Random(SEED)
    found = [Corrupt(v.name, v.expect, v.breaker, v.read_structure) for v in variants()]
    count = len(_files(pristine))
    for index in range(TRUNCATIONS):
        pick = rng.randrange(count)
        fraction = rng.random()
        found.append(
            Corrupt(
                f"truncated #{index} (file {pick} at {fraction:.3f})",
                _truncation_expectation(pick, pristine),
                _truncate(pick, fraction),
            )
        )
    for index in range(FLIPS):
        pick = rng.randrange(count)
        offsets = [rng.random() for _ in range(rng.randint(1, 8))]
        header = index % 2 == 0
        found.append(Corrupt(f"flipped #{index} (file {pick})", MAY_PASS, _flip(pick, offsets, header)))
    return found


def test_corpus_is_rejected_cleanly_and_whatever_passes_renders(
    pristine: SyntheticCase, tmp_path: Path
) -> None:
    config = parse_config({"state_dir": str(tmp_path / "state")})
    items = corpus(pristine)
    assert len(items) >= 100
    failures: list[str] = []
    accepted = 0
    for index, item in enumerate(items):
        case = relocate(pristine, tmp_path / f"v{index}")
        item.breaker(case)
        try:
            result = read_case(case.folder, IntakeOptions(read_structure=item.read_structure))
        except Exception as err:  # read_case must never raise for bad input
            failures.append(f"{item.name}: read_case raised {type(err).__name__}: {err}")
            continue
        codes = [p.code for p in result.errors]
        if "INTAKE_FAILED" in codes:
            failures.append(f"{item.name}: {result.errors[codes.index('INTAKE_FAILED')].message}")
        if item.expect == VALID and not result.valid:
            failures.append(f"{item.name}: a valid case was rejected: {codes}")
        elif item.expect == REJECT and result.valid:
            failures.append(f"{item.name}: accepted, but MOQUI could not run it")
        elif item.expect not in (VALID, REJECT, MAY_PASS) and item.expect not in codes:
            failures.append(f"{item.name}: expected {item.expect}, got {codes}")
        if result.valid:
            accepted += 1
            assert result.case is not None
            try:
                render_bundle(result.case, config, tmp_path / f"bundle{index}")
            except Exception as err:  # render must accept every case intake accepted
                failures.append(f"{item.name}: accepted, then refused by render: {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)
    assert accepted >= 5  # the valid encodings, at least


@pytest.mark.parametrize("index", [0, 30, 45, 75, 90, 110])
def test_corpus_samples_through_the_cli(pristine: SyntheticCase, tmp_path: Path, index: int) -> None:
    item = corpus(pristine)[index]
    case = relocate(pristine, tmp_path / "case")
    item.breaker(case)
    config = tmp_path / "mqi.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MQI_CONFIG", "MQI_DEBUG")}
    runs = [
        ["check", "--config", str(config), str(case.folder)],
        ["submit", "--dry-run", "--out", str(tmp_path / "bundle"), "--config", str(config), str(case.folder)],
    ]
    codes = []
    for args in runs:
        ran = subprocess.run(
            [sys.executable, "-m", "mqi", *args], capture_output=True, text=True, env=env, timeout=120
        )
        assert ran.returncode in (0, 2), f"{item.name}: {ran.stderr}"
        assert "Traceback" not in ran.stderr and "unexpected" not in ran.stderr, f"{item.name}: {ran.stderr}"
        codes.append(ran.returncode)
    assert codes[0] == codes[1], f"{item.name}: check said {codes[0]}, the dry run {codes[1]}"
