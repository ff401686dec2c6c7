"""Corrupted variants of the small synthetic case: each invalid value MOQUI or rendering
could not use, broken pixel data per transfer syntax, and valid encodings that must pass.

A variant is a name, a function that breaks a copy of the case in place, and what intake
must say: ``CODE`` (an error with that code), ``REJECT`` (some error; the exact code
depends on where the damage falls) or ``VALID`` (accepted, and rendered).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from mqi.testing.synthetic import SyntheticCase

REJECT = "REJECT"
VALID = "VALID"

Breaker = Callable[[SyntheticCase], None]


@dataclass(frozen=True)
class Variant:
    name: str
    expect: str  # a problem code, REJECT or VALID
    breaker: Breaker
    read_structure: bool = False


def edit(path: Path, change: Callable[[Dataset], object]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)


def plan(change: Callable[[Dataset], object]) -> Breaker:
    return lambda case: edit(case.plan, change)


def every_slice(change: Callable[[Dataset], object]) -> Breaker:
    def breaker(case: SyntheticCase) -> None:
        for path in case.ct:
            edit(path, change)

    return breaker


def one_slice(change: Callable[[Dataset], object], index: int = 3) -> Breaker:
    return lambda case: edit(case.ct[index], change)


def _set(keyword: str, value: object) -> Callable[[Dataset], None]:
    return lambda ds: setattr(ds, keyword, value)


def _first_point(ds: Dataset) -> Dataset:
    return ds.IonBeamSequence[0].IonControlPointSequence[0]


def _set_first_point(keyword: str, value: object) -> Callable[[Dataset], None]:
    return lambda ds: setattr(_first_point(ds), keyword, value)


def _meterset(value: object) -> Callable[[Dataset], None]:
    return lambda ds: _set("BeamMeterset", value)(ds.FractionGroupSequence[0].ReferencedBeamSequence[0])


def _fractions(value: object) -> Callable[[Dataset], None]:
    return lambda ds: setattr(ds.FractionGroupSequence[0], "NumberOfFractionsPlanned", value)


def _energy(value: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for point in ds.IonBeamSequence[0].IonControlPointSequence[:2]:
            point.NominalBeamEnergy = value

    return change


def _weights(values: Callable[[list[float]], list[float]]) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        point = _first_point(ds)
        point.ScanSpotMetersetWeights = values(list(point.ScanSpotMetersetWeights))

    return change


def _positions(value: float) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        point = _first_point(ds)
        positions = list(point.ScanSpotPositionMap)
        positions[1] = value
        point.ScanSpotPositionMap = positions

    return change


def _no_weight(ds: Dataset) -> None:
    beam = ds.IonBeamSequence[0]
    for point in beam.IonControlPointSequence:
        point.ScanSpotMetersetWeights = [0.0] * len(point.ScanSpotMetersetWeights)
        point.CumulativeMetersetWeight = "0"
    beam.FinalCumulativeMetersetWeight = "0"


def _cumulative(index: int, value: str) -> Callable[[Dataset], None]:
    return lambda ds: setattr(
        ds.IonBeamSequence[0].IonControlPointSequence[index], "CumulativeMetersetWeight", value
    )


def _final(value: str) -> Callable[[Dataset], None]:
    return lambda ds: setattr(ds.IonBeamSequence[0], "FinalCumulativeMetersetWeight", value)


def _negative_beam_number(ds: Dataset) -> None:
    ds.IonBeamSequence[0].BeamNumber = -1
    ds.FractionGroupSequence[0].ReferencedBeamSequence[0].ReferencedBeamNumber = -1


def _huge(ds: Dataset) -> None:
    ds.Rows = ds.Columns = 65535


def _short_pixels(ds: Dataset) -> None:
    ds.PixelData = bytes(ds.PixelData)[: len(ds.PixelData) // 2]


def _signed(change: Callable[[Dataset], object]) -> Callable[[Dataset], None]:
    """``change`` on a slice first made signed (the same HU)."""

    def both(ds: Dataset) -> None:
        _make_signed(ds)
        change(ds)

    return both


def _make_signed(ds: Dataset) -> None:
    if ds.PixelRepresentation == 1:
        return
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    offset = round(intercept / slope)
    values = np.frombuffer(ds.PixelData, "<u2").astype(np.int64) + offset
    ds.PixelData = values.astype("<i2").tobytes()
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = str(intercept - offset * slope)
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)


def _fake_jpeg(ds: Dataset) -> None:
    ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


def _unknown_syntax(ds: Dataset) -> None:
    ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.9.9999.1"


def _one_slice(case: SyntheticCase) -> None:
    for path in case.ct[1:]:
        path.unlink()


def _rtstruct(change: Callable[[Dataset], object]) -> Breaker:
    return lambda case: edit(case.rtstruct, change)


def _body_point_nan(ds: Dataset) -> None:
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    points = list(contour.ContourData)
    points[4] = "nan"
    contour.ContourData = points


def _unreadable_rois(ds: Dataset) -> None:
    del ds.StructureSetROISequence[0].ROINumber


def _label_and_names(ds: Dataset) -> None:
    ds.RTPlanLabel = "label\x1b[31m\nnext"


def transcode(path: Path, syntax: str) -> None:
    """Re-encode one slice in ``syntax``; the pixel values stay the same."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        if syntax == RLELossless:
            ds.compress(RLELossless, encoding_plugin="pydicom")
            ds.save_as(path)
            return
        big = syntax == ExplicitVRBigEndian
        if big:
            dtype = "<i2" if ds.PixelRepresentation else "<u2"
            ds.PixelData = np.frombuffer(ds.PixelData, dtype).byteswap().tobytes()
        ds.file_meta.TransferSyntaxUID = syntax
        dcmwrite(
            path, ds, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=not big, force_encoding=True
        )


