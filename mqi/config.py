"""The YAML configuration: pydantic models, loading, defaults and clear errors.

Resolution order for the file: ``--config FILE``, then ``$MQI_CONFIG``, then
``./mqi.yaml``. Unknown keys and wrong types are errors naming the key and the
file. Local paths expand ``~`` and ``$VARS`` and are taken relative to the
config file's folder, so a cron job and an interactive shell read the same paths.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mqi.errors import ConfigError

CONFIG_ENV = "MQI_CONFIG"
DEFAULT_CONFIG_NAME = "mqi.yaml"
EXAMPLE_CONFIG = Path(__file__).parent / "templates" / "mqi.example.yaml"

_SLURM_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$|^\d+$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _expand(value: str) -> str:
    return os.path.expanduser(os.path.expandvars(value))


class Readiness(_Model):
    """When `mqi scan` takes a case folder as complete."""

    marker: str | None = Field(
        None, description="File name whose presence marks a case folder ready, e.g. _CASE_READY."
    )
    quiet_seconds: float = Field(
        60, ge=0, description="Without a marker: no file may have changed for this many seconds."
    )


class ClusterConfig(_Model):
    """Where Slurm is and how to reach it."""

    transport: Literal["ssh", "local"] = Field(
        "ssh", description="ssh: a login node over SSH; local: Slurm commands on this machine."
    )
    host: str | None = Field(None, description="Login host, or an alias from ~/.ssh/config.")
    user: str | None = Field(None, description="Remote user (default: from ~/.ssh/config).")
    port: int | None = Field(None, ge=1, le=65535, description="SSH port (default 22).")
    key_file: Path | None = Field(None, description="Private key for SSH (default: agent/ssh config).")
    known_hosts: Path = Field(
        Path("~/.ssh/known_hosts"),
        description="Host keys to trust. Host keys are always checked; unknown hosts are refused.",
    )
    ssh_config: Path | None = Field(
        Path("~/.ssh/config"), description="OpenSSH client config for host aliases and ProxyJump."
    )
    connect_timeout: float = Field(10, gt=0, description="Seconds to wait for SSH to connect.")
    remote_dir: str = Field(
        "/scratch/mqi",
        description="Cluster folder holding one sub-folder per case (by opaque case uid).",
    )
    python: str = Field(
        "python3",
        description="Interpreter on the cluster with mqi installed; the post job runs `python -m mqi.post`.",
    )
    retry_seconds: float = Field(
        60, ge=0, description="How long transient failures (SSH drops, slurmctld down) are retried."
    )

    @field_validator("remote_dir")
    @classmethod
    def _remote_dir_absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path on the cluster")
        return value.rstrip("/") or "/"


class Priority(_Model):
    """One priority class: how `mqi submit --priority NAME` asks Slurm."""

    nice: int = Field(0, ge=0, description="sbatch --nice (users may not go below 0).")
    qos: str | None = Field(None, description="sbatch --qos for this class.")


def _default_priorities() -> dict[str, Priority]:
    return {
        "urgent": Priority(nice=0),
        "normal": Priority(nice=100),
        "low": Priority(nice=1000),
    }


class SlurmConfig(_Model):
    """What every job asks Slurm for."""

    partition: str = Field("gpu", description="Partition for all three steps.")
    account: str | None = Field(None, description="sbatch --account.")
    qos: str | None = Field(None, description="sbatch --qos for every job (a priority may override).")
    gpus_per_beam: int = Field(1, ge=1, description="--gres=gpu:N for each beam's simulation task.")
    max_parallel_beams: int = Field(8, ge=1, description="Array throttle: at most N beams at once.")
    time_limit: str = Field("02:00:00", description="--time of each beam's simulation task.")
    cpus_per_beam: int = Field(1, ge=1, description="--cpus-per-task of a simulation task.")
    mem_per_beam: str | None = Field("4G", description="--mem of a simulation task (None: site default).")
    prepare_time_limit: str = Field("00:15:00", description="--time of the prepare job.")
    post_time_limit: str = Field("00:30:00", description="--time of the post-processing job.")
    post_mem: str | None = Field("4G", description="--mem of the prepare and post jobs.")
    priorities: dict[str, Priority] = Field(
        default_factory=_default_priorities, description="Named priority classes for --priority."
    )
    default_priority: str = Field("normal", description="Class used when --priority is not given.")
    prologue: list[str] = Field(
        default_factory=list, description='Shell lines run first in every job, e.g. "module load cuda".'
    )
    extra_directives: list[str] = Field(
        default_factory=list, description='Extra sbatch options for every job, e.g. "--constraint=a100".'
    )
    template_dir: Path | None = Field(
        None, description="A folder of site job-script templates replacing the built-in ones."
    )

    @field_validator("time_limit", "prepare_time_limit", "post_time_limit")
    @classmethod
    def _slurm_time(cls, value: str) -> str:
        if not _SLURM_TIME.match(value):
            raise ValueError(f"{value!r} is not a Slurm time (use HH:MM:SS or D-HH:MM:SS)")
        return value

    @field_validator("extra_directives")
    @classmethod
    def _directives(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.startswith("--") or "\n" in item:
                raise ValueError(f"{item!r} must be one long sbatch option such as --constraint=a100")
        return value

    @model_validator(mode="after")
    def _known_default_priority(self) -> SlurmConfig:
        if self.default_priority not in self.priorities:
            raise ValueError(
                f"default_priority {self.default_priority!r} is not one of {sorted(self.priorities)}"
            )
        return self


class MoquiConfig(_Model):
    """The engine and the parameters written into every moqui_tps.in."""

    family: Literal["upstream", "logbased"] = Field(
        "upstream", description="upstream MOQUI (plan spots, CT) or the log-based clinic fork."
    )
    command: str = Field("tps_env", description="The engine executable on the cluster.")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"ParticlesPerHistory": 1000, "Scorer": "Dose", "OutputFormat": "raw"},
        description="Free-form `Key value` lines for moqui_tps.in, in this order.",
    )
    interpreter_command: str | None = Field(
        None, description="Optional delivery-log interpreter run by the prepare job in the bundle."
    )
    dose_type: Literal["PHYSICAL", "EFFECTIVE"] = Field(
        "EFFECTIVE", description="DoseType of the RT Dose written (the engine applies RBE by default)."
    )


class IntakeConfig(_Model):
    """How a case folder is read and checked."""

    setup_beam_names: list[str] = Field(
        default_factory=lambda: ["SETUP", "Site Setup"],
        description="Beam names (case-insensitive) treated as setup beams and never simulated.",
    )
    allow_patient_id_mismatch: bool = Field(
        False, description="Accept a PatientID differing between plan and CT/RTSTRUCT (a warning then)."
    )


class PollConfig(_Model):
    """How the poller follows Slurm."""

    interval_seconds: float = Field(30, gt=0, description="`mqi run`/`poll --wait`: seconds between cycles.")
    lost_grace_seconds: float = Field(
        120, ge=0, description="A job missing from squeue and sacct this long is lost and resubmitted."
    )


def _strip_unit(value: Any, unit: str) -> Any:
    """Accept ``3%`` / ``3mm`` as well as 3 in the QA criteria."""
    if isinstance(value, str) and value.strip().lower().endswith(unit):
        return value.strip()[: -len(unit)].strip()
    return value


class GammaCriterionConfig(_Model):
    """One gamma test and the pass rate it must reach: {dose: 3%, distance: 3mm, cutoff: 10%, pass: 95%}."""

    dose: float = Field(
        3.0, gt=0, le=100, description="Dose criterion, % (of the reference maximum if global)."
    )
    distance: float = Field(3.0, gt=0, le=50, description="Distance-to-agreement criterion, mm.")
    cutoff: float = Field(10.0, ge=0, lt=100, description="Low-dose cutoff, % of the reference maximum.")
    pass_rate: float = Field(
        95.0,
        ge=0,
        le=100,
        validation_alias=AliasChoices("pass", "pass_rate"),
        description="Minimum percentage of voxels with gamma <= 1 (YAML key `pass` or `pass_rate`).",
    )
    local: bool = Field(False, description="Local gamma (dose criterion of each voxel's own dose).")

    @field_validator("dose", "cutoff", "pass_rate", mode="before")
    @classmethod
    def _percent(cls, value: Any) -> Any:
        return _strip_unit(value, "%")

    @field_validator("distance", mode="before")
    @classmethod
    def _millimetres(cls, value: Any) -> Any:
        return _strip_unit(value, "mm")


def _default_criteria() -> list[GammaCriterionConfig]:
    return [
        GammaCriterionConfig(dose=3, distance=3, cutoff=10, pass_rate=95),
        GammaCriterionConfig(dose=2, distance=2, cutoff=10, pass_rate=90),
    ]


class DVHTolerances(_Model):
    """How far the MC DVH metrics may differ from the TPS ones before a case needs review."""

    target_d95_percent: float = Field(3.0, ge=0, description="Target D95: relative difference, %.")
    target_dmean_percent: float = Field(2.0, ge=0, description="Target Dmean: relative difference, %.")
    oar_dmean_gy: float = Field(1.0, ge=0, description="Other structures' Dmean: absolute difference, Gy.")
    oar_dmax_gy: float = Field(2.0, ge=0, description="Other structures' Dmax: absolute difference, Gy.")
    min_volume_cc: float = Field(
        0.5, ge=0, description="Structures smaller than this (cm^3) are reported but not judged."
    )


class QAConfig(_Model):
    """The Monte Carlo vs TPS comparison run by the post job and by `mqi report`."""

    enabled: bool = Field(True, description="Compare with the TPS dose and write qa.json and report.pdf.")
    criteria: list[GammaCriterionConfig] = Field(
        default_factory=_default_criteria,
        min_length=1,
        description="Gamma tests; the FIRST decides fail, the others (and DVH) decide review.",
    )
    rbe: float = Field(
        1.1, gt=0, description="Applied to a PHYSICAL MC dose before comparing with an EFFECTIVE TPS dose."
    )
    reference: Literal["tps", "mc"] = Field("tps", description="Which dose is the gamma reference.")
    dvh: DVHTolerances = Field(default_factory=DVHTolerances)
    high_dose_percent: float = Field(
        50.0,
        gt=0,
        lt=100,
        description="Dose-difference statistics use voxels above this % of the reference max.",
    )
    max_gamma: float = Field(2.0, gt=1, le=10, description="Gamma search radius in units of the criteria.")
    steps_per_distance: int = Field(
        10, ge=2, le=40, description="Sub-voxel interpolation: search steps per distance criterion."
    )
    prescription_gy: float | None = Field(
        None,
        gt=0,
        description="Target prescription for V95% (default: from the plan, else the TPS target D50).",
    )


class Config(_Model):
    """The whole mqi.yaml."""

    watch_dir: Path = Field(Path("~/mqi/incoming"), description="`mqi scan` looks for case folders here.")
    results_dir: Path = Field(Path("~/mqi/results"), description="Finished RT Dose files land here.")
    state_dir: Path = Field(Path("~/.local/state/mqi"), description="Database, rendered bundles and logs.")
    readiness: Readiness = Field(default_factory=Readiness)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    moqui: MoquiConfig = Field(default_factory=MoquiConfig)
    intake: IntakeConfig = Field(default_factory=IntakeConfig)
    poll: PollConfig = Field(default_factory=PollConfig)
    qa: QAConfig = Field(default_factory=QAConfig)

    source: Path | None = Field(None, exclude=True, description="The file this was loaded from.")

    @property
    def db_path(self) -> Path:
        return self.state_dir / "mqi.db"

    @property
    def bundles_dir(self) -> Path:
        return self.state_dir / "bundles"


def _resolve_paths(model: BaseModel, base: Path) -> None:
    """Expand ~ and $VARS in every local Path field, relative to ``base``."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path) and name != "source":
            path = Path(_expand(str(value)))
            if not path.is_absolute():
                path = base / path
            object.__setattr__(model, name, path)
        elif isinstance(value, BaseModel):
            _resolve_paths(value, base)


