"""The CT series: one series, axial, a regular grid of equally spaced slices.

MOQUI sorts slices by ImagePositionPatient, assumes the axial orientation
1\\0\\0\\0\\1\\0, and takes the slice spacing from SliceThickness, so every
irregularity here would silently distort the dose grid.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mqi.intake.codes import Code
from mqi.intake.dicomio import Header, number_or_nan, numbers, text, unsigned_short
from mqi.intake.model import CTGrid
from mqi.intake.pixels import (
    INT16,
    PixelDataError,
    decode_slice,
    int16_offset,
    is_plain,
    plain_unsigned_range,
    syntax_name,
)
from mqi.intake.problems import Problems, listing
from mqi.intake.tags import (
    BITS_ALLOCATED,
    BITS_STORED,
    COLUMNS,
    FRAME_OF_REFERENCE_UID,
    IMAGE_ORIENTATION,
    IMAGE_POSITION,
    NUMBER_OF_FRAMES,
    PATIENT_ID,
    PIXEL_REPRESENTATION,
    PIXEL_SPACING,
    RESCALE_INTERCEPT,
    RESCALE_SLOPE,
    ROWS,
    SAMPLES_PER_PIXEL,
    SERIES_INSTANCE_UID,
    SLICE_THICKNESS,
    SOP_INSTANCE_UID,
)

_T = TypeVar("_T")

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ORIENTATION_TOLERANCE = 1e-4
POSITION_TOLERANCE_MM = 0.01
SPACING_TOLERANCE = 0.01  # relative, between neighbouring slices
GAP_FACTOR = 1.5  # a step this many times the usual spacing is a missing slice
MAX_CT_SIDE = 4096  # rows or columns: beyond this a slice is damage, not a CT (and exhausts memory)
MAX_CT_SLICES = 4096
MAX_CT_VOXELS = 2**31 - 1  # the engine indexes the grid with 32-bit integers
MAX_COORDINATE_MM = 1e5  # 100 m: a position beyond this is a corrupt value
MIN_SLICES = 2


@dataclass(frozen=True, slots=True)
class Slice:
    """The header values of one CT slice that the checks need."""

    path: Path
    sop_instance_uid: str | None
    series_instance_uid: str | None
    frame_of_reference_uid: str | None
    patient_id: str | None
    rows: int | None
    columns: int | None
    pixel_spacing: tuple[float, float] | None  # (row spacing dy, column spacing dx)
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    thickness: float | None
    samples: int | None
    bits_allocated: int | None
    pixel_representation: int | None
    slope: float
    intercept: float
    bits_stored: int | None = None
    frames: float | None = None
    transfer_syntax: str | None = None
    pixel_offset: int | None = None  # of the Pixel Data value, plain little-endian files only
    pixel_length: int | None = None  # declared length; None: encapsulated or unknown

    @property
    def missing(self) -> list[str]:
        fields = {
            "Rows": self.rows,
            "Columns": self.columns,
            "PixelSpacing": self.pixel_spacing,
            "ImagePositionPatient": self.position,
            "ImageOrientationPatient": self.orientation,
        }
        return [name for name, value in fields.items() if value is None]


def read_slice(header: Header) -> Slice:
    ds = header.dataset
    spacing = numbers(ds, PIXEL_SPACING)
    position = numbers(ds, IMAGE_POSITION)
    orientation = numbers(ds, IMAGE_ORIENTATION)
    return Slice(
        path=header.path,
        sop_instance_uid=text(ds, SOP_INSTANCE_UID),
        series_instance_uid=text(ds, SERIES_INSTANCE_UID),
        frame_of_reference_uid=text(ds, FRAME_OF_REFERENCE_UID),
        patient_id=text(ds, PATIENT_ID),
        rows=unsigned_short(ds, ROWS),
        columns=unsigned_short(ds, COLUMNS),
        pixel_spacing=(spacing[0], spacing[1]) if spacing and len(spacing) == 2 else None,
        position=(position[0], position[1], position[2]) if position and len(position) == 3 else None,
        orientation=tuple(orientation) if orientation and len(orientation) == 6 else None,
        thickness=number_or_nan(ds, SLICE_THICKNESS),
        samples=unsigned_short(ds, SAMPLES_PER_PIXEL),
        bits_allocated=unsigned_short(ds, BITS_ALLOCATED),
        pixel_representation=unsigned_short(ds, PIXEL_REPRESENTATION),
        slope=_or_default(number_or_nan(ds, RESCALE_SLOPE), 1.0),
        intercept=_or_default(number_or_nan(ds, RESCALE_INTERCEPT), 0.0),
        bits_stored=unsigned_short(ds, BITS_STORED),
        frames=number_or_nan(ds, NUMBER_OF_FRAMES),
        transfer_syntax=_transfer_syntax(ds),
        pixel_offset=header.pixel_offset,
        pixel_length=header.pixel_length,
    )


def _or_default(value: float | None, default: float) -> float:
    return default if value is None else value


def _transfer_syntax(ds: object) -> str | None:
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(value) if value else None


@dataclass
class CTResult:
    grid: CTGrid | None
    slices: list[Slice]  # of the chosen series


def check_ct(all_slices: list[Slice], plan_frame: str | None, problems: Problems) -> CTResult:
    if not all_slices:
        problems.error(Code.CT_MISSING, "no CT slices in the folder; add the planning CT series")
        return CTResult(None, [])
    slices = _one_series(all_slices, plan_frame, problems)
    _check_frame(slices, plan_frame, problems)
    usable = _complete(slices, problems)
    usable = _valid_values(usable, problems)
    if not usable:
        return CTResult(None, slices)
    _check_orientation(usable, problems)
    _check_pixel_format(usable, problems)
    _check_pixel_data(usable, problems)
    rows, columns = _common(
        usable, lambda s: (s.rows, s.columns), Code.CT_SIZE_MISMATCH, "rows x columns", problems
    )
    spacing = _common(
        usable, lambda s: s.pixel_spacing, Code.CT_PIXEL_SPACING_MISMATCH, "PixelSpacing", problems
    )
    _common(
        usable,
        lambda s: (round(s.position[0], 2), round(s.position[1], 2)) if s.position else None,
        Code.CT_POSITION_MISMATCH,
        "x, y of ImagePositionPatient",
        problems,
    )
    ordered = sorted(usable, key=lambda s: _z(s))
    if len(ordered) < MIN_SLICES:
        problems.error(
            Code.CT_TOO_FEW_SLICES,
            f"{_folder(ordered, problems)}: the CT has {_count(len(ordered), 'usable slice')}; "
            f"a dose grid needs at least {MIN_SLICES}: add the whole planning CT series",
            ordered[0].path,
        )
        return CTResult(None, slices)
    voxels = (rows or 0) * (columns or 0) * len(ordered)
    if len(ordered) > MAX_CT_SLICES or voxels > MAX_CT_VOXELS:
        problems.error(
            Code.CT_SIZE_INVALID,
            f"{_folder(ordered, problems)}: {len(ordered)} slices of {rows} x {columns}, more than "
            f"the {MAX_CT_SLICES} slices or {MAX_CT_VOXELS} voxels a dose grid can have; "
            "keep only the planning CT series",
            ordered[0].path,
        )
        return CTResult(None, slices)
    dz = _check_spacing(ordered, problems)
    _check_thickness(ordered, dz, problems)
    first = ordered[0]
    assert first.position is not None and rows is not None and columns is not None and spacing
    grid = CTGrid(
        rows=rows,
        columns=columns,
        slices=len(ordered),
        spacing=(spacing[1], spacing[0], dz),
        origin=first.position,
        pixel_representation=first.pixel_representation or 0,
        bits_allocated=first.bits_allocated or 16,
        rescale_slope=first.slope,
        rescale_intercept=first.intercept,
        series_instance_uid=first.series_instance_uid or "",
        frame_of_reference_uid=first.frame_of_reference_uid or "",
        files=[s.path for s in ordered],
    )
    return CTResult(grid, slices)


def _z(s: Slice) -> float:
    return s.position[2] if s.position else 0.0


def _one_series(slices: list[Slice], plan_frame: str | None, problems: Problems) -> list[Slice]:
    """The slices of one series: the plan's frame of reference first, then the largest."""
    by_series: dict[str | None, list[Slice]] = {}
    for s in slices:
        by_series.setdefault(s.series_instance_uid, []).append(s)
    if len(by_series) == 1:
        return slices
    groups = sorted(
        by_series.values(),
        key=lambda group: (sum(s.frame_of_reference_uid == plan_frame for s in group), len(group)),
        reverse=True,
    )
    described = [f"{_count(len(g), 'slice')} like {problems.rel(g[0].path)}" for g in groups]
    problems.error(
        Code.CT_MIXED_SERIES,
        f"CT slices from {len(groups)} series ({listing(described)}); keep only the planning CT series",
        groups[1][0].path,
    )
    return groups[0]