def transcoded(syntax: str) -> Breaker:
    """Every slice re-encoded in ``syntax`` (a valid CT that must be accepted)."""

    def breaker(case: SyntheticCase) -> None:
        for path in case.ct:
            transcode(path, syntax)

    return breaker


def _signed_big_endian(case: SyntheticCase) -> None:
    every_slice(_make_signed)(case)
    transcoded(ExplicitVRBigEndian)(case)


def _transcoded_then(syntax: str, change: Callable[[Dataset], object]) -> Breaker:
    first = transcoded(syntax)

    def breaker(case: SyntheticCase) -> None:
        first(case)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(case.ct[3])
            change(ds)
            ds.save_as(case.ct[3])

    return breaker


def _appended(tail: bytes) -> Breaker:
    """Bytes after the Pixel Data element of one slice."""

    def breaker(case: SyntheticCase) -> None:
        with case.ct[3].open("ab") as handle:
            handle.write(tail)

    return breaker


def _garbage_pixels(ds: Dataset) -> None:
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        ds.PixelData = encapsulate([b"\x00\x01garbage"])
    else:
        ds.PixelData = bytes(ds.PixelData)[:100]


def variants() -> list[Variant]:
    """Every invalid value the issue lists, once per relevant CT signedness."""
    nan, inf = float("nan"), float("inf")
    iso = ["0", "nan", "0"]
    found = [
        Variant("meterset NaN", "BEAM_METERSET_INVALID", plan(_meterset("NaN"))),
        Variant("meterset inf", "BEAM_METERSET_INVALID", plan(_meterset("inf"))),
        Variant("meterset negative", "BEAM_METERSET_INVALID", plan(_meterset("-5"))),
        Variant("meterset 0", "BEAM_ZERO_METERSET", plan(_meterset("0"))),
        Variant("gantry NaN", "BEAM_GEOMETRY_INVALID", plan(_set_first_point("GantryAngle", "NaN"))),
        Variant("gantry inf", "BEAM_GEOMETRY_INVALID", plan(_set_first_point("GantryAngle", "inf"))),
        Variant("couch NaN", "BEAM_GEOMETRY_INVALID", plan(_set_first_point("PatientSupportAngle", "nan"))),
        Variant(
            "isocentre NaN",
            "BEAM_GEOMETRY_INVALID",
            plan(_set_first_point("IsocenterPosition", iso)),
        ),
        Variant("spot position NaN", "SPOT_POSITION_INVALID", plan(_positions(nan))),
        Variant("spot position inf", "SPOT_POSITION_INVALID", plan(_positions(inf))),
        Variant("spot position 1e30", "SPOT_POSITION_INVALID", plan(_positions(1e30))),
        Variant("energy NaN", "SPOT_ENERGY_INVALID", plan(_energy("NaN"))),
        Variant("energy inf", "SPOT_ENERGY_INVALID", plan(_energy("inf"))),
        Variant("energy 0", "SPOT_ENERGY_INVALID", plan(_energy("0"))),
        Variant("energy negative", "SPOT_ENERGY_INVALID", plan(_energy("-150"))),
        Variant("spot weight NaN", "SPOT_WEIGHT_INVALID", plan(_weights(lambda w: [nan, *w[1:]]))),
        Variant("spot weight inf", "SPOT_WEIGHT_INVALID", plan(_weights(lambda w: [inf, *w[1:]]))),
        Variant("spot weight negative", "SPOT_WEIGHT_INVALID", plan(_weights(lambda w: [-1.0, *w[1:]]))),
        Variant(
            "spot weights do not add up",
            "CUMULATIVE_METERSET_INVALID",
            plan(_weights(lambda w: [v * 2 for v in w])),
        ),
        Variant("cumulative NaN", "CUMULATIVE_METERSET_INVALID", plan(_cumulative(1, "NaN"))),
        Variant("cumulative starts above 0", "CUMULATIVE_METERSET_INVALID", plan(_cumulative(0, "0.5"))),
        Variant("final cumulative differs", "CUMULATIVE_METERSET_INVALID", plan(_final("1000"))),
        Variant("final cumulative inf", "CUMULATIVE_METERSET_INVALID", plan(_final("inf"))),
        Variant("no deliverable weight", "BEAM_NO_DELIVERABLE_WEIGHT", plan(_no_weight)),
        Variant("fractions 0", "PLAN_FRACTIONS_INVALID", plan(_fractions("0"))),
        Variant("fractions -3", "PLAN_FRACTIONS_INVALID", plan(_fractions("-3"))),
        Variant("negative beam number", "BEAM_NUMBER_INVALID", plan(_negative_beam_number)),
        Variant("1-slice CT", "CT_TOO_FEW_SLICES", _one_slice),
        Variant(
            "ReadStructure and unreadable ROIs",
            "RTSTRUCT_UNREADABLE",
            _rtstruct(_unreadable_rois),
            read_structure=True,
        ),
        Variant(
            "ReadStructure and a NaN in the body contour",
            "RTSTRUCT_UNREADABLE",
            _rtstruct(_body_point_nan),
            read_structure=True,
        ),
    ]
    for signed in (False, True):
        kind = "signed" if signed else "unsigned"

        def on(change: Callable[[Dataset], object], signed: bool = signed) -> Callable[[Dataset], object]:
            return _signed(change) if signed else change

        found += [
            Variant(
                f"PixelSpacing 0 ({kind})",
                "CT_PIXEL_SPACING_INVALID",
                every_slice(on(_set("PixelSpacing", ["0", "0"]))),
            ),
            Variant(
                f"PixelSpacing negative ({kind})",
                "CT_PIXEL_SPACING_INVALID",
                every_slice(on(_set("PixelSpacing", ["-2", "2"]))),
            ),
            Variant(
                f"PixelSpacing NaN ({kind})",
                "CT_PIXEL_SPACING_INVALID",
                every_slice(on(_set("PixelSpacing", ["nan", "2"]))),
            ),
            Variant(
                f"SliceThickness 0 ({kind})",
                "CT_SLICE_THICKNESS_INVALID",
                every_slice(on(_set("SliceThickness", "0"))),
            ),
            Variant(
                f"SliceThickness NaN ({kind})",
                "CT_SLICE_THICKNESS_INVALID",
                every_slice(on(_set("SliceThickness", "nan"))),
            ),
            Variant(
                f"RescaleSlope 0 ({kind})",
                "CT_RESCALE_INVALID",
                every_slice(on(_set("RescaleSlope", "0"))),
            ),
            Variant(
                f"RescaleSlope NaN ({kind})",
                "CT_RESCALE_INVALID",
                every_slice(on(_set("RescaleSlope", "NaN"))),
            ),
            Variant(
                f"RescaleIntercept inf ({kind})",
                "CT_RESCALE_INVALID",
                one_slice(on(_set("RescaleIntercept", "inf"))),
            ),
            Variant(f"short pixel data ({kind})", "CT_PIXEL_DATA_LENGTH", one_slice(on(_short_pixels))),
            Variant(
                f"Rows 65535 ({kind})",
                "CT_SIZE_INVALID",
                every_slice(on(_set("Rows", 65535))),
            ),
            Variant(
                f"Rows and Columns 65535 ({kind})",
                "CT_SIZE_INVALID",
                every_slice(on(_huge)),
            ),
            Variant(f"Rows 0 ({kind})", "CT_SIZE_INVALID", every_slice(on(_set("Rows", 0)))),
            Variant(
                f"position NaN ({kind})",
                "CT_POSITION_INVALID",
                one_slice(on(_set("ImagePositionPatient", iso))),
            ),
            Variant(f"fake JPEG ({kind})", "CT_PIXEL_DATA_UNDECODABLE", one_slice(on(_fake_jpeg))),
            Variant(f"unknown transfer syntax ({kind})", REJECT, one_slice(on(_unknown_syntax))),
        ]
    found += [
        Variant(
            "HU outside int16 (unsigned)",
            "CT_HU_RANGE",
            every_slice(_set("RescaleIntercept", "-40000")),
        ),
        Variant("big-endian CT", VALID, transcoded(ExplicitVRBigEndian)),
        Variant("deflated CT", VALID, transcoded(DeflatedExplicitVRLittleEndian)),
        Variant("implicit VR CT", VALID, transcoded(ImplicitVRLittleEndian)),
        Variant("RLE lossless CT", VALID, transcoded(RLELossless)),
        Variant(
            "big-endian signed CT",
            VALID,
            _signed_big_endian,
        ),
    ]
    found += [
        Variant("text after the pixel data", REJECT, _appended(b"garbage!!")),
        Variant(
            "a second pixel data element", REJECT, _appended(b"\xe0\x7f\x10\x00OW\x00\x00\xff\xff\xff\xff")
        ),
        Variant(
            "an element after the pixel data", REJECT, _appended(b"\x08\x00\x18\x00UI\x0a\x00" + b"1" * 10)
        ),
        Variant(
            "trailing padding after the pixel data",
            VALID,
            _appended(b"\xfc\xff\xfc\xffOB\x00\x00\x04\x00\x00\x00abcd"),
        ),
    ]
    for syntax in (ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian, RLELossless):
        name = pydicom.uid.UID(syntax).name
        found.append(Variant(f"broken pixel data, {name}", REJECT, _transcoded_then(syntax, _garbage_pixels)))
    return found
