"""DICOM RT Dose files written in a stream: the header by pydicom, the pixels slice by slice.

The dataset is built without Pixel Data and written by pydicom; the Pixel Data element
(tag, VR OW, 32-bit length) and the frames follow, appended by :class:`RTDoseWriter`
chunk by chunk, so the memory needed does not grow with the grid. The file is written
under a temporary name and renamed when complete; its sha256 is computed on the way.
"""

from __future__ import annotations

import contextlib
import decimal
import hashlib
import io
import os
import queue
import struct
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from mqi import __version__

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_ION_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.8"
GRID_FRAME_OFFSET_VECTOR_TAG = 0x3004000C
MAX_PIXEL = 2**32 - 1
MANUFACTURER = "mqi"
UID_NAMESPACE = uuid.UUID("6f1c1a52-5b0e-4d59-9a39-2f0d3c7e8a41")  # mqi RT Dose UIDs

PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientAge",
    "PatientWeight",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
)
STUDY_KEYWORDS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
TYPE2_STUDY = ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
TYPE2_PATIENT = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")


@dataclass(frozen=True)
class DoseGrid:
    """The dose grid: the CT grid. ``origin`` is the centre of the first voxel."""

    columns: int  # nx
    rows: int  # ny
    frames: int  # nz
    spacing: tuple[float, float, float]  # dx, dy, dz in mm
    origin: tuple[float, float, float]
    frame_of_reference_uid: str

    @property
    def voxels(self) -> int:
        return self.columns * self.rows * self.frames

    @property
    def frame_voxels(self) -> int:
        return self.columns * self.rows


@dataclass(frozen=True)
class DoseIdentity:
    """What makes one RT Dose distinct: its UIDs, number and what it sums."""

    sop_instance_uid: str
    series_instance_uid: str
    instance_number: int
    summation: Literal["BEAM", "PLAN"]
    beam_number: int | None = None
    fraction_group_number: int = 1


def derived_uid(*parts: object) -> str:
    """A UID derived from ``parts`` (2.25 form of a name-based UUID): the same parts always
    give the same UID, and no part can be read back from it."""
    name = "\x1f".join(str(part) for part in parts)
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, name).int}"


def _ds(value: float, rounding: str = decimal.ROUND_HALF_EVEN) -> str:
    """A DS string of at most 16 characters, as precise as fits, rounded as asked."""
    exact = decimal.Decimal(value)
    for digits in range(12, 0, -1):
        context = decimal.Context(prec=digits, rounding=rounding)
        mantissa, _, exponent = (f"{context.plus(exact):G}" if exact else "0").partition("E")
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        text = f"{mantissa}e{int(exponent)}" if exponent else mantissa
        if len(text) <= 16:
            return text
    raise ValueError(f"{value!r} cannot be written as a DS")


def dose_scaling(maximum: float) -> float:
    """DoseGridScaling for a volume whose largest value is ``maximum``: ``maximum / (2^32 - 1)``
    rounded UP to what a DS string holds, so that writer and reader use the same factor and
    no value can exceed the largest pixel."""
    if not maximum > 0:
        return 1.0
    return float(_ds(maximum / MAX_PIXEL, decimal.ROUND_CEILING))


def _copy(target: Dataset, source: Dataset | None, keywords: Sequence[str]) -> None:
    if source is None:
        return
    for keyword in keywords:
        if keyword in source:
            target[keyword] = source[keyword]


def _fill_type2(target: Dataset, keywords: Sequence[str]) -> None:
    for keyword in keywords:
        if keyword not in target:
            setattr(target, keyword, "")


def _referenced_plan(plan_uid: str, plan_class_uid: str, identity: DoseIdentity) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = plan_class_uid
    ref.ReferencedSOPInstanceUID = plan_uid
    if identity.summation == "BEAM":
        beam = Dataset()
        beam.ReferencedBeamNumber = identity.beam_number
        group = Dataset()
        group.ReferencedFractionGroupNumber = identity.fraction_group_number
        group.ReferencedBeamSequence = DicomSequence([beam])
        ref.ReferencedFractionGroupSequence = DicomSequence([group])
    return ref