def _check_frame(slices: list[Slice], plan_frame: str | None, problems: Problems) -> None:
    if plan_frame is None:
        return
    other = [s for s in slices if s.frame_of_reference_uid != plan_frame]
    if other:
        problems.error(
            Code.CT_FRAME_OF_REFERENCE,
            f"{listing([problems.rel(s.path) for s in other])}: the CT's Frame of Reference "
            "differs from the plan's; the CT is not the one the plan was made on",
            other[0].path,
        )


def _complete(slices: list[Slice], problems: Problems) -> list[Slice]:
    incomplete = [s for s in slices if s.missing]
    if incomplete:
        problems.error(
            Code.CT_ATTRIBUTE_MISSING,
            f"{listing([problems.rel(s.path) for s in incomplete])}: missing "
            f"{', '.join(incomplete[0].missing)}; the slice cannot be placed on the grid",
            incomplete[0].path,
        )
    return [s for s in slices if not s.missing]


def _finite(values: tuple[float, ...] | None) -> bool:
    return values is not None and all(math.isfinite(v) for v in values)


def _report(code: Code, bad: list[Slice], what: str, problems: Problems) -> None:
    if bad:
        problems.error(code, f"{listing([problems.rel(s.path) for s in bad])}: {what}", bad[0].path)


def _valid_values(slices: list[Slice], problems: Problems) -> list[Slice]:
    """The slices whose numbers can place them on a grid; the others are reported.

    Checked before anything sorts or compares positions: a NaN would sort anywhere."""
    size = [
        s for s in slices if not (1 <= (s.rows or 0) <= MAX_CT_SIDE and 1 <= (s.columns or 0) <= MAX_CT_SIDE)
    ]
    if size:
        _report(
            Code.CT_SIZE_INVALID,
            size,
            f"Rows x Columns {size[0].rows} x {size[0].columns} is not a CT slice "
            f"(1 to {MAX_CT_SIDE} each); replace the file with a complete copy",
            problems,
        )
    spacing = [s for s in slices if not (_finite(s.pixel_spacing) and min(s.pixel_spacing or (0,)) > 0)]
    if spacing:
        shown = "\\".join(f"{v:g}" for v in spacing[0].pixel_spacing or ())
        _report(
            Code.CT_PIXEL_SPACING_INVALID,
            spacing,
            f"PixelSpacing {shown} must be two finite numbers > 0 (mm)",
            problems,
        )
    position = [
        s
        for s in slices
        if not (_finite(s.position) and max(abs(v) for v in s.position or (0,)) < MAX_COORDINATE_MM)
    ]
    if position:
        shown = "\\".join(f"{v:g}" for v in position[0].position or ())
        _report(
            Code.CT_POSITION_INVALID,
            position,
            f"ImagePositionPatient {shown} is not a position in mm (finite, within 100 m)",
            problems,
        )
    orientation = [s for s in slices if not _finite(s.orientation)]
    if orientation:
        _report(
            Code.CT_NOT_AXIAL,
            orientation,
            "ImageOrientationPatient is not six finite numbers; MOQUI assumes the axial 1\\0\\0\\0\\1\\0",
            problems,
        )
    rescale = [s for s in slices if not _rescale_ok(s)]
    if rescale:
        _report(
            Code.CT_RESCALE_INVALID,
            rescale,
            f"RescaleSlope {rescale[0].slope:g} / RescaleIntercept {rescale[0].intercept:g} cannot turn "
            "stored values into HU (the slope must be finite and non-zero, the intercept finite)",
            problems,
        )
    bad = {id(s) for group in (size, spacing, position, orientation, rescale) for s in group}
    return [s for s in slices if id(s) not in bad]


