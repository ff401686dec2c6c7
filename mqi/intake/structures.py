"""The RT Structure Set: which one belongs to the case, and whether MOQUI can use it.

Structure problems are errors only when the MOQUI parameters read structures
(``ReadStructure true``); otherwise they are warnings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydicom.dataset import Dataset

from mqi.intake.codes import Code
from mqi.intake.ct import Slice
from mqi.intake.dicomio import Header, text
from mqi.intake.model import Structure, StructureSet
from mqi.intake.problems import Problems, listing
from mqi.intake.tags import (
    FRAME_OF_REFERENCE_UID,
    PATIENT_ID,
    REFERENCED_SOP_INSTANCE_UID,
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
)


@dataclass(frozen=True)
class StructureInfo:
    header: Header
    structure_set: StructureSet
    frame_of_reference_uid: str | None
    series_uids: frozenset[str]
    image_uids: frozenset[str]
    patient_id: str | None


def read_structure_set(header: Header, problems: Problems, *, required: bool = False) -> StructureInfo | None:
    """The structure set's ROIs and references; None (an error when ``required``, since the
    engine would then be asked to read a structure set the bundle lacks) when unreadable."""
    ds = header.dataset
    try:
        structures = [
            Structure(number=int(roi.ROINumber), name=str(roi.get("ROIName", "") or ""))
            for roi in ds.get("StructureSetROISequence") or []
        ]
        series, images, frame = _references(ds)
    except (AttributeError, TypeError, ValueError, OverflowError) as err:
        problems.add(
            Code.RTSTRUCT_UNREADABLE if required else Code.DICOM_UNREADABLE,
            f"{problems.rel(header.path)}: cannot read ROIs: {err}"
            + ("; ReadStructure is true, so MOQUI needs a readable structure set" if required else ""),
            header.path,
            error=required,
        )
        return None
    return StructureInfo(
        header=header,
        structure_set=StructureSet(path=header.path, structures=structures),
        frame_of_reference_uid=frame or text(ds, FRAME_OF_REFERENCE_UID),
        series_uids=frozenset(series),
        image_uids=frozenset(images),
        patient_id=text(ds, PATIENT_ID),
    )


def _references(ds: Dataset) -> tuple[list[str], list[str], str | None]:
    """Referenced CT series and images, and the referenced Frame of Reference."""
    series: list[str] = []
    images: list[str] = []
    frame = None
    for ref_frame in ds.get("ReferencedFrameOfReferenceSequence") or []:
        frame = frame or text(ref_frame, FRAME_OF_REFERENCE_UID)
        for study in ref_frame.get("RTReferencedStudySequence") or []:
            for ref_series in study.get("RTReferencedSeriesSequence") or []:
                series.append(text(ref_series, SERIES_INSTANCE_UID) or "")
                # raw decoding: a structure set references hundreds of images
                images += [
                    text(image, REFERENCED_SOP_INSTANCE_UID) or ""
                    for image in ref_series.get("ContourImageSequence") or []
                ]
    return series, images, frame


@dataclass(frozen=True)
class StructureChecks:
    read_structure: bool
    body_contour_name: str
    plan_structure_uids: list[str]
    plan_frame: str | None
    ct_slices: list[Slice]


def check_structures(
    headers: list[Header], checks: StructureChecks, problems: Problems
) -> StructureInfo | None:
    required = checks.read_structure
    if not headers:
        if required:
            problems.error(
                Code.RTSTRUCT_MISSING,
                "no RT Structure Set in the folder, but the MOQUI parameters set ReadStructure true; "
                "add the structure set",
            )
        return None
    infos = [
        info
        for info in (read_structure_set(h, problems, required=required) for h in headers)
        if info is not None
    ]
    chosen = _choose(infos, checks, problems)
    if chosen is None:
        return None
    _check_references(chosen, checks, problems)
    if required:
        _check_body(chosen, checks.body_contour_name, problems)
    return chosen


def _choose(infos: list[StructureInfo], checks: StructureChecks, problems: Problems) -> StructureInfo | None:
    if len(infos) <= 1:
        return infos[0] if infos else None
    ct_series = {s.series_instance_uid for s in checks.ct_slices}
    for keep in (
        lambda i: text(i.header.dataset, SOP_INSTANCE_UID) in checks.plan_structure_uids,
        lambda i: bool(i.series_uids & ct_series),
        lambda i: i.frame_of_reference_uid == checks.plan_frame,
    ):
        matching = [i for i in infos if keep(i)]
        if len(matching) == 1:
            return matching[0]
        if matching:
            infos = matching
    problems.add(
        Code.MULTIPLE_RTSTRUCTS,
        f"{listing([problems.rel(i.header.path) for i in infos])}: several RT Structure Sets fit "
        "the case; keep only the one of this plan",
        infos[0].header.path,
        error=checks.read_structure,
    )
    return infos[0]


def _check_references(info: StructureInfo, checks: StructureChecks, problems: Problems) -> None:
    rel = problems.rel(info.header.path)
    reasons = []
    if checks.ct_slices:
        ct_series = {s.series_instance_uid for s in checks.ct_slices}
        ct_images = {s.sop_instance_uid for s in checks.ct_slices}
        if info.series_uids and not info.series_uids & ct_series:
            reasons.append("references another CT series")
        missing = info.image_uids - ct_images
        if missing and info.series_uids & ct_series:
            reasons.append(f"references {len(missing)} CT images that are not in the folder")
    if checks.plan_frame and info.frame_of_reference_uid not in (None, checks.plan_frame):
        reasons.append("has another Frame of Reference than the plan")
    if reasons:
        problems.add(
            Code.RTSTRUCT_NOT_REFERENCING_CT,
            f"{rel}: {'; '.join(reasons)}; use the structure set drawn on this CT",
            info.header.path,
            error=checks.read_structure,
        )


def _check_body(info: StructureInfo, body: str, problems: Problems) -> None:
    names = [s.name for s in info.structure_set.structures]
    if body in names:
        number = next(s.number for s in info.structure_set.structures if s.name == body)
        _check_body_points(info, body, number, problems)
        return
    near = [n for n in names if n.strip().casefold() == body.strip().casefold()]
    hint = f"; found {near[0]!r} (names are case-sensitive)" if near else ""
    problems.error(
        Code.BODY_CONTOUR_MISSING,
        f"{problems.rel(info.header.path)}: no ROI named {body!r} (BodyContourName){hint}; "
        f"ROIs: {', '.join(names) or 'none'}",
        info.header.path,
    )


def _check_body_points(info: StructureInfo, body: str, number: int, problems: Problems) -> None:
    """The body contour MOQUI reads: at least one contour, every coordinate finite."""
    problem = None
    try:
        contours = [
            contour
            for item in info.header.dataset.get("ROIContourSequence") or []
            if int(item.get("ReferencedROINumber", -1)) == number
            for contour in item.get("ContourSequence") or []
        ]
        points = [float(v) for contour in contours for v in (contour.get("ContourData") or [])]
        if not points:
            problem = "has no contour points"
        elif not all(math.isfinite(v) for v in points):
            problem = "has coordinates that are not finite numbers"
    except (AttributeError, TypeError, ValueError, OverflowError) as err:
        problem = f"cannot be read ({err})"
    if problem:
        problems.error(
            Code.RTSTRUCT_UNREADABLE,
            f"{problems.rel(info.header.path)}: the ROI {body!r} (BodyContourName) {problem}; "
            "MOQUI reads it with ReadStructure true: export the structure set again",
            info.header.path,
        )
