"""Reading DICOM headers fast and safely, and noticing truncated files.

Every file is opened once. Header values of the many CT slices are decoded from
pydicom's raw elements (``Dataset.get_item``): converting them through pydicom's
value machinery costs more than reading the header itself.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import dcmread

from mqi.intake.tags import SOP_CLASS_UID

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
# Explicit VRs whose length field is 4 bytes (after 2 reserved bytes).
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
ENCODING = "latin-1"  # only ASCII-range values (UIDs, codes, numbers, IDs) are compared


class UnreadableDicom(Exception):
    """A file that looks like DICOM but cannot be read completely."""

    def __init__(self, reason: str, *, truncated: bool = False) -> None:
        super().__init__(reason)
        self.truncated = truncated


@dataclass(frozen=True)
class Header:
    """One DICOM file's header as read from disk."""

    path: Path
    dataset: Dataset
    sop_class_uid: str
    pixel_data: bool
    # where the Pixel Data value starts in a plain little-endian file, and its declared
    # length (None: encapsulated, or a big-endian/deflated file read whole)
    pixel_offset: int | None = None
    pixel_length: int | None = None


def read_header(path: Path, *, force: bool = False) -> Header | None:
    """The header of ``path``; None for a non-DICOM file (unless ``force``).

    Raises UnreadableDicom for a DICOM file that is corrupt or truncated.
    """
    with path.open("rb") as fp:
        try:
            dataset = dcmread(fp, stop_before_pixels=True, force=force)
        except InvalidDicomError as err:
            if not force:
                return None  # no DICM prefix: not a DICOM file
            raise UnreadableDicom(f"not a DICOM file ({_first_line(err)})") from None
        except (EOFError, struct.error) as err:
            raise UnreadableDicom(f"ends early ({_first_line(err)})", truncated=True) from None
        except Exception as err:  # pydicom raises many types on corrupt input
            raise UnreadableDicom(_first_line(err)) from None
        size = os.fstat(fp.fileno()).st_size
        stopped_at = fp.tell()
        pixel: tuple[int, int | None] | None = None
        if _plain_little_endian(dataset):
            pixel = _check_pixel_data(fp, dataset, stopped_at, size) if stopped_at < size else None
            if pixel is None:
                _check_structure(fp, dataset, size)
        else:
            pixel = _pixel_data_of_whole_file(fp, force)
    sop_class = text(dataset, SOP_CLASS_UID) or _meta_sop_class(dataset)
    if not sop_class:
        raise UnreadableDicom("not a DICOM file" if force else "not a DICOM object (no SOP Class UID)")
    if pixel is None:
        return Header(path, dataset, sop_class, False)
    return Header(path, dataset, sop_class, True, *pixel)


def _pixel_data_of_whole_file(fp: BinaryIO, force: bool) -> tuple[int, int | None] | None:
    """Big-endian and deflated files: their framing cannot be walked byte by byte, so the
    whole file is read (rare: most CTs are little endian). (offset, length) of the Pixel
    Data, the offset unknown (-1); None when there is none."""
    fp.seek(0)
    try:
        whole = dcmread(fp, force=force)
    except (EOFError, struct.error) as err:
        raise UnreadableDicom(f"ends early ({_first_line(err)})", truncated=True) from None
    except Exception as err:  # pydicom raises many types on corrupt input
        raise UnreadableDicom(_first_line(err)) from None
    if "PixelData" not in whole:
        return None
    elem = whole["PixelData"]
    if elem.value is None:
        return None
    return -1, None if elem.is_undefined_length else len(elem.value)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:160]


def _meta_sop_class(dataset: Dataset) -> str | None:
    meta = getattr(dataset, "file_meta", None)
    value = meta.get("MediaStorageSOPClassUID") if meta is not None else None
    return str(value) if value else None


def _implicit(dataset: Dataset) -> bool:
    return bool(dataset.original_encoding[0])


def _plain_little_endian(dataset: Dataset) -> bool:
    """Little endian and not deflated: the framing can be walked byte by byte."""
    if dataset.original_encoding[1] is not True:
        return False
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    try:
        return syntax is not None and not syntax.is_deflated
    except (AttributeError, ValueError):
        return False