def _rescale_ok(s: Slice) -> bool:
    if not (math.isfinite(s.slope) and math.isfinite(s.intercept) and s.slope != 0):
        return False
    shift = s.intercept / s.slope
    return math.isfinite(shift) and abs(shift) < 2**31


def _check_pixel_data(slices: list[Slice], problems: Problems) -> None:
    """Every slice's pixel data decodes to one Rows x Columns frame, and an unsigned CT's
    values fit the signed int16 that rendering rewrites them to."""
    short: list[Slice] = []
    undecodable: list[tuple[Slice, str]] = []
    out_of_range: list[tuple[Slice, int, int]] = []
    for s in slices:
        if s.bits_allocated != 16 or (s.samples or 1) != 1 or s.pixel_representation not in (0, 1):
            continue  # reported by _check_pixel_format
        assert s.rows is not None and s.columns is not None
        try:
            low, high = _stored_range(s)
        except _ShortPixelData:
            short.append(s)
            continue
        except PixelDataError as err:
            undecodable.append((s, str(err)))
            continue
        if s.pixel_representation == 0:
            offset = int16_offset(s.slope, s.intercept)
            if low + offset < INT16[0] or high + offset > INT16[1]:
                out_of_range.append((s, low, high))
    if short:
        first = short[0]
        expected = (first.rows or 0) * (first.columns or 0) * 2
        _report(
            Code.CT_PIXEL_DATA_LENGTH,
            short,
            f"Pixel Data holds {first.pixel_length} bytes where Rows x Columns x 2 = {expected}; "
            "replace the file with a complete copy",
            problems,
        )
    if undecodable:
        first, reason = undecodable[0]
        _report(
            Code.CT_PIXEL_DATA_UNDECODABLE,
            [s for s, _ in undecodable],
            f"pixel data in {syntax_name(first.transfer_syntax)} cannot be decoded ({reason}); "
            "export the CT uncompressed",
            problems,
        )
    if out_of_range:
        first, low, high = out_of_range[0]
        hu = (low * first.slope + first.intercept, high * first.slope + first.intercept)
        _report(
            Code.CT_HU_RANGE,
            [s for s, _, _ in out_of_range],
            f"HU {hu[0]:g}..{hu[1]:g} do not fit the signed 16-bit pixels MOQUI needs at "
            f"RescaleSlope {first.slope:g}",
            problems,
        )


