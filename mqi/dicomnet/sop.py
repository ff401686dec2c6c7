"""The SOP classes, transfer syntaxes and DIMSE statuses mqi's DICOM node uses."""

from __future__ import annotations

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
RT_ION_PLAN = "1.2.840.10008.5.1.4.1.1.481.8"

# What a case is made of; anything else is refused at presentation-context negotiation.
STORAGE_CLASSES: dict[str, str] = {
    RT_ION_PLAN: "RT Ion Plan",
    CT_IMAGE: "CT Image",
    RT_STRUCTURE_SET: "RT Structure Set",
    RT_DOSE: "RT Dose",
}

# Intake reads little-endian uncompressed files; every sender must offer implicit VR.
ACCEPTED_TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

# File name prefixes inside a case folder (the usual TPS export names).
PREFIX = {RT_ION_PLAN: "RP", CT_IMAGE: "CT", RT_STRUCTURE_SET: "RS", RT_DOSE: "RD"}

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

_STATUS_TEXT = {
    SUCCESS: "success",
    OUT_OF_RESOURCES: "out of resources",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "dataset does not match SOP class",
    CANNOT_UNDERSTAND: "cannot understand",
    0x0122: "SOP class not supported",
    0x0124: "refused: not authorised",
    0x0211: "unrecognised operation",
}


def status_text(status: int) -> str:
    """A DIMSE status as words, e.g. ``0xA700 out of resources``."""
    text = _STATUS_TEXT.get(status)
    if text is None:
        if 0xA700 <= status <= 0xA7FF:
            text = "out of resources"
        elif 0xB000 <= status <= 0xBFFF or status in (0x0001, 0x0107, 0x0116):
            text = "warning"
        elif 0xC000 <= status <= 0xCFFF:
            text = "cannot understand"
        else:
            text = "failure"
    return f"0x{status:04X} {text}"


def is_success(status: int) -> bool:
    """Success or a warning: the peer stored the instance."""
    return status == SUCCESS or status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF
