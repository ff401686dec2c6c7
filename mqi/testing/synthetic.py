"""A synthetic, standard-conforming proton QA case for tests, the demo and benchmarks.

`build_case` writes a water phantom CT, an RT Structure Set with an ``External`` ROI
(and a ``Target``), an RT Ion Plan with pencil-beam scanning beams, and a TPS-like
RT Dose, all cross-referenced (study, frame of reference, referenced SOP instances).
The files are deterministic: the same arguments give byte-identical files, because
every UID is derived from the arguments and every date is fixed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RT_ION_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.8"

STUDY_DATE = "20240115"
STUDY_TIME = "093000"
MANUFACTURER = "mqi synthetic"
MACHINE_NAME = "SYNTH1"
PHANTOM_RADIUS_FRACTION = 0.4  # of the smaller in-plane extent
CONTOUR_POINTS = 64
DOSE_GRID_MAX = 64  # dose voxels per axis at most, to keep the TPS dose small
PRESCRIBED_DOSE_GY = 2.0
# 16-bit like most TPS exports; dciodvfy (dicom3tools) aborts on 32-bit OW pixel data.
DOSE_MAX_COUNT = 2**16 - 1


@dataclass(frozen=True)
class SyntheticCase:
    """Where `build_case` wrote each object, and the UIDs tests often need."""

    folder: Path
    plan: Path
    ct: list[Path]
    rtstruct: Path
    doses: list[Path]
    plan_uid: str
    study_uid: str
    frame_of_reference_uid: str
    ct_series_uid: str
    beam_names: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Geometry:
    rows: int
    columns: int
    slices: int
    dx: float
    dy: float
    dz: float

    @property
    def origin(self) -> tuple[float, float, float]:
        """Centre of the first voxel, with the grid centred on the isocentre (0, 0, 0)."""
        return (
            -(self.columns - 1) * self.dx / 2,
            -(self.rows - 1) * self.dy / 2,
            -(self.slices - 1) * self.dz / 2,
        )

    @property
    def radius(self) -> float:
        return PHANTOM_RADIUS_FRACTION * min(self.columns * self.dx, self.rows * self.dy)

    def z(self, index: int) -> float:
        return self.origin[2] + index * self.dz


@dataclass(frozen=True)
class _Uids:
    study: str
    frame_of_reference: str
    ct_series: str
    struct_series: str
    plan_series: str
    dose_series: str
    struct: str
    plan: str
    ct: list[str]
    doses: list[str]


def _ds(value: float) -> str:
    """A DS string of at most 16 characters."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format_number_as_ds(float(value))


def _uid(seed: str, *parts: object) -> str:
    return generate_uid(entropy_srcs=[seed, *(str(p) for p in parts)])


def _make_uids(seed: str, slices: int, doses: int) -> _Uids:
    return _Uids(
        study=_uid(seed, "study"),
        frame_of_reference=_uid(seed, "frame-of-reference"),
        ct_series=_uid(seed, "ct-series"),
        struct_series=_uid(seed, "rtstruct-series"),
        plan_series=_uid(seed, "rtplan-series"),
        dose_series=_uid(seed, "rtdose-series"),
        struct=_uid(seed, "rtstruct"),
        plan=_uid(seed, "rtplan"),
        ct=[_uid(seed, "ct", i) for i in range(slices)],
        doses=[_uid(seed, "rtdose", i) for i in range(doses)],
    )


def _seed(arguments: Sequence[object]) -> str:
    return hashlib.sha256(repr(tuple(arguments)).encode()).hexdigest()