class _ShortPixelData(Exception):
    pass


def _stored_range(s: Slice) -> tuple[int, int]:
    """(min, max) stored value; (0, 0) for a plain signed slice, which is copied as it is."""
    assert s.rows is not None and s.columns is not None
    if is_plain(s.transfer_syntax) and s.pixel_offset is not None and s.pixel_offset >= 0:
        expected = s.rows * s.columns * 2
        if s.pixel_length is None:
            raise PixelDataError("encapsulated pixel data in a native transfer syntax")
        if s.pixel_length not in (expected, expected + 1):
            raise _ShortPixelData
        if s.pixel_representation == 1:
            return 0, 0
        return plain_unsigned_range(s.path, s.pixel_offset, s.rows, s.columns, s.bits_stored or 16)
    values = decode_slice(s.path)
    return int(values.min()), int(values.max())


def _check_orientation(slices: list[Slice], problems: Problems) -> None:
    tilted = [
        s
        for s in slices
        if s.orientation is not None
        and any(abs(a - b) > ORIENTATION_TOLERANCE for a, b in zip(s.orientation, AXIAL, strict=True))
    ]
    if tilted:
        shown = "\\".join(f"{v:g}" for v in tilted[0].orientation or ())
        problems.error(
            Code.CT_NOT_AXIAL,
            f"{listing([problems.rel(s.path) for s in tilted])}: orientation {shown} is not the "
            "axial 1\\0\\0\\0\\1\\0 that MOQUI assumes",
            tilted[0].path,
        )


def _check_pixel_format(slices: list[Slice], problems: Problems) -> None:
    odd = [s for s in slices if s.bits_allocated != 16 or (s.samples or 1) != 1]
    if odd:
        problems.error(
            Code.CT_PIXEL_FORMAT,
            f"{listing([problems.rel(s.path) for s in odd])}: {odd[0].bits_allocated}-bit pixels "
            f"with {_count(odd[0].samples or 0, 'sample')} per pixel; MOQUI needs 16-bit greyscale CT",
            odd[0].path,
        )
    others = [
        s
        for s in slices
        if s not in odd
        and (
            s.pixel_representation not in (0, 1)
            or not 1 <= (s.bits_stored or 16) <= 16
            or s.frames not in (None, 1.0)
        )
    ]
    if others:
        first = others[0]
        problems.error(
            Code.CT_PIXEL_FORMAT,
            f"{listing([problems.rel(s.path) for s in others])}: PixelRepresentation "
            f"{first.pixel_representation}, BitsStored {first.bits_stored}, NumberOfFrames "
            f"{first.frames if first.frames is not None else 1:g}; MOQUI needs single-frame CT slices "
            "with 1-16 stored bits, signed or unsigned",
            first.path,
        )


