"""A stand-in for MOQUI's ``tps_env``: a test double for the cluster side.

NOT A DOSE ENGINE. Nothing it writes is a dose anyone should trust: it draws a smooth,
deterministic, roughly proton-shaped distribution from a plan's spots so that the
machinery around MOQUI (job scripts, output discovery, post-processing, failure
handling) can be exercised without a GPU.

What it shares with the real engine (see docs/moqui.md):

- the parameter file (read with :mod:`mqi.moqui_params`: case-insensitive keys, first
  occurrence wins, ``#`` comments), the path rules (``UseAbsolutePath false``: the DICOM
  dir is ``ParentDir/DicomDir``; relative paths are relative to the working directory);
- the order of its checks and how it dies: exit 134 with
  ``terminate called after throwing an instance of 'std::runtime_error'`` /
  ``  what():  <message>`` on stderr; ``OutputDir`` created with a single-level mkdir
  whose failure is ignored (the run then ends with ``Cannot write :<path>`` and exit 0,
  as MOQUI does); an absent ``BeamNumbers`` reads past an empty vector (exit 139);
- the inputs it reads (a flat DICOM dir; CT slices sorted by z that must be signed
  int16; the RT Ion Plan's beams by BeamNumber, the beam name by POSITION in
  IonBeamSequence, even-indexed control points as energy layers);
- output names and formats: ``<OutputDir>/<BeamName>_<c>_<Scorer>.raw`` (float64
  little-endian on the CT grid, x fastest) or ``.mhd`` + ``.raw``, ``c`` = range
  shifters + blocks; progress lines on stdout and the closing
  ``Time taken by MC engine: <ms> milli-seconds``;
- scaling: per-history dose x ParticlesPerHistory x RBE x NumberOfFraction (<= 0: the
  plan's NumberOfFractionsPlanned). A non-positive ParticlesPerHistory gives a negative
  "dose", as in MOQUI.

The toy dose model: water everywhere (the CT values are not used), depth measured from
the most upstream voxel centres of the CT grid, a Bragg-like depth curve per energy
layer peaking at R[mm] = 10 * 0.0022 * E^1.77, a Gaussian lateral profile per spot (sigma
from ScanningSpotSize, default 4 mm), no divergence. Beam direction for a head-first
supine patient (IEC 61217): gantry 0 travels toward +y (anterior to posterior), gantry 90
toward -x; PatientSupportAngle and PatientPosition are ignored. ``RandomSeed`` >= 0 adds
deterministic 1 % multiplicative noise (-1: seeded from the clock, not reproducible).

Test knobs: ``--seconds S`` (take at least S seconds), ``--fail-beams 2,3`` with
``--fail-mode 134|139|255|no-output`` (fail like MOQUI does when the file's BeamNumbers
includes one of those beams).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from mqi.moqui_params import ParameterError, Parameters, parse_parameter_text

DEFAULT_PARAMFILE = "moqui_tps.in"
FAIL_MODES = ("134", "139", "255", "no-output")
DEFAULT_SPOT_SIGMA_MM = 4.0
DOSE_PER_WEIGHT = 1.2
"""Gy per (meterset weight x spot density in 1/mm^2) at a Bragg peak, chosen so that the
APTG plan-03 beams peak near 2 Gy, as their TPS doses do, with ParticlesPerHistory 1."""
HISTORIES_PER_WEIGHT = 1000.0
NOISE_RELATIVE = 0.01
SPOT_BIN_MM = 0.5


# --- how MOQUI dies ---------------------------------------------------------
class EngineExit(Exception):
    """End the run with exit ``code`` after writing ``stderr`` text (none for a crash)."""

    def __init__(self, code: int, stderr: str = "") -> None:
        super().__init__(stderr or f"exit {code}")
        self.code = code
        self.stderr = stderr


def runtime_error(message: str) -> EngineExit:
    """An uncaught std::runtime_error: abort (exit 134) with the C++ runtime's message."""
    return _uncaught("std::runtime_error", message)


def _uncaught(kind: str, what: str) -> EngineExit:
    text = f"terminate called after throwing an instance of '{kind}'\n  what():  {what}\n"
    return EngineExit(134, stderr=text)


def segfault() -> EngineExit:
    return EngineExit(139)