def _base(
    sop_class: str,
    sop_uid: str,
    modality: str,
    series_uid: str,
    uids: _Uids,
    patient: tuple[str, str],
) -> Dataset:
    """Patient, General Study, Series, Equipment and SOP Common modules."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = STUDY_DATE
    ds.InstanceCreationTime = STUDY_TIME
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = STUDY_DATE
    ds.StudyTime = STUDY_TIME
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = MANUFACTURER
    ds.ReferringPhysicianName = ""
    ds.PatientName = patient[1]
    ds.PatientID = patient[0]
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = uids.study
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.OperatorsName = ""
    return ds


def _write(ds: Dataset, path: Path) -> Path:
    dcmwrite(path, ds, enforce_file_format=True)
    return path


# --- CT -------------------------------------------------------------------------------


def _phantom_pixels(geo: _Geometry, unsigned: bool) -> bytes:
    """One axial slice: water (HU 0) in a cylinder, air (-1000) outside."""
    x0, y0, _ = geo.origin
    xs = x0 + np.arange(geo.columns) * geo.dx
    ys = y0 + np.arange(geo.rows) * geo.dy
    inside = xs[np.newaxis, :] ** 2 + ys[:, np.newaxis] ** 2 <= geo.radius**2
    hu = np.where(inside, 0, -1000)
    if unsigned:
        return (hu + 1024).astype("<u2").tobytes()
    return hu.astype("<i2").tobytes()


def _ct_slice(
    geo: _Geometry, index: int, pixels: bytes, unsigned: bool, uids: _Uids, patient: tuple[str, str]
) -> Dataset:
    ds = _base(CT_IMAGE_STORAGE, uids.ct[index], "CT", uids.ct_series, uids, patient)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ContentDate = STUDY_DATE
    ds.ContentTime = STUDY_TIME
    ds.SeriesDescription = "Synthetic water phantom"
    ds.SliceThickness = _ds(geo.dz)
    ds.KVP = "120"
    ds.BodyPartExamined = "HEAD"  # an unpaired part: no Laterality needed
    ds.PatientPosition = "HFS"
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    x0, y0, _ = geo.origin
    ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(geo.z(index))]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(geo.z(index))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = geo.rows
    ds.Columns = geo.columns
    ds.PixelSpacing = [_ds(geo.dy), _ds(geo.dx)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0 if unsigned else 1
    ds.RescaleIntercept = "-1024" if unsigned else "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = pixels
    return ds


def _write_ct(
    folder: Path, geo: _Geometry, unsigned: bool, uids: _Uids, patient: tuple[str, str]
) -> list[Path]:
    pixels = _phantom_pixels(geo, unsigned)
    ct_dir = folder / "ct"
    ct_dir.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(geo.slices - 1)))
    return [
        _write(_ct_slice(geo, i, pixels, unsigned, uids, patient), ct_dir / f"CT_{i:0{width}d}.dcm")
        for i in range(geo.slices)
    ]


# --- RT Structure Set -----------------------------------------------------------------


def _circle(radius: float, z: float) -> list[str]:
    points: list[str] = []
    for k in range(CONTOUR_POINTS):
        angle = 2 * math.pi * k / CONTOUR_POINTS
        points += [
            _ds(round(radius * math.cos(angle), 3)),
            _ds(round(radius * math.sin(angle), 3)),
            _ds(z),
        ]
    return points


def _square(half: float, z: float) -> list[str]:
    corners = [(-half, -half), (half, -half), (half, half), (-half, half)]
    return [_ds(v) for x, y in corners for v in (x, y, z)]


def _image_ref(sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    item.ReferencedSOPInstanceUID = sop_uid
    return item


def _contour(points: list[str], ct_uid: str, number: int) -> Dataset:
    item = Dataset()
    item.ContourImageSequence = DicomSequence([_image_ref(ct_uid)])
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(points) // 3
    item.ContourNumber = number
    item.ContourData = points
    return item


def _target_half_width(geo: _Geometry) -> float:
    return geo.radius / 2


def _target_slices(geo: _Geometry) -> range:
    half = _target_half_width(geo)
    return range(
        next(i for i in range(geo.slices) if geo.z(i) >= -half - 1e-6),
        max(i for i in range(geo.slices) if geo.z(i) <= half + 1e-6) + 1,
    )


def _roi(
    number: int, name: str, kind: str, color: list[int], contours: list[Dataset], uids: _Uids
) -> tuple[Dataset, Dataset, Dataset]:
    """The ROI, its contours and its observation: one item for each of the three sequences."""
    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = uids.frame_of_reference
    roi.ROIName = name
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    contour = Dataset()
    contour.ROIDisplayColor = color
    contour.ContourSequence = DicomSequence(contours)
    contour.ReferencedROINumber = number
    observation = Dataset()
    observation.ObservationNumber = number
    observation.ReferencedROINumber = number
    observation.ROIObservationLabel = name
    observation.RTROIInterpretedType = kind
    observation.ROIInterpreter = ""
    return roi, contour, observation


def _rtstruct(geo: _Geometry, uids: _Uids, patient: tuple[str, str]) -> Dataset:
    ds = _base(RT_STRUCTURE_SET_STORAGE, uids.struct, "RTSTRUCT", uids.struct_series, uids, patient)
    ds.SeriesDescription = "Synthetic structures"
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.StructureSetLabel = "SYNTH"
    ds.StructureSetDate = STUDY_DATE
    ds.StructureSetTime = STUDY_TIME
    series = Dataset()
    series.SeriesInstanceUID = uids.ct_series
    series.ContourImageSequence = DicomSequence([_image_ref(uid) for uid in uids.ct])
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired)
    study.ReferencedSOPInstanceUID = uids.study
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = uids.frame_of_reference
    frame.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])

    external = [_contour(_circle(geo.radius, geo.z(i)), uids.ct[i], i + 1) for i in range(geo.slices)]
    half = _target_half_width(geo)
    target = [_contour(_square(half, geo.z(i)), uids.ct[i], n + 1) for n, i in enumerate(_target_slices(geo))]
    rois = [
        _roi(1, "External", "EXTERNAL", [0, 255, 0], external, uids),
        _roi(2, "Target", "PTV", [255, 0, 0], target, uids),
    ]
    ds.StructureSetROISequence = DicomSequence([r[0] for r in rois])
    ds.ROIContourSequence = DicomSequence([r[1] for r in rois])
    ds.RTROIObservationsSequence = DicomSequence([r[2] for r in rois])
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


# --- RT Ion Plan ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Layer:
    energy: float
    positions: list[float]
    weights: list[float]

    @property
    def meterset(self) -> float:
        return float(sum(self.weights))


def _spot_grid(count: int, half_width: float) -> np.ndarray:
    """``count`` (x, y) positions on a square grid covering the target."""
    side = max(1, math.ceil(math.sqrt(count)))
    step = 2 * half_width / max(1, side - 1) if side > 1 else 0.0
    axis = -half_width + step * np.arange(side)
    xx, yy = np.meshgrid(axis, axis)
    grid = np.column_stack([xx.ravel(), yy.ravel()])[:count]
    return np.round(grid, 2)


def _layers(beam_index: int, layers: int, spots: int, half_width: float, seed: str) -> list[_Layer]:
    rng = np.random.default_rng(int(seed[:16], 16) + beam_index)
    positions = _spot_grid(spots, half_width).astype("<f4").ravel().tolist()
    result = []
    for k in range(layers):
        energy = round(max(70.0, 150.0 - 3.0 * k), 1)
        weights = np.round(rng.uniform(0.5, 1.5, spots), 3).astype("<f4").tolist()
        result.append(_Layer(energy, positions, weights))
    return result


def _control_point(index: int, layer: _Layer, cumulative: float, first: bool) -> Dataset:
    cp = Dataset()
    cp.ControlPointIndex = index
    cp.NominalBeamEnergy = _ds(layer.energy)
    cp.CumulativeMetersetWeight = _ds(round(cumulative, 6))
    cp.ScanSpotTuneID = "1.0"
    cp.NumberOfScanSpotPositions = len(layer.weights)
    cp.ScanSpotPositionMap = layer.positions
    cp.ScanSpotMetersetWeights = layer.weights if first else [0.0] * len(layer.weights)
    cp.ScanningSpotSize = [8.0, 8.0]
    cp.NumberOfPaintings = 1
    return cp


def _first_geometry(cp: Dataset, gantry: float) -> None:
    """Geometry that control point 0 must carry."""
    cp.GantryAngle = _ds(gantry)
    cp.GantryRotationDirection = "NONE"
    cp.BeamLimitingDeviceAngle = "0"
    cp.BeamLimitingDeviceRotationDirection = "NONE"
    cp.PatientSupportAngle = "0"
    cp.PatientSupportRotationDirection = "NONE"
    cp.TableTopVerticalPosition = "0"
    cp.TableTopLongitudinalPosition = "0"
    cp.TableTopLateralPosition = "0"
    cp.IsocenterPosition = ["0", "0", "0"]
    cp.TableTopPitchAngle = 0.0
    cp.TableTopPitchRotationDirection = "NONE"
    cp.TableTopRollAngle = 0.0
    cp.TableTopRollRotationDirection = "NONE"
    cp.SnoutPosition = 300.0


def _control_points(layers: list[_Layer], gantry: float) -> list[Dataset]:
    points: list[Dataset] = []
    cumulative = 0.0
    for layer in layers:
        points.append(_control_point(len(points), layer, cumulative, first=True))
        cumulative += layer.meterset
        points.append(_control_point(len(points), layer, cumulative, first=False))
    _first_geometry(points[0], gantry)
    return points


def _beam_common(number: int, name: str, delivery: str) -> Dataset:
    beam = Dataset()
    beam.Manufacturer = MANUFACTURER
    beam.TreatmentMachineName = MACHINE_NAME
    beam.PrimaryDosimeterUnit = "MU"
    beam.BeamNumber = number
    beam.BeamName = name
    beam.BeamType = "STATIC"
    beam.RadiationType = "PROTON"
    beam.TreatmentDeliveryType = delivery
    beam.NumberOfWedges = 0
    beam.NumberOfCompensators = 0
    beam.NumberOfBoli = 0
    beam.NumberOfBlocks = 0
    beam.NumberOfRangeShifters = 0
    beam.NumberOfLateralSpreadingDevices = 0
    beam.NumberOfRangeModulators = 0
    beam.PatientSupportType = "TABLE"
    beam.PatientSupportID = "COUCH"
    beam.ReferencedPatientSetupNumber = 1
    beam.ReferencedToleranceTableNumber = 1
    return beam


def _treatment_beam(number: int, name: str, gantry: float, layers: list[_Layer]) -> Dataset:
    beam = _beam_common(number, name, "TREATMENT")
    points = _control_points(layers, gantry)
    beam.FinalCumulativeMetersetWeight = points[-1].CumulativeMetersetWeight
    beam.NumberOfControlPoints = len(points)
    beam.ScanMode = "MODULATED"
    beam.ModulatedScanModeType = "STATIONARY"
    beam.VirtualSourceAxisDistances = [2000.0, 2000.0]
    snout = Dataset()
    snout.SnoutID = "S1"
    beam.SnoutSequence = DicomSequence([snout])
    beam.IonControlPointSequence = DicomSequence(points)
    return beam


def _setup_beam(number: int) -> Dataset:
    beam = _beam_common(number, "SETUP", "SETUP")
    beam.FinalCumulativeMetersetWeight = "0"
    beam.NumberOfControlPoints = 2
    beam.ScanMode = "NONE"
    beam.VirtualSourceAxisDistances = [2000.0, 2000.0]
    points = []
    for index in range(2):
        cp = Dataset()
        cp.ControlPointIndex = index
        cp.NominalBeamEnergy = "150"
        cp.CumulativeMetersetWeight = "0"
        points.append(cp)
    _first_geometry(points[0], 0.0)
    del points[0].SnoutPosition
    beam.IonControlPointSequence = DicomSequence(points)
    return beam


def _tolerance_table() -> Dataset:
    table = Dataset()
    table.ToleranceTableNumber = 1
    table.ToleranceTableLabel = "SYNTH"
    table.GantryAngleTolerance = "1"
    table.PatientSupportAngleTolerance = "1"
    return table


def _fraction_group(beams: list[tuple[int, float]]) -> Dataset:
    group = Dataset()
    group.FractionGroupNumber = 1
    group.NumberOfFractionsPlanned = 1
    group.NumberOfBeams = len(beams)
    group.NumberOfBrachyApplicationSetups = 0
    refs = []
    for number, meterset in beams:
        ref = Dataset()
        ref.BeamMeterset = _ds(round(meterset, 6))
        ref.ReferencedBeamNumber = number
        refs.append(ref)
    group.ReferencedBeamSequence = DicomSequence(refs)
    return group


def _rtplan(
    geo: _Geometry,
    uids: _Uids,
    patient: tuple[str, str],
    beam_layers: list[list[_Layer]],
    names: list[str],
    setup_beam: bool,
) -> Dataset:
    ds = _base(RT_ION_PLAN_STORAGE, uids.plan, "RTPLAN", uids.plan_series, uids, patient)
    ds.SeriesDescription = "Synthetic ion plan"
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.RTPlanLabel = "SYNTH_PLAN"
    ds.RTPlanName = "Synthetic plan"
    ds.RTPlanDate = STUDY_DATE
    ds.RTPlanTime = STUDY_TIME
    ds.PlanIntent = "VERIFICATION"
    ds.RTPlanGeometry = "PATIENT"
    struct_ref = Dataset()
    struct_ref.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
    struct_ref.ReferencedSOPInstanceUID = uids.struct
    ds.ReferencedStructureSetSequence = DicomSequence([struct_ref])
    count = len(beam_layers)
    beams = [
        _treatment_beam(i + 1, names[i], round(360.0 * i / count, 1) % 360, layers)
        for i, layers in enumerate(beam_layers)
    ]
    meterset = [(i + 1, sum(layer.meterset for layer in layers)) for i, layers in enumerate(beam_layers)]
    ds.FractionGroupSequence = DicomSequence([_fraction_group(meterset)])
    setup = Dataset()
    setup.PatientPosition = "HFS"
    setup.PatientSetupNumber = 1
    ds.PatientSetupSequence = DicomSequence([setup])
    ds.IonToleranceTableSequence = DicomSequence([_tolerance_table()])
    if setup_beam:
        beams.append(_setup_beam(count + 1))
    ds.IonBeamSequence = DicomSequence(beams)
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


# --- RT Dose --------------------------------------------------------------------------


def _dose_grid(geo: _Geometry) -> tuple[int, int, int, int, int]:
    """(stride_xy, stride_z, rows, columns, frames) of a coarser grid inside the CT."""
    stride = max(1, math.ceil(max(geo.rows, geo.columns) / DOSE_GRID_MAX))
    stride_z = max(1, math.ceil(geo.slices / DOSE_GRID_MAX))
    return (
        stride,
        stride_z,
        math.ceil(geo.rows / stride),
        math.ceil(geo.columns / stride),
        math.ceil(geo.slices / stride_z),
    )


@dataclass(frozen=True)
class TpsDoseModel:
    """How the synthetic TPS dose is made.

    ``standin``: the stand-in engine's own (noiseless) dose model for the plan's beams,
    EFFECTIVE, scaled as the stand-in scales it (ParticlesPerHistory x RBE x fractions),
    so that a case run through the stand-in passes QA. ``shift_mm`` moves the dose in
    patient coordinates and ``scale`` multiplies it: cases that must fail QA.
    ``gaussian``: a smooth blob of the prescribed dose (the older, model-free dose)."""

    kind: str = "standin"
    particles_per_history: float = 1.0
    rbe: float = 1.1
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0

    @property
    def dose_type(self) -> str:
        return "EFFECTIVE" if self.kind == "standin" and self.rbe != 1.0 else "PHYSICAL"


def _gaussian_dose(geo: _Geometry, scale: float) -> np.ndarray:
    stride, stride_z, rows, columns, frames = _dose_grid(geo)
    x0, y0, z0 = geo.origin
    xs = x0 + np.arange(columns) * geo.dx * stride
    ys = y0 + np.arange(rows) * geo.dy * stride
    zs = z0 + np.arange(frames) * geo.dz * stride_z
    sigma = max(_target_half_width(geo), 1.0)
    return scale * np.exp(
        -(zs[:, None, None] ** 2 + ys[None, :, None] ** 2 + xs[None, None, :] ** 2) / (2 * sigma**2)
    )


def standin_doses(geo: _Geometry, plan: Dataset, model: TpsDoseModel) -> dict[int, np.ndarray]:
    """Per beam number, the stand-in engine's noiseless dose on the CT grid, (z, y, x)."""
    from mqi.testing import standin  # the engine double's model, shared so the two agree

    x0, y0, _ = geo.origin
    grid = standin.Grid(
        geo.columns, geo.rows, geo.dx, geo.dy, x0, y0, tuple(geo.z(k) for k in range(geo.slices))
    )
    fractions = standin.fractions_planned(plan)
    factor = model.particles_per_history * model.rbe * fractions * model.scale
    return {
        beam.number: standin.compute_beam(grid, beam, "dose") * factor
        for beam in standin.plan_beams(plan)
        if not beam.setup
    }


