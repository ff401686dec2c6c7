"""Dose grids in patient coordinates, read from RT Dose files.

A `DoseGrid` holds Gy in an array indexed (z, y, x) with strictly increasing, uniformly
spaced coordinate axes in mm (voxel centres). Files are converted to that form on
reading: each file's own DoseGridScaling, the axis order and signs given by
ImageOrientationPatient, GridFrameOffsetVector relative (first value 0) or absolute,
decreasing axes flipped. Grids are never compared by index: see `sample`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from mqi.qa.kernels import trilinear_at

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
_AXIS_TOLERANCE = 1e-3
_SPACING_TOLERANCE = 1e-3  # relative


class DoseFileError(ValueError):
    """An RT Dose file that cannot be read as a dose grid; the message is one line."""


@dataclass(frozen=True)
class DoseGrid:
    """Dose in Gy on a regular grid; ``values[k, j, i]`` is at ``(x[i], y[j], z[k])``."""

    values: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    frame_of_reference_uid: str = ""
    dose_type: str = ""  # PHYSICAL / EFFECTIVE / "" (unknown)
    summation_type: str = ""  # PLAN / BEAM / FRACTION / ...
    beam_numbers: tuple[int, ...] = ()
    plan_uid: str = ""
    source: str = ""  # file name(s), for the report

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(dx, dy, dz) in mm."""
        return (_step(self.x), _step(self.y), _step(self.z))

    @property
    def origin(self) -> tuple[float, float, float]:
        return (float(self.x[0]), float(self.y[0]), float(self.z[0]))

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        return (self.x.size, self.y.size, self.z.size)

    @property
    def voxel_volume_mm3(self) -> float:
        dx, dy, dz = self.spacing
        return dx * dy * dz

    def bounds(self) -> tuple[tuple[float, float], ...]:
        """((xmin, xmax), (ymin, ymax), (zmin, zmax)) of the voxel centres."""
        return tuple((float(a[0]), float(a[-1])) for a in (self.x, self.y, self.z))

    def scaled(self, factor: float) -> DoseGrid:
        return replace(self, values=self.values * factor)

    def shifted(self, dx: float = 0.0, dy: float = 0.0, dz: float = 0.0) -> DoseGrid:
        """The same dose moved by (dx, dy, dz) mm in patient coordinates."""
        return replace(self, x=self.x + dx, y=self.y + dy, z=self.z + dz)


def _step(axis: np.ndarray) -> float:
    return float(axis[1] - axis[0]) if axis.size > 1 else 1.0


def _unit_axis(vector: np.ndarray, what: str) -> tuple[int, float]:
    """(patient axis 0/1/2, sign) of a direction that must be along x, y or z."""
    axis = int(np.argmax(np.abs(vector)))
    others = np.delete(np.abs(vector), axis)
    if np.any(others > _AXIS_TOLERANCE) or abs(abs(vector[axis]) - 1.0) > _AXIS_TOLERANCE:
        raise DoseFileError(
            f"{what} {vector.tolist()} is oblique; only axis-aligned dose grids are supported"
        )
    return axis, float(np.sign(vector[axis]))


def _frame_positions(ds: Dataset, normal: np.ndarray, origin: np.ndarray, frames: int) -> np.ndarray:
    """Signed position of each frame along ``normal`` (relative or absolute offsets)."""
    offsets = ds.get("GridFrameOffsetVector")
    if offsets is None or len(offsets) == 0:
        if frames > 1:
            raise DoseFileError("multi-frame RT Dose without GridFrameOffsetVector")
        offsets = [0.0]
    values = np.asarray([float(v) for v in offsets], dtype=float)
    if values.size != frames:
        raise DoseFileError(f"GridFrameOffsetVector has {values.size} values for {frames} frames")
    start = float(origin @ normal)
    # First value 0: offsets relative to the first frame; otherwise absolute positions.
    return start + values if values[0] == 0.0 else values


def _uniform(axis: np.ndarray, what: str) -> None:
    if axis.size < 2:
        return
    steps = np.diff(axis)
    if np.any(steps <= 0) or np.ptp(steps) > _SPACING_TOLERANCE * abs(float(steps.mean())):
        raise DoseFileError(f"{what} is not uniformly spaced; only regular dose grids are supported")


