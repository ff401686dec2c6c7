"""What rendering refuses and warns about, and the moqui_tps.in it writes.

Refusals (RenderError, exit code 2) name the key and leave no bundle behind.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from mqi.config import Config
from mqi.errors import ConfigError, UsageError
from mqi.moqui_params import parse_parameter_text
from mqi.render import RenderError, beam_seed, render_bundle
from tests.unit.test_render_cases import (
    aptg_case,
    model_case,
    needs_aptg,
    render_config,
    with_parameters,
)


def refusal(config: Config, tmp_path: Path, **kwargs: object) -> str:
    out = tmp_path / "bundle"
    with pytest.raises(RenderError) as caught:
        render_bundle(model_case(**kwargs), config, out)  # type: ignore[arg-type]
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_render_error_is_a_usage_error() -> None:
    assert issubclass(RenderError, UsageError)
    assert RenderError("x").exit_code == 2


@pytest.mark.parametrize(
    "parameters",
    [
        {"Scorer": "Dose"},
        {"ParticlesPerHistory": 0},
        {"ParticlesPerHistory": -1},
        {"ParticlesPerHistory": "-1"},
        {"ParticlesPerHistory": "many"},
        {"ParticlesPerHistory": True},
    ],
)
def test_particles_per_history_missing_or_not_positive(parameters: dict, tmp_path: Path) -> None:
    assert "ParticlesPerHistory" in refusal(with_parameters(**parameters), tmp_path)


def test_key_written_twice_in_another_letter_case(tmp_path: Path) -> None:
    config = with_parameters(ParticlesPerHistory=10, Scorer="Dose", scorer="LETd")
    message = refusal(config, tmp_path)
    assert "'Scorer'" in message and "'scorer'" in message


@pytest.mark.parametrize(
    "key",
    ["GPUID", "BeamNumbers", "ParentDir", "DicomDir", "OutputDir", "OverwriteResults", "useabsolutepath"],
)
def test_keys_mqi_owns_are_refused(key: str, tmp_path: Path) -> None:
    message = refusal(with_parameters(ParticlesPerHistory=10, **{key: "1"}), tmp_path)
    assert f"moqui.parameters.{key}" in message
    assert "mqi sets this key" in message


@pytest.mark.parametrize("gantry", [0, 3, "x"])
def test_logbased_gantry_num_outside_1_2(gantry: object, tmp_path: Path) -> None:
    config = render_config(
        moqui={"family": "logbased", "parameters": {"ParticlesPerHistory": 10, "GantryNum": gantry}}
    )
    assert "GantryNum" in refusal(config, tmp_path)


@pytest.mark.parametrize("value", ["two\nlines", "with space", "a#comment", "", None, []], ids=repr)
def test_values_moqui_could_not_read_back(value: object, tmp_path: Path) -> None:
    try:  # a control character is refused already when the config is read
        config = with_parameters(ParticlesPerHistory=10, BodyContourName=value)
    except ConfigError as err:
        message = str(err)
    else:
        message = refusal(config, tmp_path)
    assert "moqui.parameters.BodyContourName" in message


@pytest.mark.parametrize(
    ("key", "value"), [("Scorer", "dose"), ("OutputFormat", "MHD"), ("OutputFormat", "nii")]
)
def test_scorer_and_output_format_must_be_known(key: str, value: str, tmp_path: Path) -> None:
    config = with_parameters(ParticlesPerHistory=10, **{key: value})
    assert f"moqui.parameters.{key}" in refusal(config, tmp_path)


@pytest.mark.parametrize(
    ("section", "values", "key"),
    [
        ("slurm", {"partition": "gpu a100"}, "slurm.partition"),
        ("slurm", {"account": "$(id)"}, "slurm.account"),
        ("slurm", {"qos": "normal;rm"}, "slurm.qos"),
        ("slurm", {"mem_per_beam": "4 G"}, "slurm.mem_per_beam"),
        ("slurm", {"priorities": {"normal": {"qos": "a b"}}}, "slurm.priorities.normal.qos"),
        ("moqui", {"command": "tps_env 'unbalanced"}, "moqui.command"),
        ("moqui", {"command": "  "}, "moqui.command"),
        ("moqui", {"interpreter_command": '"x'}, "moqui.interpreter_command"),
        ("cluster", {"python": ""}, "cluster.python"),
    ],
)
def test_config_values_that_cannot_reach_a_job_script(
    section: str, values: dict, key: str, tmp_path: Path
) -> None:
    assert key in refusal(render_config(**{section: values}), tmp_path)


def test_unknown_priority_names_the_known_ones(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with pytest.raises(RenderError, match=r"priority 'asap' is not one of .*low, normal, urgent"):
        render_bundle(model_case(), render_config(), out, priority="asap")
    assert not out.exists()


@pytest.mark.parametrize("uid", ["has space", "../up", "a;b", "x" * 65, "$(id)"])
def test_case_uid_must_be_opaque(uid: str, tmp_path: Path) -> None:
    assert "case_uid" in refusal(render_config(), tmp_path, case_uid=uid)


def test_duplicate_beam_numbers(tmp_path: Path) -> None:
    assert "beam numbers" in refusal(render_config(), tmp_path, beams=(1, 1))


def test_site_template_dir_must_exist(tmp_path: Path) -> None:
    config = render_config(slurm={"template_dir": str(tmp_path / "nowhere")})
    out = tmp_path / "out" / "bundle"
    with pytest.raises(RenderError, match=r"slurm\.template_dir"):
        render_bundle(model_case(), config, out)
    assert not out.exists()


def test_not_a_bundle_folder_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(RenderError, match="not empty"):
        render_bundle(model_case(), render_config(), tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


# --- what is written ----------------------------------------------------------------------
@needs_aptg
def test_unknown_keys_are_warnings_and_still_written(tmp_path: Path) -> None:
    config = with_parameters(ParticlesPerHistory=10, ParticlesPerHistroy=5, TwoCentimeterMode=True)
    bundle = render_bundle(aptg_case(), config, tmp_path / "b")
    assert len(bundle.warnings) == 2
    assert "ParticlesPerHistroy" in bundle.warnings[0] and "misspelt" in bundle.warnings[0]
    assert "TwoCentimeterMode" in bundle.warnings[1]  # a log-based key in the upstream family
    text = (bundle.path / "beams/1/moqui_tps.in").read_text()
    assert "ParticlesPerHistroy 5" in text


@needs_aptg
def test_moqui_input_reads_back_as_meant(tmp_path: Path) -> None:
    config = with_parameters(ParticlesPerHistory=2000, Scorer="LETd", OutputFormat="mhd", RBE=1.1)
    bundle = render_bundle(aptg_case(), config, tmp_path / "b")
    for beam in bundle.manifest.beams:
        params = parse_parameter_text((bundle.path / beam.dir / "moqui_tps.in").read_text())
        assert params.duplicates() == {}
        assert params.as_dict() == {
            "particlesperhistory": "2000",
            "scorer": "LETd",
            "outputformat": "mhd",
            "rbe": "1.1",
            "gpuid": "0",
            "beamnumbers": str(beam.number),
            "parentdir": ".",
            "dicomdir": "input",
            "outputdir": f"beams/{beam.number}/output",
            "overwriteresults": "true",
            "useabsolutepath": "false",
            "randomseed": str(beam_seed("c0ffee0123456789", beam.number)),
        }
    assert (bundle.manifest.scorer, bundle.manifest.output_format) == ("LETd", "mhd")


def test_seeds_are_fixed_per_beam_and_differ_between_beams_and_cases() -> None:
    seeds = {beam_seed(uid, n) for uid in ("a1", "b2") for n in (1, 2, 3)}
    assert len(seeds) == 6
    assert beam_seed("a1", 1) == beam_seed("a1", 1)
    assert all(1 <= seed < 2**31 for seed in seeds)


@needs_aptg
def test_a_seed_fixed_in_the_config_is_used_for_every_beam(tmp_path: Path) -> None:
    config = with_parameters(ParticlesPerHistory=10, RandomSeed=42)
    bundle = render_bundle(aptg_case(), config, tmp_path / "b")
    for beam in bundle.manifest.beams:
        params = parse_parameter_text((bundle.path / beam.dir / "moqui_tps.in").read_text())
        assert params.get_int("RandomSeed") == 42
        assert params.duplicates() == {}


@needs_aptg
def test_priority_class_sets_nice_and_qos_on_every_sbatch_line(tmp_path: Path) -> None:
    config = render_config(
        slurm={"priorities": {"normal": {"nice": 100}, "urgent": {"nice": 0, "qos": "high"}}}
    )
    bundle = render_bundle(aptg_case(), config, tmp_path / "b", priority="urgent")
    submit = (bundle.path / "jobs/submit.sh").read_text()
    for line in bundle.sbatch_lines:
        assert "--nice=0 --qos=high" in line
    assert submit.count("--nice=0 --qos=high") == 4  # prepare, simulate, retry simulate, post


@needs_aptg
def test_sbatch_directives_of_each_step(tmp_path: Path) -> None:
    config = render_config(
        slurm={"qos": "normal", "gpus_per_beam": 2, "max_parallel_beams": 1, "mem_per_beam": None}
    )
    bundle = render_bundle(aptg_case(), config, tmp_path / "b")
    directives = {
        step: [
            line.removeprefix("#SBATCH ")
            for line in (bundle.path / f"jobs/{step}.sbatch").read_text().splitlines()
            if line.startswith("#SBATCH ")
        ]
        for step in ("prepare", "simulate", "post")
    }
    simulate = directives["simulate"]
    assert "--gres=gpu:2" in simulate and "--array=0-1%1" in simulate
    assert "--output=logs/%x-%A_%a.out" in simulate
    assert not any(d.startswith("--mem=") for d in simulate)
    for step in ("prepare", "post"):
        assert "--output=logs/%x-%j.out" in directives[step]
        assert "--mem=4G" in directives[step]
        assert not any(d.startswith(("--gres", "--array")) for d in directives[step])
    for step, lines in directives.items():
        assert lines[:3] == [
            f"--job-name=mqi.c0ffee0123456789.{step}",
            "--comment=mqi:c0ffee0123456789",
            "--partition=gpu",
        ]
        assert "--qos=normal" in lines and "--account=physics" in lines
        assert lines[-1] == "--constraint=a100"


@needs_aptg
def test_engine_command_is_a_quoted_word_list(tmp_path: Path) -> None:
    config = render_config(moqui={"command": "'/opt/my moqui/tps_env' --fast $HOME"})
    bundle = render_bundle(aptg_case(), config, tmp_path / "b")
    text = (bundle.path / "jobs/simulate.sbatch").read_text()
    assert "engine=('/opt/my moqui/tps_env' --fast '$HOME')" in text


@needs_aptg
def test_site_template_dir_overrides_one_template(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "post.sbatch").write_text(
        "#!/bin/bash\n{% for o in directives %}#SBATCH {{ o }}\n{% endfor %}"
        "echo site post for {{ case_uid | sh }}\n"
    )
    bundle = render_bundle(aptg_case(), render_config(slurm={"template_dir": str(site)}), tmp_path / "b")
    post = (bundle.path / "jobs/post.sbatch").read_text()
    assert "echo site post for c0ffee0123456789" in post
    assert "#SBATCH --job-name=mqi.c0ffee0123456789.post" in post
    assert "stdbuf" in (bundle.path / "jobs/simulate.sbatch").read_text()  # built-in kept


@needs_aptg
def test_a_site_template_added_or_changed_later_is_used(tmp_path: Path) -> None:
    """One process renders many cases (mqi scan, mqi run): templates are compiled once,
    and a site template that appears or changes meanwhile is used from the next render."""
    site = tmp_path / "site"
    site.mkdir()
    config = render_config(slurm={"template_dir": str(site)})
    header = "#!/bin/bash\n{% for o in directives %}#SBATCH {{ o }}\n{% endfor %}"
    posts = []
    for index, text in enumerate([None, "echo site post one\n", "echo site post number two\n"]):
        if text is not None:
            (site / "post.sbatch").write_text(header + text)
        bundle = render_bundle(aptg_case(), config, tmp_path / f"b{index}")
        posts.append((bundle.path / "jobs/post.sbatch").read_text())
    assert "site post" not in posts[0]
    assert "echo site post one" in posts[1]
    assert "echo site post number two" in posts[2]


def test_broken_site_template_is_a_render_error(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "submit.sh").write_text("{{ no_such_variable }}\n")
    config = render_config(slurm={"template_dir": str(site)})
    with pytest.raises(RenderError, match=r"template submit\.sh.*no_such_variable"):
        render_bundle(model_case(), config, tmp_path / "b")


@needs_aptg
def test_beam_names_in_the_bundle_are_opaque_so_a_slash_does_no_harm(tmp_path: Path) -> None:
    bundle = render_bundle(aptg_case(beam_names=["b1", "left/right"]), render_config(), tmp_path / "b")
    assert bundle.warnings == []
    plan = pydicom.dcmread(bundle.path / "input" / "RTPLAN.dcm")
    assert [str(item.BeamName) for item in plan.IonBeamSequence] == ["beam1", "beam2"]
