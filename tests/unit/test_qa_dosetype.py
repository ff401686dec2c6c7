"""Dose type, RBE and fractionation mismatches are named before anything runs."""

from __future__ import annotations

from mqi.qa.dosetype import dose_type_problems, engine_fractions, engine_rbe, mc_to_tps_factor


def test_consistent_settings_have_no_problem() -> None:
    assert dose_type_problems(mc_dose_type="EFFECTIVE", parameters={}, plan_fractions=1) == []
    assert (
        dose_type_problems(
            mc_dose_type="PHYSICAL",
            parameters={"rbe": 1},
            plan_fractions=30,
            tps_dose_type="EFFECTIVE",
            tps_summation_type="PLAN",
        )
        == []
    )


def test_physical_label_on_an_rbe_weighted_engine_output_is_a_problem() -> None:
    problems = dose_type_problems(mc_dose_type="PHYSICAL", parameters={}, plan_fractions=1)
    assert len(problems) == 1 and "RBE 1.1" in problems[0] and "set RBE 1" in problems[0]


def test_effective_label_with_rbe_one_is_a_problem() -> None:
    problems = dose_type_problems(mc_dose_type="EFFECTIVE", parameters={"RBE": "1.0"}, plan_fractions=1)
    assert len(problems) == 1 and "physical dose" in problems[0]


def test_effective_mc_against_a_physical_tps_dose_is_a_problem() -> None:
    problems = dose_type_problems(
        mc_dose_type="EFFECTIVE", parameters={}, plan_fractions=1, tps_dose_type="PHYSICAL"
    )
    assert any("TPS RT Dose is PHYSICAL" in p for p in problems)


def test_per_fraction_tps_dose_against_a_whole_course_mc_dose_is_a_problem() -> None:
    problems = dose_type_problems(
        mc_dose_type="EFFECTIVE",
        parameters={},
        plan_fractions=25,
        tps_dose_type="EFFECTIVE",
        tps_summation_type="FRACTION_SESSION",
    )
    assert problems == [
        "the TPS RT Dose (FRACTION_SESSION) holds 1 fraction(s) but MOQUI scales to 25: "
        "set NumberOfFraction 1 in moqui.parameters"
    ]
    fixed = dose_type_problems(
        mc_dose_type="EFFECTIVE",
        parameters={"NumberOfFraction": 1},
        plan_fractions=25,
        tps_dose_type="EFFECTIVE",
        tps_summation_type="FRACTION_SESSION",
    )
    assert fixed == []


def test_engine_defaults_and_the_factor_applied_before_comparing() -> None:
    assert engine_rbe({}) == 1.1 and engine_rbe({"Rbe": 1}) == 1.0
    assert engine_fractions({"NumberOfFraction": -1}, 30) == 30
    assert mc_to_tps_factor("PHYSICAL", "EFFECTIVE", 1.1) == 1.1
    assert mc_to_tps_factor("EFFECTIVE", "EFFECTIVE", 1.1) == 1.0
