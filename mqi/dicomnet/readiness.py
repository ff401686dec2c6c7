"""Which received instances make a case, and when that case is ready (pure functions).

A case is one RT Ion Plan with what it refers to: the RT Structure Set it references
(Referenced Structure Set Sequence), the CT series that structure set was drawn on (or,
when the plan references no structure set, the CT of the plan's frame of reference),
and any TPS RT Dose that references the plan. The case is *complete* when the plan, the
structure set and every CT image the structure set lists have arrived, and at least one
CT image of the case's series is there. It is *ready* when it is complete and either no
instance of it came for ``quiet_seconds``, or the association that delivered its latest
instance was released normally (the sender said it was done). An aborted association is
never such a signal, so a half-sent case waits for the missing instances.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from mqi.dicomnet.sop import CT_IMAGE, RT_DOSE, RT_ION_PLAN, RT_STRUCTURE_SET

CASE_KEY_LENGTH = 16


@dataclass(frozen=True)
class Instance:
    """What the spool knows about one stored instance (never a name or patient id)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    frame_uid: str
    # RT Ion Plan: referenced structure sets; RT Dose: referenced plans;
    # RT Structure Set: the CT images its contours were drawn on.
    referenced_instances: tuple[str, ...] = ()
    referenced_series: tuple[str, ...] = ()  # RT Structure Set: the CT series
    path: Path = Path()


@dataclass
class Arrival:
    """When an instance was last received (first copy or a repeat) and by which association."""

    at: float
    association: int | None = None


@dataclass(frozen=True)
class CaseSet:
    """One plan and the instances that belong to it in the spool."""

    key: str
    plan: Instance
    structure_set: Instance | None
    ct: tuple[Instance, ...]
    doses: tuple[Instance, ...]
    missing: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def members(self) -> tuple[Instance, ...]:
        head = (self.plan,) if self.structure_set is None else (self.plan, self.structure_set)
        return head + self.ct + self.doses


@dataclass(frozen=True)
class Decision:
    case: CaseSet
    ready: bool
    why: str


@dataclass
class SpoolIndex:
    """Every stored instance by SOP Instance UID, with its latest arrival."""

    instances: dict[str, Instance] = field(default_factory=dict)
    arrivals: dict[str, Arrival] = field(default_factory=dict)
    released: set[int] = field(default_factory=set)  # associations released normally

    def add(self, instance: Instance, arrival: Arrival) -> bool:
        """Record an arrival; True when the instance is new."""
        new = instance.sop_instance_uid not in self.instances
        if new:
            self.instances[instance.sop_instance_uid] = instance
        self.arrivals[instance.sop_instance_uid] = arrival
        return new


def case_key(plan: Instance) -> str:
    """The case folder's opaque name: a hash of study, frame of reference and plan UIDs.

    The same plan sent again gives the same key (not a new case); a new plan version has a
    new SOP Instance UID and so a new key.
    """
    text = f"mqi-dicom-case:{plan.study_uid}:{plan.frame_uid}:{plan.sop_instance_uid}"
    return hashlib.sha256(text.encode()).hexdigest()[:CASE_KEY_LENGTH]


def assemble(plan: Instance, instances: Iterable[Instance]) -> CaseSet:
    """The case of ``plan`` from everything stored, and what it still waits for."""
    everything = list(instances)
    by_uid = {item.sop_instance_uid: item for item in everything}
    missing: list[str] = []
    structure_set = None
    for uid in plan.referenced_instances:
        found = by_uid.get(uid)
        if found is not None and found.sop_class_uid == RT_STRUCTURE_SET:
            structure_set = found
            break
    cts = [item for item in everything if item.sop_class_uid == CT_IMAGE]
    if plan.referenced_instances and structure_set is None:
        missing.append("the structure set the plan references")
        ct: list[Instance] = []
    elif structure_set is not None:
        series = set(structure_set.referenced_series)
        wanted = set(structure_set.referenced_instances)
        ct = [item for item in cts if item.series_uid in series or item.sop_instance_uid in wanted]
        if not series and not wanted:
            ct = [item for item in cts if item.frame_uid == plan.frame_uid]
        absent = wanted - {item.sop_instance_uid for item in ct}
        if absent:
            missing.append(f"{len(absent)} of {len(wanted)} CT images the structure set references")
    else:
        ct = [item for item in cts if plan.frame_uid and item.frame_uid == plan.frame_uid]
    if not ct and not missing:
        missing.append("the CT series")
    doses = [
        item
        for item in everything
        if item.sop_class_uid == RT_DOSE and plan.sop_instance_uid in item.referenced_instances
    ]
    ct.sort(key=lambda item: item.sop_instance_uid)
    doses.sort(key=lambda item: item.sop_instance_uid)
    return CaseSet(case_key(plan), plan, structure_set, tuple(ct), tuple(doses), tuple(missing))


