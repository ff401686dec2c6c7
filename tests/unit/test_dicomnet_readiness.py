"""Which received instances make a case and when it is ready: known answers on small spools."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from mqi.dicomnet.readiness import Arrival, Instance, SpoolIndex, assemble, case_key, decide, describe
from mqi.dicomnet.sop import CT_IMAGE, RT_DOSE, RT_ION_PLAN, RT_STRUCTURE_SET
from mqi.testing.synthetic import build_case

QUIET = 30.0
STUDY, FRAME, SERIES = "1.2.3", "1.2.3.9", "1.2.3.4"


def ct(n: int, series: str = SERIES, frame: str = FRAME) -> Instance:
    return Instance(f"{series}.{n}", CT_IMAGE, STUDY, series, frame)


def structure_set(images: int = 3, uid: str = "1.2.3.5.1") -> Instance:
    refs = tuple(f"{SERIES}.{n}" for n in range(images))
    return Instance(uid, RT_STRUCTURE_SET, STUDY, "1.2.3.5", FRAME, refs, (SERIES,))


def plan(uid: str = "1.2.3.6.1", rs: str = "1.2.3.5.1") -> Instance:
    return Instance(uid, RT_ION_PLAN, STUDY, "1.2.3.6", FRAME, (rs,) if rs else ())


def dose(uid: str, plan_uid: str = "1.2.3.6.1") -> Instance:
    return Instance(uid, RT_DOSE, STUDY, "1.2.3.7", FRAME, (plan_uid,))


def index_of(*batches: tuple[list[Instance], float, int | None]) -> SpoolIndex:
    """Instances arriving in batches: (instances, time, association)."""
    index = SpoolIndex()
    for instances, at, association in batches:
        for item in instances:
            index.add(item, Arrival(at, association))
    return index


def full_case() -> list[Instance]:
    return [ct(0), ct(1), ct(2), structure_set(), plan(), dose("1.2.3.7.1")]


def test_complete_case_released_by_its_sender_is_ready_at_once() -> None:
    index = index_of((full_case(), 100.0, 1))
    index.released.add(1)
    [decision] = decide(index, now=100.5, quiet_seconds=QUIET)
    assert decision.ready and "released" in decision.why
    assert len(decision.case.members) == 6


def test_complete_case_without_release_waits_for_the_quiet_period() -> None:
    index = index_of((full_case(), 100.0, 1))
    assert not decide(index, now=100.0 + QUIET - 1, quiet_seconds=QUIET)[0].ready
    assert decide(index, now=100.0 + QUIET, quiet_seconds=QUIET)[0].ready


def test_ct_only_study_never_becomes_a_case() -> None:
    index = index_of(([ct(0), ct(1), ct(2)], 100.0, 1))
    index.released.add(1)
    assert decide(index, now=10_000.0, quiet_seconds=QUIET) == []


def test_aborted_half_send_never_ready_then_a_complete_send_is() -> None:
    # The first association sent the plan, the structure set and one CT image, then aborted.
    index = index_of(([plan(), structure_set(), ct(0)], 100.0, 1))
    [waiting] = decide(index, now=100_000.0, quiet_seconds=QUIET)
    assert not waiting.ready
    assert waiting.why == "waiting for 2 of 3 CT images the structure set references"
    # The TPS sends the whole case again and releases the association.
    later = index_of(([plan(), structure_set(), ct(0)], 100.0, 1), (full_case(), 200_000.0, 2))
    later.released.add(2)
    assert later.instances.keys() == {i.sop_instance_uid for i in full_case()}
    [decision] = decide(later, now=200_000.5, quiet_seconds=QUIET)
    assert decision.ready


def test_missing_structure_set_is_named() -> None:
    index = index_of(([plan(), ct(0)], 100.0, 1))
    [decision] = decide(index, now=1e6, quiet_seconds=QUIET)
    assert not decision.ready and decision.why == "waiting for the structure set the plan references"


def test_release_of_an_earlier_association_does_not_count_for_a_later_open_one() -> None:
    index = index_of(([plan(), structure_set(), ct(0), ct(1)], 100.0, 1), ([ct(2)], 101.0, 2))
    index.released.add(1)  # association 2 delivered the last image and is still open
    assert not decide(index, now=102.0, quiet_seconds=QUIET)[0].ready


def test_case_holds_exactly_its_plan_structure_set_ct_series_and_doses() -> None:
    other_series = [ct(n, series="9.9.9", frame="9.9") for n in range(3)]
    stray = [dose("1.2.3.7.2", plan_uid="8.8.8"), Instance("5.5", RT_STRUCTURE_SET, STUDY, "5", FRAME)]
    case = assemble(plan(), [*full_case(), *other_series, *stray])
    assert case.complete
    assert {m.sop_instance_uid for m in case.members} == {i.sop_instance_uid for i in full_case()}


def test_plan_without_structure_set_takes_the_ct_of_its_frame_of_reference() -> None:
    case = assemble(plan(rs=""), [ct(0), ct(1), ct(5, series="7.7", frame="other")])
    assert case.complete and [c.sop_instance_uid for c in case.ct] == [f"{SERIES}.0", f"{SERIES}.1"]
    assert not assemble(plan(rs=""), [ct(5, series="7.7", frame="other")]).complete


def test_same_plan_sent_again_is_the_same_case_a_new_version_is_new() -> None:
    assert case_key(plan()) == case_key(plan())
    assert case_key(plan(uid="1.2.3.6.2")) != case_key(plan())
    assert len(case_key(plan())) == 16 and STUDY not in case_key(plan())


def test_handed_cases_are_not_decided_again_and_a_new_version_is() -> None:
    version2 = plan(uid="1.2.3.6.2")
    index = index_of(([*full_case(), version2], 100.0, 1))
    index.released.add(1)
    decisions = decide(index, now=101.0, quiet_seconds=QUIET, handed={case_key(plan())})
    assert [d.case.plan.sop_instance_uid for d in decisions] == ["1.2.3.6.2"]
    assert decisions[0].ready  # it shares the CT and structure set of the first version


def test_a_repeat_of_an_instance_counts_as_activity() -> None:
    index = index_of((full_case(), 100.0, 1), ([ct(1)], 150.0, 2))
    assert len(index.instances) == 6
    assert not decide(index, now=160.0, quiet_seconds=QUIET)[0].ready
    index.released.add(2)
    assert decide(index, now=160.0, quiet_seconds=QUIET)[0].ready


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    return build_case(tmp_path_factory.mktemp("synthetic"), ct_shape=(16, 16, 6))


def test_describe_reads_the_references_of_real_files(synthetic) -> None:
    rp = describe(dcmread(synthetic.plan))
    rs = describe(dcmread(synthetic.rtstruct))
    rd = describe(dcmread(synthetic.doses[0]))
    cts = [describe(dcmread(path), path) for path in synthetic.ct]
    assert rp.sop_class_uid == RT_ION_PLAN and rp.referenced_instances == (rs.sop_instance_uid,)
    assert rp.frame_uid == synthetic.frame_of_reference_uid and rp.study_uid == synthetic.study_uid
    assert rs.referenced_series == (synthetic.ct_series_uid,)
    assert set(rs.referenced_instances) <= {c.sop_instance_uid for c in cts}
    assert rd.referenced_instances == (synthetic.plan_uid,)
    case = assemble(rp, [rp, rs, rd, *cts])
    assert case.complete and len(case.members) == 3 + len(synthetic.ct)
    assert all(isinstance(c.path, Path) for c in case.ct)