def grid_from_dataset(ds: Dataset, source: str = "") -> DoseGrid:
    """A DoseGrid in Gy from an RT Dose dataset with its pixel data."""
    if str(ds.get("SOPClassUID", RT_DOSE_STORAGE)) != RT_DOSE_STORAGE or ds.get("Modality") != "RTDOSE":
        raise DoseFileError("not an RT Dose object")
    units = str(ds.get("DoseUnits", "GY")).upper()
    if units != "GY":
        raise DoseFileError(f"DoseUnits {units} is not GY (relative doses cannot be compared)")
    try:
        pixels = ds.pixel_array.astype(np.float64)
        scaling = float(ds.get("DoseGridScaling", 1.0) or 1.0)
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=float)
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    except (AttributeError, KeyError, ValueError, TypeError) as err:
        raise DoseFileError(f"incomplete RT Dose: {err}") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    dose = pixels.reshape(frames, int(ds.Rows), int(ds.Columns)) * scaling
    along_row, along_column = iop[:3], iop[3:]
    normal = np.cross(along_row, along_column)
    axes = [
        _unit_axis(normal, "frame normal"),
        _unit_axis(along_column, "ImageOrientationPatient column direction"),
        _unit_axis(along_row, "ImageOrientationPatient row direction"),
    ]
    if len({axis for axis, _ in axes}) != 3:
        raise DoseFileError("ImageOrientationPatient does not describe three distinct axes")
    positions = [
        _frame_positions(ds, normal, ipp, frames),
        float(ipp @ along_column) + row_spacing * np.arange(int(ds.Rows)),
        float(ipp @ along_row) + column_spacing * np.arange(int(ds.Columns)),
    ]
    coords: dict[int, np.ndarray] = {}
    order = [0, 0, 0]
    for array_axis, ((patient_axis, sign), position) in enumerate(zip(axes, positions, strict=True)):
        coords[patient_axis] = sign * position  # coordinate along +patient axis
        order[2 - patient_axis] = array_axis  # result axes are (z, y, x)
    values = np.transpose(dose, order)
    x, y, z = coords[0], coords[1], coords[2]
    for result_axis, name in ((2, "x"), (1, "y"), (0, "z")):
        axis = {"x": x, "y": y, "z": z}[name]
        if axis.size > 1 and axis[1] < axis[0]:
            values = np.flip(values, axis=result_axis)
            axis = axis[::-1].copy()
            if name == "x":
                x = axis
            elif name == "y":
                y = axis
            else:
                z = axis
        _uniform(axis, f"the {name} axis")
    return DoseGrid(
        values=np.ascontiguousarray(values),
        x=np.ascontiguousarray(x),
        y=np.ascontiguousarray(y),
        z=np.ascontiguousarray(z),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        dose_type=str(ds.get("DoseType", "")).upper(),
        summation_type=str(ds.get("DoseSummationType", "")).upper(),
        beam_numbers=_referenced_beams(ds),
        plan_uid=_referenced_plan(ds),
        source=source,
    )


def _referenced_plan(ds: Dataset) -> str:
    for ref in ds.get("ReferencedRTPlanSequence", []) or []:
        return str(ref.get("ReferencedSOPInstanceUID", ""))
    return ""


def _referenced_beams(ds: Dataset) -> tuple[int, ...]:
    numbers = []
    for plan_ref in ds.get("ReferencedRTPlanSequence", []) or []:
        for group in plan_ref.get("ReferencedFractionGroupSequence", []) or []:
            for beam in group.get("ReferencedBeamSequence", []) or []:
                numbers.append(int(beam.ReferencedBeamNumber))
    return tuple(numbers)


def read_dose(path: Path) -> DoseGrid:
    """The dose grid of one RT Dose file; DoseFileError with one line when unreadable."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as err:
        raise DoseFileError(f"{path.name}: cannot read as DICOM: {err}") from None
    try:
        return grid_from_dataset(ds, source=path.name)
    except DoseFileError as err:
        raise DoseFileError(f"{path.name}: {err}") from None


def same_geometry(a: DoseGrid, b: DoseGrid, tolerance_mm: float = 1e-3) -> bool:
    return all(
        p.size == q.size and np.allclose(p, q, atol=tolerance_mm, rtol=0)
        for p, q in ((a.x, b.x), (a.y, b.y), (a.z, b.z))
    )


def sum_doses(grids: Sequence[DoseGrid]) -> DoseGrid:
    """The voxel-wise sum of grids (each already in Gy); grids on another geometry than the
    first are resampled onto it in patient coordinates, zero outside their extent."""
    if not grids:
        raise ValueError("no dose to sum")
    first = grids[0]
    total = first.values.astype(np.float64, copy=True)
    for grid in grids[1:]:
        if same_geometry(first, grid):
            total += grid.values
        else:
            total += np.nan_to_num(sample(grid, first.x, first.y, first.z), nan=0.0)
    beams = tuple(number for grid in grids for number in grid.beam_numbers)
    sources = "+".join(grid.source for grid in grids if grid.source)
    summation = first.summation_type if len(grids) == 1 else "PLAN"
    return replace(first, values=total, beam_numbers=beams, source=sources, summation_type=summation)


def index_coordinates(grid: DoseGrid, axis_values: np.ndarray, axis: str) -> np.ndarray:
    """Fractional indices of coordinates along one of ``grid``'s axes."""
    coords = {"x": grid.x, "y": grid.y, "z": grid.z}[axis]
    return (np.asarray(axis_values, dtype=float) - coords[0]) / _step(coords)


def sample(grid: DoseGrid, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``grid`` interpolated trilinearly on the lattice x * y * z (shape (z, y, x)); NaN
    outside the grid's voxel centres."""
    return trilinear_at(
        np.ascontiguousarray(grid.values, dtype=np.float64),
        index_coordinates(grid, x, "x"),
        index_coordinates(grid, y, "y"),
        index_coordinates(grid, z, "z"),
    )


def overlap_fraction(reference: DoseGrid, evaluated: DoseGrid) -> float:
    """Fraction of the reference grid's box that the evaluated grid's box covers."""
    fraction = 1.0
    for (r0, r1), (e0, e1) in zip(reference.bounds(), evaluated.bounds(), strict=True):
        length = r1 - r0
        inter = min(r1, e1) - max(r0, e0)
        if inter < 0:
            return 0.0
        fraction *= 1.0 if length <= 0 else inter / length
    return fraction