def decide(index: SpoolIndex, now: float, quiet_seconds: float, handed: Iterable[str] = ()) -> list[Decision]:
    """One decision per plan in the spool whose case was not handed over yet."""
    done = set(handed)
    plans = [item for item in index.instances.values() if item.sop_class_uid == RT_ION_PLAN]
    decisions = []
    for plan in sorted(plans, key=lambda item: item.sop_instance_uid):
        if case_key(plan) in done:
            continue
        case = assemble(plan, index.instances.values())
        decisions.append(_decide_one(case, index.arrivals, index.released, now, quiet_seconds))
    return decisions


def _decide_one(
    case: CaseSet, arrivals: Mapping[str, Arrival], released: set[int], now: float, quiet_seconds: float
) -> Decision:
    if not case.complete:
        return Decision(case, False, "waiting for " + ", ".join(case.missing))
    latest = max(
        (arrivals[m.sop_instance_uid] for m in case.members if m.sop_instance_uid in arrivals),
        key=lambda arrival: arrival.at,
        default=Arrival(0.0),
    )
    if latest.association is not None and latest.association in released:
        return Decision(case, True, "complete, and the sender released the association")
    quiet = now - latest.at
    if quiet >= quiet_seconds:
        return Decision(case, True, f"complete, nothing new for {quiet:.0f} s")
    return Decision(case, False, f"complete; waiting for {quiet_seconds:g} s of quiet ({quiet:.0f} s so far)")


def describe(dataset: Dataset, path: Path = Path()) -> Instance:
    """The spool's record of a dataset: UIDs and references only."""
    sop_class = str(dataset.get("SOPClassUID", ""))
    referenced: list[str] = []
    series: list[str] = []
    frame = str(dataset.get("FrameOfReferenceUID", "") or "")
    if sop_class == RT_ION_PLAN:
        referenced = _uids(dataset.get("ReferencedStructureSetSequence"))
    elif sop_class == RT_DOSE:
        referenced = _uids(dataset.get("ReferencedRTPlanSequence"))
    elif sop_class == RT_STRUCTURE_SET:
        for frame_item in dataset.get("ReferencedFrameOfReferenceSequence") or []:
            frame = frame or str(frame_item.get("FrameOfReferenceUID", "") or "")
            for study in frame_item.get("RTReferencedStudySequence") or []:
                for item in study.get("RTReferencedSeriesSequence") or []:
                    if item.get("SeriesInstanceUID"):
                        series.append(str(item.SeriesInstanceUID))
                    referenced += _uids(item.get("ContourImageSequence"))
    return Instance(
        sop_instance_uid=str(dataset.get("SOPInstanceUID", "")),
        sop_class_uid=sop_class,
        study_uid=str(dataset.get("StudyInstanceUID", "") or ""),
        series_uid=str(dataset.get("SeriesInstanceUID", "") or ""),
        frame_uid=frame,
        referenced_instances=tuple(dict.fromkeys(referenced)),
        referenced_series=tuple(dict.fromkeys(series)),
        path=path,
    )


def _uids(sequence: Iterable[Dataset] | None) -> list[str]:
    return [
        str(item.ReferencedSOPInstanceUID) for item in sequence or [] if item.get("ReferencedSOPInstanceUID")
    ]
