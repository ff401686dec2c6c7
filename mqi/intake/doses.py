"""TPS RT Dose files: kept for comparison with the Monte Carlo result, never simulated."""

from __future__ import annotations

from pydicom.dataset import Dataset

from mqi.intake.codes import Code
from mqi.intake.dicomio import Header
from mqi.intake.model import TPSDose
from mqi.intake.problems import Problems


def tps_doses(headers: list[Header], plan_uid: str | None, problems: Problems) -> list[TPSDose]:
    """The RT Dose files of the chosen plan; doses of other plans are left out with a warning."""
    doses: list[TPSDose] = []
    for header in headers:
        ds = header.dataset
        try:
            referenced, beam = _plan_and_beam(ds)
            dose = TPSDose(
                path=header.path,
                summation_type=str(ds.get("DoseSummationType", "") or ""),
                dose_type=str(ds.get("DoseType", "") or ""),
                beam_number=beam,
            )
        except (AttributeError, TypeError, ValueError) as err:
            problems.warn(
                Code.DICOM_UNREADABLE,
                f"{problems.rel(header.path)}: cannot read the RT Dose: {err}",
                header.path,
            )
            continue
        if plan_uid and referenced and referenced != plan_uid:
            problems.warn(
                Code.TPS_DOSE_OTHER_PLAN,
                f"{problems.rel(header.path)}: RT Dose of another plan ({referenced}); left out",
                header.path,
            )
            continue
        doses.append(dose)
    return sorted(doses, key=lambda d: (d.beam_number is not None, d.beam_number or 0, str(d.path)))


def _plan_and_beam(ds: Dataset) -> tuple[str | None, int | None]:
    refs = ds.get("ReferencedRTPlanSequence") or []
    if not refs:
        return None, None
    plan_ref = refs[0]
    referenced = str(plan_ref.get("ReferencedSOPInstanceUID", "")) or None
    beam = None
    if str(ds.get("DoseSummationType", "")).upper() == "BEAM":
        for group in plan_ref.get("ReferencedFractionGroupSequence") or []:
            for beam_ref in group.get("ReferencedBeamSequence") or []:
                if beam_ref.get("ReferencedBeamNumber") is not None:
                    beam = int(beam_ref.ReferencedBeamNumber)
    return referenced, beam