# --- parameters --------------------------------------------------------------
@dataclass(frozen=True)
class EngineSettings:
    """What the engine takes from its parameter file, paths resolved against ``cwd``."""

    dicom_dir: Path
    output_dir: Path
    output_dir_text: str  # as written in the file, for messages
    output_format: str
    overwrite: bool
    scorer: str
    beam_numbers: tuple[int, ...] | None  # None: the key is absent
    particles_per_history: float
    rbe: float
    fractions: int
    seed: int
    max_histories_per_batch: int


def _int(params: Parameters, key: str, default: int) -> int:
    try:
        value = params.get_int(key, default)
    except ParameterError:
        raise _uncaught("std::invalid_argument", "stoi") from None
    assert value is not None
    return value


def _float(params: Parameters, key: str, default: float) -> float:
    try:
        value = params.get_float(key, default)
    except ParameterError:
        raise _uncaught("std::invalid_argument", "stof") from None
    assert value is not None
    return value


def _int_list(params: Parameters, key: str) -> tuple[int, ...] | None:
    try:
        values = params.get_int_list(key)
    except ParameterError:
        raise _uncaught("std::invalid_argument", "stoi") from None
    return None if values is None else tuple(values)


def settings_from_parameters(params: Parameters, cwd: Path) -> EngineSettings:
    """Read the keys in MOQUI's order, failing where and as it fails. Pure."""
    _int(params, "GPUID", 0)
    seed = _int(params, "RandomSeed", -1)
    absolute = bool(params.get_bool("UseAbsolutePath", False))
    _int(params, "TotalThreads", -1)
    max_per_batch = _int(params, "MaxHistoriesPerBatch", 0)
    parent = params.get_str("ParentDir", "") or ""
    if not parent:
        raise runtime_error("ParentDir is not provided")
    dicom = params.get_str("DicomDir", "") or ""
    dicom_path = dicom if absolute else f"{parent}/{dicom}"
    if not dicom_path:
        raise runtime_error("ParentDir is not provided")
    pph = _float(params, "ParticlesPerHistory", -1.0)
    rbe = _float(params, "RBE", 1.1)
    fractions = _int(params, "NumberOfFraction", -1)
    scorer = params.get_str("Scorer", "Dose") or "Dose"
    output = params.get_str("OutputDir", "") or ""
    output_format = params.get_str("OutputFormat", "raw") or "raw"
    if not output:
        raise runtime_error("Output directory is not provided.")
    return EngineSettings(
        dicom_dir=cwd / dicom_path,
        output_dir=cwd / output,
        output_dir_text=output,
        output_format=output_format,
        overwrite=bool(params.get_bool("OverwriteResults", False)),
        scorer=scorer,
        beam_numbers=_int_list(params, "BeamNumbers"),
        particles_per_history=pph,
        rbe=rbe,
        fractions=fractions,
        seed=seed,
        max_histories_per_batch=max_per_batch,
    )


def prepare_output_dir(path: Path, overwrite: bool) -> None:
    """MOQUI's single-level mkdir, whose failure it ignores; an existing dir is fatal."""
    if path.exists():
        if not overwrite:
            raise runtime_error("Output directory exists.")
        return
    with contextlib.suppress(OSError):
        path.mkdir(mode=0o755)


# --- the DICOM directory -----------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """The CT grid: voxel centres x = x0 + i*dx, y = y0 + j*dy, z = z[k]."""

    nx: int
    ny: int
    dx: float
    dy: float
    x0: float
    y0: float
    z: tuple[float, ...]

    @property
    def nz(self) -> int:
        return len(self.z)

    @property
    def dz(self) -> float:
        return (self.z[-1] - self.z[0]) / (self.nz - 1) if self.nz > 1 else 1.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.nz, self.ny, self.nx)


