"""Helpers shared by the rendering tests (no tests here): cases, configs, bundle bytes.

Cases are built straight from DICOM files with pydicom, with a fixed case uid, so the
tests depend only on the renderer, not on how intake derives its ids. The integration
tests load this file by path.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest

from mqi.config import Config, parse_config
from mqi.intake.model import (
    Beam,
    Case,
    CTGrid,
    EnergyLayer,
    Plan,
    Structure,
    StructureSet,
    TPSDose,
)

APTG = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "aptg-plan03"
GOLDEN = Path(__file__).parent / "golden" / "aptg"
GOLDEN_FILES = (
    "beams/1/moqui_tps.in",
    "beams/2/moqui_tps.in",
    "jobs/prepare.sbatch",
    "jobs/simulate.sbatch",
    "jobs/post.sbatch",
    "jobs/submit.sh",
)
SCRIPTS = ("jobs/prepare.sbatch", "jobs/simulate.sbatch", "jobs/post.sbatch", "jobs/submit.sh")
CASE_UID = "c0ffee0123456789"

needs_aptg = pytest.mark.skipif(
    not APTG.is_dir(), reason=f"the shared APTG case is not at {APTG} (../shared/data)"
)


GOLDEN_CONFIG: dict[str, Any] = {
    "cluster": {"transport": "local", "python": "/opt/mqi/bin/python"},
    "slurm": {
        "partition": "gpu",
        "account": "physics",
        "max_parallel_beams": 4,
        "time_limit": "01:00:00",
        "prologue": ["module load cuda/12.4"],
        "extra_directives": ["--constraint=a100"],
    },
    "moqui": {
        "command": "/opt/moqui/bin/tps_env",
        "parameters": {
            "ParticlesPerHistory": 100000,
            "Scorer": "Dose",
            "OutputFormat": "raw",
            "ReadStructure": True,
            "BodyContourName": "External",
        },
    },
}


def render_config(**sections: dict[str, Any]) -> Config:
    """The golden config with whole keys of a section replaced, e.g. moqui={"family": ...}."""
    data = copy.deepcopy(GOLDEN_CONFIG)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return parse_config(data, "<test>", base=Path("/"))


def with_parameters(**parameters: Any) -> Config:
    """The golden config with these moqui.parameters (in this order) instead."""
    return render_config(moqui={"parameters": parameters})


def _layers(beam: pydicom.Dataset) -> list[EnergyLayer]:
    points = beam.IonControlPointSequence
    return [
        EnergyLayer(
            energy_mev=float(cp.NominalBeamEnergy),
            spots=int(cp.NumberOfScanSpotPositions),
            meterset_weight=float(sum(cp.ScanSpotMetersetWeights)),
        )
        for cp in points[::2]
    ]


def _beams(plan: pydicom.Dataset, names: list[str] | None) -> list[Beam]:
    metersets = {
        int(ref.ReferencedBeamNumber): float(ref.BeamMeterset)
        for ref in plan.FractionGroupSequence[0].ReferencedBeamSequence
    }
    beams = []
    for index, item in enumerate(plan.IonBeamSequence):
        cp0 = item.IonControlPointSequence[0]
        layers = _layers(item)
        beams.append(
            Beam(
                number=int(item.BeamNumber),
                name=names[index] if names else str(item.BeamName),
                sequence_index=index,
                machine=str(item.TreatmentMachineName),
                radiation_type=str(item.RadiationType),
                gantry_angle=float(cp0.GantryAngle),
                couch_angle=float(cp0.PatientSupportAngle),
                isocenter=tuple(float(v) for v in cp0.IsocenterPosition),
                range_shifters=int(item.NumberOfRangeShifters),
                blocks=int(item.NumberOfBlocks),
                layers=layers,
                spots=sum(layer.spots for layer in layers),
                meterset=metersets[int(item.BeamNumber)],
            )
        )
    return beams


def ct_grid(ct_files: list[Path]) -> CTGrid:
    """The grid of these CT slice files (any order)."""
    slices = [(pydicom.dcmread(p, stop_before_pixels=True), p) for p in ct_files]
    slices.sort(key=lambda item: float(item[0].ImagePositionPatient[2]))
    first = slices[0][0]
    return CTGrid(
        rows=int(first.Rows),
        columns=int(first.Columns),
        slices=len(slices),
        spacing=(float(first.PixelSpacing[1]), float(first.PixelSpacing[0]), float(first.SliceThickness)),
        origin=tuple(float(v) for v in first.ImagePositionPatient),
        pixel_representation=int(first.PixelRepresentation),
        bits_allocated=int(first.BitsAllocated),
        rescale_slope=float(first.RescaleSlope),
        rescale_intercept=float(first.RescaleIntercept),
        series_instance_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        files=[path for _, path in slices],
    )


def _tps_doses(case_dir: Path) -> list[TPSDose]:
    doses = []
    for path in sorted(case_dir.glob("RD*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        beam = None
        if ds.DoseSummationType == "BEAM":
            ref = ds.ReferencedRTPlanSequence[0].ReferencedFractionGroupSequence[0]
            beam = int(ref.ReferencedBeamSequence[0].ReferencedBeamNumber)
        doses.append(
            TPSDose(path=path, summation_type=ds.DoseSummationType, dose_type=ds.DoseType, beam_number=beam)
        )
    return doses


def aptg_case(
    case_dir: Path = APTG, *, case_uid: str = CASE_UID, beam_names: list[str] | None = None
) -> Case:
    """The case in ``case_dir`` (APTG or mqi.testing.synthetic layout) as intake would hand it over:
    RP*.dcm, RS*.dcm, RD*.dcm and ct/*.dcm."""
    plan_path = next(case_dir.glob("RP*.dcm"))
    rs_path = next(case_dir.glob("RS*.dcm"))
    plan = pydicom.dcmread(plan_path)
    rs = pydicom.dcmread(rs_path, stop_before_pixels=True)
    return Case(
        case_id=f"{case_dir.name}-{case_uid[:6]}",
        case_uid=case_uid,
        source_dir=case_dir,
        plan=Plan(
            label=str(plan.RTPlanLabel),
            sop_instance_uid=str(plan.SOPInstanceUID),
            fractions=int(plan.FractionGroupSequence[0].NumberOfFractionsPlanned),
            frame_of_reference_uid=str(plan.FrameOfReferenceUID),
            path=plan_path,
        ),
        beams=_beams(plan, beam_names),
        ct=ct_grid(sorted((case_dir / "ct").glob("*.dcm"))),
        structure_set=StructureSet(
            path=rs_path,
            structures=[
                Structure(number=int(r.ROINumber), name=str(r.ROIName)) for r in rs.StructureSetROISequence
            ],
        ),
        tps_doses=_tps_doses(case_dir),
    )


def bundle_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def bash_syntax_errors(path: Path) -> str:
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    return done.stderr if done.returncode else ""


def model_case(case_uid: str = CASE_UID, beams: tuple[int, ...] = (1, 2)) -> Case:
    """A case built from the model alone (no files): for refusals that happen before copying."""
    nowhere = Path("/nonexistent")
    return Case(
        case_id="model-case",
        case_uid=case_uid,
        source_dir=nowhere,
        plan=Plan(
            label="P",
            sop_instance_uid="1.2.3",
            fractions=1,
            frame_of_reference_uid="1.2",
            path=nowhere / "RP.dcm",
        ),
        beams=[
            Beam(
                number=number,
                name=f"B{number}",
                sequence_index=index,
                machine="M",
                radiation_type="PROTON",
                gantry_angle=0.0,
                couch_angle=0.0,
                isocenter=(0.0, 0.0, 0.0),
                range_shifters=0,
                blocks=0,
                layers=[EnergyLayer(energy_mev=100.0, spots=1, meterset_weight=1.0)],
                spots=1,
                meterset=1.0,
            )
            for index, number in enumerate(beams)
        ],
        ct=CTGrid(
            rows=2,
            columns=2,
            slices=1,
            spacing=(1.0, 1.0, 1.0),
            origin=(0.0, 0.0, 0.0),
            pixel_representation=1,
            bits_allocated=16,
            rescale_slope=1.0,
            rescale_intercept=0.0,
            series_instance_uid="1.2.4",
            frame_of_reference_uid="1.2",
            files=[nowhere / "CT.dcm"],
        ),
        structure_set=None,
        tps_doses=[],
    )