def _format_location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _format_validation_error(err: ValidationError, source: str) -> str:
    problems = []
    for item in err.errors():
        key = _format_location(item["loc"])
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key {key!r}")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            value = item.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            problems.append(f"{key}: {msg}{shown}")
    return f"{source}: " + "; ".join(problems)


def parse_config(data: Any, source: str = "<config>", base: Path | None = None) -> Config:
    """Validate already-loaded YAML data into a Config."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, not {type(data).__name__}")
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None
    _resolve_paths(config, base or Path.cwd())
    return config


def find_config_file(explicit: Path | None = None) -> Path:
    """The config file to read, by the documented resolution order."""
    if explicit is not None:
        return explicit
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return Path.cwd() / DEFAULT_CONFIG_NAME


def load_config(explicit: Path | None = None) -> Config:
    """Load and validate the config; every failure is a ConfigError with one line."""
    path = find_config_file(explicit)
    if not path.exists():
        raise ConfigError(
            f"no config file at {path}: create one with `mqi init`, or pass --config / set ${CONFIG_ENV}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    config = parse_config(data, str(path), base=path.resolve().parent)
    object.__setattr__(config, "source", path.resolve())
    return config


def example_config_text() -> str:
    return EXAMPLE_CONFIG.read_text(encoding="utf-8")