def _common(slices: list[Slice], key: Callable[[Slice], _T], code: Code, what: str, problems: Problems) -> _T:
    """The value most slices share; the others are reported."""
    values = Counter(key(s) for s in slices)
    common, _ = values.most_common(1)[0]
    odd = [s for s in slices if key(s) != common]
    if odd:
        problems.error(
            code,
            f"{listing([problems.rel(s.path) for s in odd])}: {what} {_show(key(odd[0]))} differs "
            f"from the other slices' {_show(common)}",
            odd[0].path,
        )
    return common


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return " x ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def _check_spacing(ordered: list[Slice], problems: Problems) -> float:
    """The slice spacing; duplicates, gaps and uneven steps are reported."""
    if len(ordered) < 2:
        return ordered[0].thickness or 0.0
    steps = [_z(b) - _z(a) for a, b in itertools.pairwise(ordered)]
    duplicates = [
        (a, b) for (a, b), step in zip(_pairs(ordered), steps, strict=True) if step < POSITION_TOLERANCE_MM
    ]
    if duplicates:
        named = [f"{problems.rel(a.path)} and {problems.rel(b.path)} at z={_z(a):g}" for a, b in duplicates]
        problems.error(
            Code.CT_DUPLICATE_POSITION,
            f"{listing(named)}: two slices at the same position; remove the duplicates",
            duplicates[0][1].path,
        )
    real = [step for step in steps if step >= POSITION_TOLERANCE_MM]
    if not real:
        return ordered[0].thickness or 0.0
    spacing = statistics.median(real)
    gaps, uneven = [], []
    for (a, b), step in zip(_pairs(ordered), steps, strict=True):
        if step < POSITION_TOLERANCE_MM:
            continue
        if step > GAP_FACTOR * spacing:
            gaps.append(f"z={_z(a):g} and {_z(b):g} mm ({_count(round(step / spacing) - 1, 'slice')})")
        elif abs(step - spacing) > max(POSITION_TOLERANCE_MM, SPACING_TOLERANCE * spacing):
            uneven.append(f"{step:g} mm between z={_z(a):g} and {_z(b):g}")
    if gaps:
        problems.error(
            Code.CT_GAP,
            f"{_folder(ordered, problems)}: CT slices missing between {listing(gaps)}, "
            f"spacing {spacing:g} mm; add the missing slices",
            ordered[0].path.parent,
        )
    if uneven:
        problems.error(
            Code.CT_UNEVEN_SPACING,
            f"{_folder(ordered, problems)}: CT slice spacing is uneven: {listing(uneven)} "
            f"where {spacing:g} mm is usual; "
            "MOQUI needs equally spaced slices",
            ordered[0].path.parent,
        )
    return round(spacing, 6)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _folder(slices: list[Slice], problems: Problems) -> str:
    """How a CT-wide problem names where it is: the folder of the slices."""
    rel = problems.rel(slices[0].path.parent)
    return "./" if rel in ("", ".") else f"{rel}/"


def _pairs(ordered: list[Slice]) -> list[tuple[Slice, Slice]]:
    return list(itertools.pairwise(ordered))


def _check_thickness(ordered: list[Slice], dz: float, problems: Problems) -> None:
    thickness = ordered[0].thickness
    invalid = [
        s for s in ordered if s.thickness is not None and not (math.isfinite(s.thickness) and s.thickness > 0)
    ]
    if invalid:
        _report(
            Code.CT_SLICE_THICKNESS_INVALID,
            invalid,
            f"SliceThickness {invalid[0].thickness:g} mm; MOQUI takes the slice spacing from it, "
            "so it must be a finite number > 0",
            problems,
        )
        return
    if dz <= 0 or len(ordered) < 2:
        return
    if thickness is None or abs(thickness - dz) > max(POSITION_TOLERANCE_MM, SPACING_TOLERANCE * dz):
        shown = f"{thickness:g} mm" if thickness is not None else "missing"
        problems.warn(
            Code.CT_SLICE_THICKNESS,
            f"{problems.rel(ordered[0].path)}: SliceThickness {shown} differs from the slice spacing "
            f"{dz:g} mm; MOQUI takes the spacing from SliceThickness",
            ordered[0].path,
        )
