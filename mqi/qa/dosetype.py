"""Dose type (physical / RBE-weighted) and fractionation of the MC and TPS doses.

MOQUI multiplies its output by its ``RBE`` parameter (default 1.1) and by the number of
fractions (``NumberOfFraction``; <= 0 means the plan's). The RT Dose mqi writes is
labelled ``moqui.dose_type``. A TPS proton dose is normally EFFECTIVE (RBE 1.1). A
mismatch between these is a silent 10% (or N-fold) offset in every comparison, so
`dose_type_problems` lists them for ``mqi check`` / ``mqi submit`` to refuse the case.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ENGINE_DEFAULT_RBE = 1.1
PER_FRACTION_SUMMATIONS = frozenset({"FRACTION_SESSION", "BEAM_SESSION", "CONTROL_POINT"})
DOSE_TYPES = frozenset({"PHYSICAL", "EFFECTIVE"})


def _parameter(parameters: Mapping[str, Any], key: str) -> Any:
    for name, value in parameters.items():  # MOQUI keys are case-insensitive, first one wins
        if name.lower() == key.lower():
            return value
    return None


def engine_rbe(parameters: Mapping[str, Any]) -> float:
    """The RBE factor MOQUI applies with these moqui_tps.in parameters."""
    value = _parameter(parameters, "RBE")
    return ENGINE_DEFAULT_RBE if value is None else float(value)


def engine_fractions(parameters: Mapping[str, Any], plan_fractions: int) -> int:
    """The number of fractions MOQUI multiplies its dose by."""
    value = _parameter(parameters, "NumberOfFraction")
    number = int(float(value)) if value is not None else 0
    return number if number > 0 else max(plan_fractions, 1)


def tps_fractions(summation_type: str | None, plan_fractions: int) -> int:
    """How many fractions a TPS RT Dose holds: 1 for a per-session dose, else the course."""
    per_session = (summation_type or "").upper() in PER_FRACTION_SUMMATIONS
    return 1 if per_session else max(plan_fractions, 1)


def dose_type_problems(
    *,
    mc_dose_type: str,
    parameters: Mapping[str, Any],
    plan_fractions: int,
    tps_dose_type: str | None = None,
    tps_summation_type: str | None = None,
) -> list[str]:
    """Every inconsistency between ``moqui.dose_type``, the engine's RBE and
    NumberOfFraction parameters and the TPS RT Dose's DoseType / DoseSummationType
    (None: no TPS dose); an empty list when they agree. Each item is one sentence that
    says what to change."""
    problems = []
    mc_type = mc_dose_type.upper()
    rbe = engine_rbe(parameters)
    if mc_type == "EFFECTIVE" and abs(rbe - 1.0) < 1e-9:
        problems.append(
            "moqui.dose_type is EFFECTIVE but the engine's RBE parameter is 1 (a physical dose): "
            "set RBE 1.1 or moqui.dose_type PHYSICAL"
        )
    if mc_type == "PHYSICAL" and abs(rbe - 1.0) >= 1e-9:
        problems.append(
            f"moqui.dose_type is PHYSICAL but the engine multiplies its dose by RBE {rbe:g}: "
            "set RBE 1 in moqui.parameters or moqui.dose_type EFFECTIVE"
        )
    if tps_dose_type is None:
        return problems
    tps_type = tps_dose_type.upper()
    if tps_type not in DOSE_TYPES:
        problems.append(
            f"the TPS RT Dose has DoseType {tps_dose_type or '(none)'}, not PHYSICAL or EFFECTIVE"
        )
    elif tps_type == "PHYSICAL" and mc_type == "EFFECTIVE":
        problems.append(
            "the TPS RT Dose is PHYSICAL but MOQUI writes an EFFECTIVE (RBE-weighted) dose: "
            "set moqui.dose_type PHYSICAL and RBE 1"
        )
    mc_count = engine_fractions(parameters, plan_fractions)
    tps_count = tps_fractions(tps_summation_type, plan_fractions)
    if mc_count != tps_count:
        problems.append(
            f"the TPS RT Dose ({tps_summation_type or 'no DoseSummationType'}) holds {tps_count} fraction(s) "
            f"but MOQUI scales to {mc_count}: set NumberOfFraction {tps_count} in moqui.parameters"
        )
    return problems


def mc_to_tps_factor(mc_dose_type: str, tps_dose_type: str, rbe: float) -> float:
    """The factor that makes an MC dose comparable with the TPS dose: ``rbe`` for a
    PHYSICAL MC dose against an EFFECTIVE TPS dose, else 1."""
    if mc_dose_type.upper() == "PHYSICAL" and tps_dose_type.upper() == "EFFECTIVE":
        return rbe
    return 1.0