def _check_pixel_data(
    fp: BinaryIO, dataset: Dataset, offset: int, size: int
) -> tuple[int, int | None] | None:
    """(value offset, value length or None when undefined) of a Pixel Data element that
    starts at ``offset`` and whose declared value fits; None when there is none."""
    fp.seek(offset)
    head = fp.read(12)
    if len(head) < 8 or struct.unpack_from("<HH", head) != (0x7FE0, 0x0010):
        return None
    if _implicit(dataset):
        length, header = struct.unpack_from("<I", head, 4)[0], 8
    elif len(head) == 12:
        length, header = struct.unpack_from("<I", head, 8)[0], 12
    else:
        raise UnreadableDicom("pixel data cut off", truncated=True)
    if length != UNDEFINED and offset + header + length > size:
        missing = offset + header + length - size
        raise UnreadableDicom(f"pixel data is {missing} bytes short", truncated=True)
    if length != UNDEFINED and offset + header + length < size:
        _check_trailer(fp, offset + header + length, size, explicit=not _implicit(dataset))
    return offset + header, None if length == UNDEFINED else length


PADDING = (0xFFFC, 0xFFFC)  # Data Set Trailing Padding: the one element allowed after Pixel Data


def _check_trailer(fp: BinaryIO, start: int, size: int, *, explicit: bool) -> None:
    """After a defined-length Pixel Data only trailing padding may follow: anything else
    is damage that a full read would trip over (or silently take as a second image)."""
    fp.seek(start)
    tail = fp.read(size - start)
    pos = 0
    while pos < len(tail):
        if len(tail) - pos < 8 or struct.unpack_from("<HH", tail, pos) != PADDING:
            raise UnreadableDicom(f"{len(tail)} bytes of unexpected data after the pixel data")
        if explicit:
            if len(tail) - pos < 12:
                raise UnreadableDicom("ends in the middle of an element", truncated=True)
            length, pos = struct.unpack_from("<I", tail, pos + 8)[0], pos + 12
        else:
            length, pos = struct.unpack_from("<I", tail, pos + 4)[0], pos + 8
        if length == UNDEFINED or pos + length > len(tail):
            raise UnreadableDicom("ends in the middle of an element", truncated=True)
        pos += length


def _check_structure(fp: BinaryIO, dataset: Dataset, size: int) -> None:
    """Walk the element framing to the end of the file: pydicom silently accepts a
    file cut inside a sequence, which would hide beams or control points."""
    meta_length = dataset.file_meta.get("FileMetaInformationGroupLength")
    if meta_length is None:
        return
    start = PREAMBLE_LENGTH + len(MAGIC) + 12 + int(meta_length)
    fp.seek(0)
    buffer = fp.read()
    try:
        _walk(memoryview(buffer), start, size, explicit=not _implicit(dataset), until=None)
    except (struct.error, IndexError):
        raise UnreadableDicom("ends in the middle of an element", truncated=True) from None
    except RecursionError:
        raise UnreadableDicom("sequences nested too deeply to be a real DICOM object") from None


def _walk(buf: memoryview, pos: int, end: int, *, explicit: bool, until: int | None) -> int:
    """Skip elements from ``pos``; descend only into undefined lengths. Returns the end."""
    while pos < end:
        group, element = struct.unpack_from("<HH", buf, pos)
        tag = group << 16 | element
        if group == 0xFFFE:
            length = struct.unpack_from("<I", buf, pos + 4)[0]
            pos += 8
            if tag == until:
                return pos
            if tag != ITEM:
                raise UnreadableDicom(f"unexpected delimiter at byte {pos - 8}")
            pos = _skip(buf, pos, end, length, explicit=explicit, until=ITEM_DELIMITER)
            continue
        nested_explicit = explicit
        if explicit:
            vr = bytes(buf[pos + 4 : pos + 6])
            if vr in LONG_VRS:
                length = struct.unpack_from("<I", buf, pos + 8)[0]
                pos += 12
            else:
                length = struct.unpack_from("<H", buf, pos + 6)[0]
                pos += 8
            nested_explicit = vr != b"UN"
        else:
            length = struct.unpack_from("<I", buf, pos + 4)[0]
            pos += 8
        pos = _skip(buf, pos, end, length, explicit=nested_explicit, until=SEQUENCE_DELIMITER)
    if until is not None or pos > end:
        raise UnreadableDicom("ends inside a sequence", truncated=True)
    return pos