def scan_dicom_dir(path: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    """Headers of the DICOM files directly in ``path`` by Modality (not recursive)."""
    found: dict[str, list[tuple[Path, Dataset]]] = {}
    try:
        names = sorted(os.listdir(path))
    except OSError:
        names = []
    for name in names:
        file = path / name
        if not file.is_file():
            continue
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
            continue
        found.setdefault(str(ds.get("Modality", "")), []).append((file, ds))
    return found


def ct_grid(slices: Sequence[Dataset]) -> Grid:
    """The grid of CT slices, sorted by z; aborts like MOQUI on anything but signed int16."""
    if not slices:
        raise runtime_error("There is no CT in the path.")
    for ds in slices:
        if int(ds.get("PixelRepresentation", 0)) != 1 or int(ds.get("BitsAllocated", 0)) != 16:
            raise runtime_error(
                "CT pixel data must be signed 16-bit integers (PixelRepresentation 1, BitsAllocated 16)."
            )
    ordered = sorted(slices, key=lambda ds: float(ds.ImagePositionPatient[2]))
    first = ordered[0]
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    return Grid(
        nx=int(first.Columns),
        ny=int(first.Rows),
        dx=column_spacing,
        dy=row_spacing,
        x0=float(first.ImagePositionPatient[0]),
        y0=float(first.ImagePositionPatient[1]),
        z=tuple(float(ds.ImagePositionPatient[2]) for ds in ordered),
    )


# --- the plan --------------------------------------------------------------------
@dataclass(frozen=True)
class SpotLayer:
    energy_mev: float
    x_mm: np.ndarray
    y_mm: np.ndarray
    weights: np.ndarray


@dataclass(frozen=True)
class PlanBeam:
    number: int
    name: str | None  # taken by POSITION in IonBeamSequence, as MOQUI does (None: no such item)
    setup: bool
    gantry_deg: float
    isocenter: tuple[float, float, float]
    scoring_index: int  # range shifters + blocks: the <c> in the output name
    spot_sigma_mm: float
    layers: tuple[SpotLayer, ...]

    @property
    def total_weight(self) -> float:
        return float(sum(layer.weights.sum() for layer in self.layers))


def _spot_layers(control_points: Sequence[Dataset]) -> tuple[SpotLayer, ...]:
    layers = []
    energy = 0.0
    for cp in control_points[0::2]:
        energy = float(cp.get("NominalBeamEnergy", energy) or energy)
        positions = np.asarray(cp.get("ScanSpotPositionMap", []) or [], dtype=float)
        weights = np.atleast_1d(np.asarray(cp.get("ScanSpotMetersetWeights", []), dtype=float))
        if positions.size == 0 or weights.size * 2 != positions.size:
            continue
        xy = positions.reshape(-1, 2)
        layers.append(SpotLayer(energy, xy[:, 0].copy(), xy[:, 1].copy(), weights))
    return tuple(layers)


def _spot_sigma(cp0: Dataset) -> float:
    size = cp0.get("ScanningSpotSize")
    if size:
        fwhm = float(np.mean([float(v) for v in size]))
        if fwhm > 0:
            return fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return DEFAULT_SPOT_SIGMA_MM


def plan_beams(plan: Dataset) -> list[PlanBeam]:
    """Every beam of an RT Ion Plan; the name of beam number n is that of the n-th item."""
    sequence = plan.get("IonBeamSequence")
    if not sequence:
        raise runtime_error("RT Ion Plan has no IonBeamSequence.")
    beams = []
    for item in sequence:
        number = int(item.BeamNumber)
        by_position = sequence[number - 1] if 1 <= number <= len(sequence) else None
        cps = item.IonControlPointSequence
        cp0 = cps[0]
        iso = tuple(float(v) for v in cp0.get("IsocenterPosition", (0.0, 0.0, 0.0)))
        beams.append(
            PlanBeam(
                number=number,
                name=None if by_position is None else str(by_position.get("BeamName", "")),
                setup=str(item.get("TreatmentDeliveryType", "")).upper() == "SETUP"
                or str(item.get("BeamName", "")) == "Setup",
                gantry_deg=float(cp0.get("GantryAngle", 0.0)),
                isocenter=(iso[0], iso[1], iso[2]),
                scoring_index=int(item.get("NumberOfRangeShifters", 0) or 0)
                + int(item.get("NumberOfBlocks", 0) or 0),
                spot_sigma_mm=_spot_sigma(cp0),
                layers=_spot_layers(cps),
            )
        )
    return beams


def fractions_planned(plan: Dataset) -> int:
    groups = plan.get("FractionGroupSequence") or []
    return int(groups[0].get("NumberOfFractionsPlanned", 1) or 1) if groups else 1


def select_beams(beams: Sequence[PlanBeam], requested: tuple[int, ...] | None) -> list[PlanBeam]:
    """The beams a BeamNumbers value selects (0 or empty: every non-setup beam)."""
    if requested is None:
        raise segfault()  # MOQUI reads beam_numbers[0] of an empty vector
    if not requested or requested == (0,):
        chosen = [beam for beam in beams if not beam.setup]
    else:
        by_number = {beam.number: beam for beam in beams}
        if any(number not in by_number for number in requested):
            raise runtime_error("Invalid beam number.")
        chosen = [by_number[number] for number in requested]
    if any(beam.name is None for beam in chosen):
        raise segfault()  # the beam name is read by position, past the end of the sequence
    return chosen


# --- the toy dose model ---------------------------------------------------------
def range_mm(energy_mev: float) -> float:
    """CSDA range of protons in water: R[cm] = 0.0022 * E^1.77."""
    return 10.0 * 0.0022 * energy_mev**1.77


def depth_dose(depth_mm: np.ndarray, energy_mev: float) -> np.ndarray:
    """A Bragg-like curve: plateau ~0.3 at entry, peak ~1 at the range, zero beyond."""
    r = range_mm(energy_mev)
    straggling = 0.012 * r + 0.6
    u = (depth_mm - r) / straggling
    fall = 0.5 * (1.0 - np.tanh(0.85 * u))
    curve = (0.3 + 0.2 * depth_mm / r) * fall + 0.8 * np.exp(-0.5 * u * u)
    return np.where(depth_mm >= 0.0, curve, 0.0)


def let_keV_um(depth_mm: np.ndarray, energy_mev: float) -> np.ndarray:
    """A LET that rises toward the end of range."""
    residual = np.maximum(range_mm(energy_mev) - depth_mm, 0.0)
    return 0.5 + 6.0 / np.sqrt(residual + 2.0)


def _gauss(offsets: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * (offsets / sigma) ** 2) / (sigma * math.sqrt(2.0 * math.pi))


def _bin_spots(layer: SpotLayer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spot weights on a lattice: (x values, y values, weights[x, y])."""
    ix_keys, ix = np.unique(np.round(layer.x_mm / SPOT_BIN_MM).astype(np.int64), return_inverse=True)
    iy_keys, iy = np.unique(np.round(layer.y_mm / SPOT_BIN_MM).astype(np.int64), return_inverse=True)
    weights = np.zeros((ix_keys.size, iy_keys.size))
    np.add.at(weights, (ix, iy), layer.weights)
    return ix_keys * SPOT_BIN_MM, iy_keys * SPOT_BIN_MM, weights


def beam_frame(grid: Grid, beam: PlanBeam) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (y, x) column of the grid: depth from the grid's entry plane and lateral offset
    along the spot map's X axis; and per slice the offset along its Y axis (patient z)."""
    theta = math.radians(beam.gantry_deg)
    direction = np.array([-math.sin(theta), math.cos(theta)])
    lateral = np.array([math.cos(theta), math.sin(theta)])
    iso = np.array(beam.isocenter[:2])
    xs = grid.x0 + grid.dx * np.arange(grid.nx)
    ys = grid.y0 + grid.dy * np.arange(grid.ny)
    rel_x = (xs[None, :] - iso[0]).repeat(grid.ny, axis=0).ravel()
    rel_y = (ys[:, None] - iso[1]).repeat(grid.nx, axis=1).ravel()
    along = rel_x * direction[0] + rel_y * direction[1]
    corners = np.array([[x, y] for x in (xs[0], xs[-1]) for y in (ys[0], ys[-1])]) - iso
    entry = float(np.max(-(corners @ direction)))
    depth = along + entry
    across = rel_x * lateral[0] + rel_y * lateral[1]
    beam_y = np.asarray(grid.z) - beam.isocenter[2]
    return depth, across, beam_y


def compute_beam(grid: Grid, beam: PlanBeam, scorer: str) -> np.ndarray:
    """Dose (Gy per unit scale) or LET on the grid, shape (nz, ny, nx). Deterministic."""
    depth, across, beam_y = beam_frame(grid, beam)
    sigma = beam.spot_sigma_mm
    dose = np.zeros((depth.size, grid.nz))
    weighted_let = np.zeros_like(dose) if scorer.lower().startswith("let") else None
    for layer in beam.layers:
        xs, ys, weights = _bin_spots(layer)
        per_slice = weights @ _gauss(ys[:, None] - beam_y[None, :], sigma)  # (nX, nz)
        curve = depth_dose(depth, layer.energy_mev)
        columns = _gauss(across[:, None] - xs[None, :], sigma) * curve[:, None]  # (nxy, nX)
        layer_dose = columns @ per_slice
        dose += layer_dose
        if weighted_let is not None:
            weighted_let += layer_dose * let_keV_um(depth, layer.energy_mev)[:, None]
    if weighted_let is not None:
        cutoff = 1e-6 * max(float(dose.max()), 1e-300)
        result = np.where(dose > cutoff, weighted_let / np.maximum(dose, cutoff), 0.0)
    else:
        result = dose * DOSE_PER_WEIGHT
    return np.ascontiguousarray(result.T).reshape(grid.shape)


def add_noise(values: np.ndarray, seed: Sequence[int]) -> np.ndarray:
    """Deterministic multiplicative noise for a seed; never changes the sign of a voxel."""
    rng = np.random.default_rng([part % 2**32 for part in seed])
    factor = 1.0 + NOISE_RELATIVE * np.clip(rng.standard_normal(values.shape), -3.0, 3.0)
    return values * factor


def simulate(grid: Grid, beam: PlanBeam, settings: EngineSettings, fractions: int) -> np.ndarray:
    values = compute_beam(grid, beam, settings.scorer)
    if settings.scorer.lower() == "dose":
        values *= settings.particles_per_history * settings.rbe * fractions
    seed = settings.seed if settings.seed != -1 else time.time_ns()  # -1: from the clock
    return add_noise(values, (seed, beam.number))


# --- output -------------------------------------------------------------------------
def mhd_header(grid: Grid, data_file: str) -> str:
    """A MetaImage header; Offset is the centre of the first voxel."""
    return (
        "ObjectType = Image\n"
        "NDims = 3\n"
        "BinaryData = True\n"
        "BinaryDataByteOrderMSB = False\n"
        "CompressedData = False\n"
        "TransformMatrix = 1 0 0 0 1 0 0 0 1\n"
        f"Offset = {grid.x0:g} {grid.y0:g} {grid.z[0]:g}\n"
        "CenterOfRotation = 0 0 0\n"
        "AnatomicalOrientation = RAI\n"
        f"ElementSpacing = {grid.dx:g} {grid.dy:g} {grid.dz:g}\n"
        f"DimSize = {grid.nx} {grid.ny} {grid.nz}\n"
        "ElementType = MET_DOUBLE\n"
        f"ElementDataFile = {data_file}\n"
    )


def output_name(settings: EngineSettings, beam: PlanBeam) -> str:
    """``<BeamName>_<c>_<Scorer>.<ext>``; only exactly ``mhd``/``mha`` get a header."""
    ext = settings.output_format if settings.output_format in ("mhd", "mha") else "raw"
    return f"{beam.name}_{beam.scoring_index}_{settings.scorer}.{ext}"


def write_output(path: Path, values: np.ndarray, grid: Grid) -> None:
    data = np.ascontiguousarray(values, dtype="<f8")
    if path.suffix == ".raw":
        data.tofile(path)
    elif path.suffix == ".mhd":
        raw = path.with_suffix(".raw")
        data.tofile(raw)
        path.write_text(mhd_header(grid, raw.name), encoding="ascii")
    else:  # .mha: header and data in one file
        with path.open("wb") as handle:
            handle.write(mhd_header(grid, "LOCAL").encode("ascii"))
            handle.write(data.tobytes())


# --- the run -------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    paramfile: Path
    seconds: float = 0.0
    fail_beams: frozenset[int] = frozenset()
    fail_mode: str = "134"
    fail_attempts: int = 0


def _batches(beam: PlanBeam, settings: EngineSettings) -> tuple[int, int]:
    pph = settings.particles_per_history if settings.particles_per_history > 0 else 1.0
    histories = max(1, round(beam.total_weight * HISTORIES_PER_WEIGHT / pph))
    per_batch = settings.max_histories_per_batch
    if per_batch <= 0 or per_batch > histories:
        per_batch = histories
    return per_batch, -(-histories // per_batch)


def _say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()


def _inject(mode: str, beam: PlanBeam) -> EngineExit:
    if mode == "139":
        return segfault()
    if mode == "255":
        return EngineExit(
            255, stderr="CUDA error: mqi::upload_node cudaErrorMemoryAllocation out of memory\n"
        )
    return runtime_error(f"Injected failure for beam {beam.number} (stand-in --fail-mode 134).")


def run_beam(
    grid: Grid,
    beam: PlanBeam,
    settings: EngineSettings,
    fractions: int,
    options: Options,
    out: TextIO,
    deadline: float,
) -> None:
    per_batch, batches = _batches(beam, settings)
    failing = beam.number in options.fail_beams and _counts_as_failing(settings.output_dir, options)
    started = time.perf_counter()
    values = simulate(grid, beam, settings, fractions)
    _say(out, f"Upload {per_batch} histories per batch, {batches} batches expected")
    for index in range(batches):
        _say(out, "Generating particles...")
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining / (batches - index))
        if failing and options.fail_mode != "no-output" and index >= (batches - 1) // 2:
            raise _inject(options.fail_mode, beam)
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    _say(out, f"Time taken by MC engine: {elapsed_ms:.6f} milli-seconds")
    name = output_name(settings, beam)
    shown = f"{settings.output_dir_text.rstrip('/')}/{name}"
    if failing and options.fail_mode == "no-output":
        _say(out, f"Cannot write :{shown}")
        return
    try:
        write_output(settings.output_dir / name, values, grid)
    except OSError:
        _say(out, f"Cannot write :{shown}")


def _counts_as_failing(output_dir: Path, options: Options) -> bool:
    """With --fail-attempts N only the first N runs of a beam fail, like a transient GPU fault.

    Runs are counted in a file beside the beam's OutputDir, so a retried job sees them.
    """
    if options.fail_attempts <= 0:
        return True
    counter = output_dir.parent / ".standin-attempts"
    try:
        done = int(counter.read_text())
    except (OSError, ValueError):
        done = 0
    counter.write_text(str(done + 1))
    return done < options.fail_attempts


def run(options: Options, cwd: Path, out: TextIO) -> None:
    """One engine run; raises EngineExit to end it any other way than success."""
    deadline = time.monotonic() + options.seconds
    paramfile = options.paramfile if options.paramfile.is_absolute() else cwd / options.paramfile
    try:
        text = paramfile.read_text(encoding="utf-8", errors="replace")
    except OSError:
        raise runtime_error(f"Cannot open the parameter file {options.paramfile}") from None
    settings = settings_from_parameters(parse_parameter_text(text), cwd)
    prepare_output_dir(settings.output_dir, settings.overwrite)
    if settings.scorer.lower() not in ("dose", "letd", "lett"):
        raise runtime_error(f"Scorer {settings.scorer} is not supported by the stand-in.")
    found = scan_dicom_dir(settings.dicom_dir)
    grid = ct_grid([ds for _, ds in found.get("CT", [])])
    plans = found.get("RTPLAN", [])
    if not plans:
        raise runtime_error("There is no RTPLAN in the path. Exiting.")
    if len(plans) > 1:
        _say(out, "There are multiple RTPLANs in the path. Selecting the first one")
    plan = pydicom.dcmread(plans[0][0])
    fractions = settings.fractions if settings.fractions > 0 else fractions_planned(plan)
    beams = select_beams(plan_beams(plan), settings.beam_numbers)
    for beam in beams:
        run_beam(grid, beam, settings, fractions, options, out, deadline)


# --- command line -------------------------------------------------------------------
def _beam_list(text: str) -> frozenset[int]:
    try:
        return frozenset(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of beam numbers") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mqi-moqui-standin",
        description=(
            "A stand-in for MOQUI's tps_env, for tests and demos. NOT A DOSE ENGINE: its "
            "output is a smooth toy distribution that no one should trust. It reads the same "
            "parameter file and DICOM dir, writes the same output files and fails with the "
            "same exit codes and messages as MOQUI."
        ),
    )
    parser.add_argument(
        "paramfile",
        nargs="?",
        default=DEFAULT_PARAMFILE,
        type=Path,
        help="MOQUI parameter file (default: ./moqui_tps.in)",
    )
    parser.add_argument("--seconds", type=float, default=0.0, help="take at least this many seconds")
    parser.add_argument(
        "--fail-beams",
        type=_beam_list,
        default=frozenset(),
        metavar="N[,N...]",
        help="fail when the file's BeamNumbers includes one of these beams",
    )
    parser.add_argument(
        "--fail-mode",
        choices=FAIL_MODES,
        default="134",
        help="how to fail: 134 uncaught exception, 139 segfault, 255 CUDA error, "
        "no-output exit 0 without writing the output (default 134)",
    )
    parser.add_argument(
        "--fail-attempts",
        type=int,
        default=0,
        metavar="N",
        help="fail only the first N runs of each --fail-beams beam (default: every run)",
    )
    return parser


def execute(argv: Sequence[str] | None, cwd: Path, out: TextIO, err: TextIO) -> int:
    """One run with the working directory ``cwd``; returns the exit code."""
    args = build_parser().parse_args(argv)
    options = Options(args.paramfile, args.seconds, args.fail_beams, args.fail_mode, args.fail_attempts)
    try:
        run(options, cwd, out)
    except EngineExit as ended:
        out.flush()
        if ended.stderr:
            err.write(ended.stderr)
            err.flush()
        return ended.code
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return execute(argv, Path.cwd(), sys.stdout, sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