def dose_dataset(
    grid: DoseGrid,
    identity: DoseIdentity,
    *,
    scaling: float,
    dose_type: str,
    plan_uid: str,
    plan_class_uid: str = RT_ION_PLAN_STORAGE,
    patient_source: Dataset | None = None,
    description: str = "",
) -> Dataset:
    """The RT Dose dataset without Pixel Data. Patient and study come from ``patient_source``
    (a CT slice header of the case)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_DOSE_STORAGE
    meta.MediaStorageSOPInstanceUID = identity.sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    if patient_source is not None and "SpecificCharacterSet" in patient_source:
        ds.SpecificCharacterSet = patient_source.SpecificCharacterSet
    ds.SOPClassUID = RT_DOSE_STORAGE
    ds.SOPInstanceUID = identity.sop_instance_uid
    _copy(ds, patient_source, PATIENT_KEYWORDS + STUDY_KEYWORDS)
    _fill_type2(ds, TYPE2_PATIENT + TYPE2_STUDY)
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = derived_uid("study", plan_uid)
    ds.Modality = "RTDOSE"
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = __version__
    ds.SeriesInstanceUID = identity.series_instance_uid
    ds.SeriesNumber = 1
    if description:
        ds.SeriesDescription = description
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = grid.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = identity.instance_number
    _image(ds, grid)
    ds.DoseUnits = "GY"
    ds.DoseType = dose_type
    ds.DoseSummationType = identity.summation
    ds.ReferencedRTPlanSequence = DicomSequence([_referenced_plan(plan_uid, plan_class_uid, identity)])
    ds.DoseGridScaling = _ds(scaling)
    return ds


def _image(ds: Dataset, grid: DoseGrid) -> None:
    dx, dy, dz = grid.spacing
    ds.ImagePositionPatient = [_ds(v) for v in grid.origin]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [_ds(dy), _ds(dx)]
    ds.SliceThickness = _ds(dz)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = grid.frames
    ds.FrameIncrementPointer = GRID_FRAME_OFFSET_VECTOR_TAG
    ds.Rows = grid.rows
    ds.Columns = grid.columns
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    ds.GridFrameOffsetVector = [_ds(k * dz) for k in range(grid.frames)]


def header_bytes(ds: Dataset) -> bytes:
    """The file (preamble, meta, dataset) as pydicom writes it, before Pixel Data."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def pixel_data_header(nbytes: int) -> bytes:
    """Tag (7FE0,0010), VR OW, reserved, 32-bit length: explicit VR little endian."""
    if nbytes % 2 or nbytes >= 2**32 - 1:
        raise ValueError(f"Pixel Data of {nbytes} bytes cannot be written with a defined length")
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, nbytes)


def to_pixels(
    values: np.ndarray,
    inverse_scaling: float,
    scratch: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Dose (Gy) in [0, maximum] -> unsigned 32-bit counts, rounded half up.

    ``values * inverse_scaling`` never exceeds 2^32 - 1 when the scaling comes from
    :func:`dose_scaling` of the volume's maximum; values must not be negative.
    """
    work = np.multiply(values, inverse_scaling, out=scratch)
    if out is None:
        out = np.empty(work.shape, dtype="<u4")
    np.add(work, 0.5, out=out, casting="unsafe")
    return out


Consumer = Callable[[memoryview], object]


class BackgroundSink:
    """Hands chunks to consumers (file writes, hashes) on one worker thread, in submission
    order, so that disk writes overlap the reading and scaling of the next frames. At most
    ``depth`` chunks wait; an error in the worker is raised by the next call here."""

    def __init__(self, depth: int = 8) -> None:
        self._queue: queue.Queue[tuple[memoryview, tuple[Consumer, ...]] | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="rtdose-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                data, consumers = item
                if self._error is None:
                    for consume in consumers:
                        consume(data)
            except BaseException as err:  # handed to the submitting thread
                self._error = err
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, data: memoryview, *consumers: Consumer) -> None:
        """Queue ``data`` for ``consumers``; ``data`` must not change afterwards."""
        self._raise()
        self._queue.put((data, consumers))

    def drain(self) -> None:
        """Wait until every queued chunk is consumed."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        self._queue.join()
        self._queue.put(None)
        self._thread.join()

    def __enter__(self) -> BackgroundSink:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


class RTDoseWriter:
    """Write one RT Dose: ``write_frames`` float Gy chunks in frame order, then ``close``.

    The file appears under its final name only after ``close`` wrote every frame. With a
    ``sink`` the writing and hashing happen on its worker thread.
    """

    def __init__(
        self,
        path: Path,
        ds: Dataset,
        grid: DoseGrid,
        scaling: float,
        sink: BackgroundSink | None = None,
    ) -> None:
        self.path = path
        self.grid = grid
        self.inverse = 1.0 / scaling
        self._sink = sink
        self._partial = path.with_name(path.name + ".partial")
        self._digest = hashlib.sha256()
        self._expected = grid.voxels * 4
        self._written = 0
        self._handle: BinaryIO | None = self._partial.open("wb")
        self._emit(memoryview(header_bytes(ds) + pixel_data_header(self._expected)))
        self.sha256: str | None = None

    def _emit(self, data: memoryview) -> None:
        assert self._handle is not None
        if self._sink is not None:
            self._sink.submit(data, self._handle.write, self._digest.update)
        else:
            self._handle.write(data)
            self._digest.update(data)

    def write_frames(
        self,
        values: np.ndarray,
        scratch: np.ndarray | None = None,
        pixels: np.ndarray | None = None,
    ) -> None:
        """Append frames of dose in Gy (any shape, frame order). ``scratch`` (float64) and,
        without a sink, ``pixels`` (uint32) are optional work buffers of the same size."""
        pixels = to_pixels(values, self.inverse, scratch, None if self._sink else pixels)
        data = memoryview(pixels).cast("B")
        self._emit(data)
        self._written += len(data)

    def close(self) -> str:
        """Finish the file; returns its sha256."""
        if self._handle is None:
            raise ValueError(f"{self.path} is already closed")
        if self._written != self._expected:
            self.abort()
            raise ValueError(f"{self.path.name}: wrote {self._written} pixel bytes of {self._expected}")
        if self._sink is not None:
            self._sink.drain()
        self._handle.close()
        self._handle = None
        os.replace(self._partial, self.path)
        self.sha256 = self._digest.hexdigest()
        return self.sha256

    def abort(self) -> None:
        if self._handle is not None:
            if self._sink is not None:
                with contextlib.suppress(BaseException):
                    self._sink.drain()
            self._handle.close()
            self._handle = None
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> RTDoseWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self.abort()