def _dose_pixels(dose: np.ndarray) -> tuple[bytes, float]:
    grid_scaling = float(f"{max(float(dose.max()), 1e-9) / DOSE_MAX_COUNT:.6e}")
    counts = np.clip(np.round(dose / grid_scaling), 0, DOSE_MAX_COUNT).astype("<u2")
    return counts.tobytes(), grid_scaling


def _rtdose(
    geo: _Geometry,
    uids: _Uids,
    patient: tuple[str, str],
    index: int,
    beam: int | None,
    dose: np.ndarray,
    dose_type: str = "PHYSICAL",
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Dataset:
    ds = _base(RT_DOSE_STORAGE, uids.doses[index], "RTDOSE", uids.dose_series, uids, patient)
    ds.ContentDate = STUDY_DATE
    ds.ContentTime = STUDY_TIME
    ds.SeriesDescription = "Synthetic TPS dose"
    ds.InstanceNumber = index + 1
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PositionReferenceIndicator = ""
    stride, stride_z, rows, columns, frames = _dose_grid(geo)
    ds.SliceThickness = _ds(geo.dz * stride_z)
    ds.ImagePositionPatient = [_ds(v + d) for v, d in zip(geo.origin, shift_mm, strict=True)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x3004000C
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [_ds(geo.dy * stride), _ds(geo.dx * stride)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = dose_type
    ds.DoseSummationType = "PLAN" if beam is None else "BEAM"
    plan_ref = Dataset()
    plan_ref.ReferencedSOPClassUID = RT_ION_PLAN_STORAGE
    plan_ref.ReferencedSOPInstanceUID = uids.plan
    if beam is not None:
        beam_ref = Dataset()
        beam_ref.ReferencedBeamNumber = beam
        group_ref = Dataset()
        group_ref.ReferencedBeamSequence = DicomSequence([beam_ref])
        group_ref.ReferencedFractionGroupNumber = 1
        plan_ref.ReferencedFractionGroupSequence = DicomSequence([group_ref])
    ds.ReferencedRTPlanSequence = DicomSequence([plan_ref])
    ds.GridFrameOffsetVector = [_ds(k * geo.dz * stride_z) for k in range(frames)]
    pixels, scaling = _dose_pixels(dose)
    ds.DoseGridScaling = _ds(scaling)
    ds.TissueHeterogeneityCorrection = "IMAGE"
    ds.PixelData = pixels
    return ds


def _write_doses(
    folder: Path,
    geo: _Geometry,
    uids: _Uids,
    patient: tuple[str, str],
    plan: Dataset,
    per_beam: bool,
    model: TpsDoseModel,
) -> list[Path]:
    stride, stride_z, *_ = _dose_grid(geo)
    if model.kind == "standin":
        on_ct = standin_doses(geo, plan, model)
        beam_doses = {n: dose[::stride_z, ::stride, ::stride] for n, dose in on_ct.items()}
    else:
        count = len([b for b in plan.IonBeamSequence if b.TreatmentDeliveryType == "TREATMENT"])
        blob = _gaussian_dose(geo, model.scale * PRESCRIBED_DOSE_GY / count)
        beam_doses = {
            int(b.BeamNumber): blob for b in plan.IonBeamSequence if b.TreatmentDeliveryType == "TREATMENT"
        }
    total = np.sum(list(beam_doses.values()), axis=0)
    common = {"dose_type": model.dose_type, "shift_mm": model.shift_mm}
    paths = [_write(_rtdose(geo, uids, patient, 0, None, total, **common), folder / "RD_plan.dcm")]
    if per_beam:
        for index, (number, dose) in enumerate(sorted(beam_doses.items()), start=1):
            ds = _rtdose(geo, uids, patient, index, number, dose, **common)
            paths.append(_write(ds, folder / f"RD_beam{number}.dcm"))
    return paths


# --- the case -------------------------------------------------------------------------


def build_case(
    out_dir: Path,
    *,
    beams: int = 2,
    layers: int = 3,
    spots_per_layer: int = 16,
    ct_shape: tuple[int, int, int] = (64, 64, 40),  # rows, columns, slices
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.5),  # dx, dy, dz in mm
    unsigned_ct: bool = True,
    with_tps_dose: bool = True,
    patient_id: str = "MQI-SYNTH-001",
    patient_name: str = "Synthetic^Phantom",
    beam_names: list[str] | None = None,
    setup_beam: bool = False,
    per_beam_doses: bool = False,
    seed: str = "",
    tps_dose: TpsDoseModel | None = None,
) -> SyntheticCase:
    """Write a complete synthetic case into ``out_dir`` (created if missing).

    Layout: ``RP_plan.dcm``, ``RS_struct.dcm``, ``RD_plan.dcm`` (and ``RD_beam<n>.dcm``
    with ``per_beam_doses``), ``ct/CT_<index>.dcm``. ``seed`` changes every UID without
    changing the geometry, to build distinct cases of the same shape. ``tps_dose`` says
    how the TPS dose is made (default: the stand-in's model, so the case passes QA); it
    changes no UID and no other file.
    """
    if beams < 1 or layers < 1 or spots_per_layer < 1:
        raise ValueError("beams, layers and spots_per_layer must be at least 1")
    names = list(beam_names) if beam_names is not None else [f"B{i + 1}" for i in range(beams)]
    if len(names) != beams:
        raise ValueError(f"beam_names has {len(names)} names for {beams} beams")
    rows, columns, slices = ct_shape
    geo = _Geometry(rows, columns, slices, *spacing)
    key = _seed(
        [
            beams,
            layers,
            spots_per_layer,
            ct_shape,
            spacing,
            unsigned_ct,
            patient_id,
            names,
            setup_beam,
            seed,
        ]
    )
    dose_count = (1 + (beams if per_beam_doses else 0)) if with_tps_dose else 0
    uids = _make_uids(key, slices, dose_count)
    patient = (patient_id, patient_name)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)

    ct = _write_ct(folder, geo, unsigned_ct, uids, patient)
    rtstruct = _write(_rtstruct(geo, uids, patient), folder / "RS_struct.dcm")
    half = _target_half_width(geo)
    beam_layers = [_layers(b, layers, spots_per_layer, half, key) for b in range(beams)]
    plan_ds = _rtplan(geo, uids, patient, beam_layers, names, setup_beam)
    plan = _write(plan_ds, folder / "RP_plan.dcm")
    model = tps_dose or TpsDoseModel()
    doses = _write_doses(folder, geo, uids, patient, plan_ds, per_beam_doses, model) if with_tps_dose else []
    return SyntheticCase(
        folder=folder,
        plan=plan,
        ct=ct,
        rtstruct=rtstruct,
        doses=doses,
        plan_uid=uids.plan,
        study_uid=uids.study,
        frame_of_reference_uid=uids.frame_of_reference,
        ct_series_uid=uids.ct_series,
        beam_names=names,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mqi.testing.synthetic FOLDER``: write a synthetic case (for the demo and trials)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mqi.testing.synthetic", description="Write a synthetic water-phantom proton case."
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument("--beams", type=int, default=2)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--spots-per-layer", type=int, default=16)
    parser.add_argument("--shape", default="64,64,40", help="rows,columns,slices")
    parser.add_argument("--no-tps-dose", action="store_true", help="write no TPS RT Dose")
    parser.add_argument(
        "--tps-shift-mm", default="0,0,0", help="move the TPS dose by x,y,z mm (a case that must fail QA)"
    )
    parser.add_argument("--tps-scale", type=float, default=1.0, help="multiply the TPS dose (e.g. 1.05)")
    parser.add_argument(
        "--particles-per-history", type=float, default=1.0, help="the engine's ParticlesPerHistory"
    )
    args = parser.parse_args(argv)
    rows, columns, slices = (int(v) for v in args.shape.split(","))
    sx, sy, sz = (float(v) for v in args.tps_shift_mm.split(","))
    model = TpsDoseModel(
        particles_per_history=args.particles_per_history, shift_mm=(sx, sy, sz), scale=args.tps_scale
    )
    case = build_case(
        args.folder,
        beams=args.beams,
        layers=args.layers,
        spots_per_layer=args.spots_per_layer,
        ct_shape=(rows, columns, slices),
        with_tps_dose=not args.no_tps_dose,
        tps_dose=model,
    )
    print(f"wrote a {args.beams}-beam synthetic case to {case.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