def _skip(buf: memoryview, pos: int, end: int, length: int, *, explicit: bool, until: int) -> int:
    if length == UNDEFINED:
        return _walk(buf, pos, end, explicit=explicit, until=until)
    if pos + length > end:
        raise UnreadableDicom("ends in the middle of an element", truncated=True)
    return pos + length


# --- values ----------------------------------------------------------------------------


def _raw(dataset: Dataset, tag: int) -> RawDataElement | DataElement | None:
    try:
        return dataset.get_item(tag)
    except (KeyError, ValueError, TypeError):
        return None


# Most CT header values repeat from slice to slice; decoding them once is measurably faster.
@lru_cache(maxsize=4096)
def _decode(value: bytes) -> tuple[str, ...]:
    return tuple(part.strip(" \x00") for part in value.decode(ENCODING).split("\\"))


@lru_cache(maxsize=4096)
def _floats(value: bytes) -> tuple[float, ...] | None:
    try:
        return tuple(float(v) for v in _decode(value))
    except ValueError:
        return None


def texts(dataset: Dataset, tag: int) -> list[str]:
    """The string values of a text element (UI, CS, LO, SH, DS, IS ...)."""
    elem = _raw(dataset, tag)
    if elem is None:
        return []
    value = elem.value
    if isinstance(elem, RawDataElement):
        return list(_decode(value)) if value else []
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return [str(value).strip()]
    return [str(v).strip() for v in value]


def text(dataset: Dataset, tag: int) -> str | None:
    values = texts(dataset, tag)
    return values[0] if values and values[0] else None


def numbers(dataset: Dataset, tag: int) -> list[float] | None:
    """Numeric values of a DS/IS element; None when absent, empty or malformed."""
    elem = _raw(dataset, tag)
    if isinstance(elem, RawDataElement):
        parsed = _floats(elem.value) if elem.value else None
        return list(parsed) if parsed else None
    values = texts(dataset, tag)
    try:
        return [float(v) for v in values] if values else None
    except ValueError:
        return None


def number(dataset: Dataset, tag: int) -> float | None:
    values = numbers(dataset, tag)
    return values[0] if values else None


def number_or_nan(dataset: Dataset, tag: int) -> float | None:
    """The first value of a DS/IS element; None when absent or empty, NaN when malformed
    (so that a garbled value fails a finiteness check instead of passing as absent)."""
    value = number(dataset, tag)
    if value is None and texts(dataset, tag):
        return math.nan
    return value


def unsigned_short(dataset: Dataset, tag: int) -> int | None:
    """A US value (Rows, Columns, BitsAllocated ...)."""
    elem = _raw(dataset, tag)
    if elem is None or elem.value is None:
        return None
    if isinstance(elem, RawDataElement):
        if len(elem.value) < 2:
            return None
        return int(struct.unpack_from("<H" if elem.is_little_endian else ">H", elem.value)[0])
    try:
        return int(elem.value)
    except (TypeError, ValueError):
        return None


def float32_values(dataset: Dataset, tag: int) -> np.ndarray | None:
    """An FL element's values straight from its undecoded bytes; None when it is absent,
    already decoded, of another VR or of a length that is not whole floats (the caller
    then reads it through pydicom)."""
    elem = _raw(dataset, tag)
    if not isinstance(elem, RawDataElement) or elem.VR not in ("FL", None) or elem.value is None:
        return None
    value = elem.value
    if not isinstance(value, bytes) or len(value) % 4:
        return None
    return np.frombuffer(value, dtype="<f4" if elem.is_little_endian else ">f4")


def value_bytes(dataset: Dataset, tag: int) -> int | None:
    """Length in bytes of an element's value without decoding it."""
    elem = _raw(dataset, tag)
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        return elem.length if elem.value is not None else 0
    return None
