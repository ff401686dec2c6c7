"""The YAML configuration: pydantic models, loading, defaults and clear errors.

Resolution order for the file: ``--config FILE``, then ``$MQI_CONFIG``, then
``./mqi.yaml``. Unknown keys and wrong types are errors naming the key and the
file. Local paths expand ``~`` and ``$VARS`` and are taken relative to the
config file's folder, so a cron job and an interactive shell read the same paths.

The file is UTF-8 YAML read with two changes to YAML 1.1: a key written twice is an
error, and ``2:00:00`` is the string it looks like (not the base-60 number 7200).
Values that reach job scripts may not hold control characters; numbers must be finite;
an undefined ``$VAR`` in a path is an error, as is a file where a folder is needed.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import stat
import subprocess
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
_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})")
# control characters that would split or corrupt a line of a job script (tab is harmless)
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_SCRIPT_SECTIONS = ("cluster", "slurm", "moqui")
DIRECTORY_KEYS = ("watch_dir", "results_dir", "state_dir")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


def _expand(value: str) -> str:
    return os.path.expanduser(os.path.expandvars(value))


def _time_value(value: Any) -> Any:
    """A Slurm time must be written as text; a bare YAML number is refused with a hint."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            f'{value!r} is a number; write the time in quotes, e.g. "02:00:00" '
            "(Slurm times are HH:MM:SS or D-HH:MM:SS)"
        )
    return value


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

    backend: Literal["cli", "pyslurm"] = Field(
        "cli",
        description=(
            "How mqi talks to Slurm. cli: its commands (sbatch, squeue, sacct...), locally or over SSH. "
            "pyslurm: direct calls to slurmctld and slurmdbd from this machine "
            "(`pip install 'mqi[pyslurm]'`, built for this cluster's Slurm version); "
            "only with cluster.transport: local."
        ),
    )
    partition: str = Field("gpu", description="Partition of the simulation (GPU) jobs.")
    cpu_partition: str | None = Field(
        None, description="Partition of the prepare and post jobs, which need no GPU (None: `partition`)."
    )
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

    @field_validator("time_limit", "prepare_time_limit", "post_time_limit", mode="before")
    @classmethod
    def _slurm_time_text(cls, value: Any) -> Any:
        return _time_value(value)

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

    @field_validator("prologue")
    @classmethod
    def _prologue_is_shell(cls, value: list[str]) -> list[str]:
        problem = shell_syntax_problem("\n".join(value))
        if problem:
            raise ValueError(f"is not complete shell code ({problem}); close every quote and block")
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

    @field_validator("parameters")
    @classmethod
    def _finite_parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if _non_finite(item):
                raise ValueError(f"{key}: {item!r} is not a finite number")
        return value


class IntakeConfig(_Model):
    """How a case folder is read and checked."""

    setup_beam_names: list[str] = Field(
        default_factory=lambda: ["SETUP", "Site Setup"],
        description="Beam names (case-insensitive) treated as setup beams and never simulated.",
    )
    allow_patient_id_mismatch: bool = Field(
        False, description="Accept a PatientID differing between plan and CT/RTSTRUCT (a warning then)."
    )


class LogConfig(_Model):
    """The log files under state_dir: mqi.log (every state change and what the services say)
    and cron.log (what the crontab line's commands print), both rotated by size."""

    max_mb: float = Field(10, gt=0, description="Rotate a log file once it is larger than this (MB).")
    backups: int = Field(5, ge=1, le=100, description="Rotated files kept: mqi.log.1 ... mqi.log.N.")


class PollConfig(_Model):
    """How the poller follows Slurm."""

    interval_seconds: float = Field(
        60,
        gt=0,
        description="`mqi run`/`poll --wait`: seconds between Slurm mirrors (one sacct + squeue) while "
        "cases are active. Results do not wait for it while the completion watch runs (watch_seconds): "
        "each case comes home as its post job ends, followed by one mirror.",
    )
    max_interval_seconds: float = Field(
        300, gt=0, description="`mqi run`: while no case is active the wait between mirrors grows up to this."
    )
    watch_seconds: float = Field(
        0.25,
        ge=0,
        description="`mqi run`/`poll --wait`: the completion watch, a small process on the cluster "
        "(the cluster's Python, on the open SSH connection; no Slurm command) that stats each "
        "active case's results/post.done (the post job's last write) this often, and at once "
        "where inotify works. "
        "0: no watch, results come home with the mirror.",
    )
    gpu_usage_seconds: float = Field(
        300, ge=0, description="Every this many seconds a cycle also reads the GPUs per partition (0: never)."
    )
    lost_grace_seconds: float = Field(
        120, ge=0, description="A job missing from squeue and sacct this long is lost and resubmitted."
    )


class RetentionConfig(_Model):
    """What `mqi clean` (and `mqi run`, once a day) removes or archives. Nothing of a case that
    is still active is ever touched."""

    remote_days: float = Field(
        14, ge=0, description="Remove a case's folder on the cluster this many days after delivery."
    )
    old_days: float = Field(
        7,
        ge=0,
        description="Remove the `<uid>.old-*` folders that `submit --force` set aside after this many days.",
    )
    keep_raw: bool = Field(
        False,
        description="Keep the engine's raw output on the cluster after the post job wrote every RT Dose.",
    )
    local_bundle: Literal["delete-after-delivery", "keep"] = Field(
        "delete-after-delivery",
        description="The rendered bundle under state_dir (a copy of the patient's DICOM).",
    )
    archive_after_days: float | None = Field(
        90,
        ge=0,
        description="Move delivered results older than this into a compressed archive (None: never).",
    )
    archive_dir: Path | None = Field(None, description="Where archives go (default: <results_dir>/archive).")


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
        10,
        ge=2,
        le=40,
        description=(
            "Sub-voxel interpolation: the pass is decided over every point at distance/(4 x steps); "
            "gamma values come from sample points every distance/(steps/2)."
        ),
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
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    logs: LogConfig = Field(default_factory=LogConfig)
    dicom: DicomConfig | None = Field(None, description="DICOM networking (`mqi listen`); absent: off.")
    web: WebConfig = Field(default_factory=lambda: WebConfig())

    qa: QAConfig = Field(default_factory=QAConfig)

    source: Path | None = Field(None, exclude=True, description="The file this was loaded from.")

    @model_validator(mode="after")
    def _pyslurm_is_local(self) -> Config:
        if self.slurm.backend == "pyslurm" and self.cluster.transport != "local":
            raise ValueError(
                "slurm.backend: pyslurm calls slurmctld from this machine: it needs cluster.transport: local "
                "(use backend: cli over SSH)"
            )
        return self

    @property
    def db_path(self) -> Path:
        return self.state_dir / "mqi.db"

    @property
    def bundles_dir(self) -> Path:
        return self.state_dir / "bundles"


def _non_finite(value: Any) -> bool:
    """A float, or text that reads as one (``1e999``, ``.nan``), that is not finite."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in (".inf", "-.inf", "+.inf", ".nan"):
            return True
        try:
            return not math.isfinite(float(text))
        except ValueError:
            return False
    return False


def shell_syntax_problem(code: str) -> str | None:
    """Why ``code`` is not complete shell code (an unclosed quote or block), or None.

    ``bash -n`` parses without running anything; without bash, quotes are checked."""
    if not code.strip():
        return None
    bash = shutil.which("bash")
    if bash is not None:
        try:
            ran = subprocess.run(
                [bash, "-n"], input=code + "\n", capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if ran.returncode != 0:
            lines = [line for line in ran.stderr.splitlines() if line.strip()]
            return lines[-1].split(": ", 1)[-1][:160] if lines else "bash -n failed"
        return None
    from mqi.shell import split_words

    try:
        split_words(": " + code, comments=True)  # ':' keeps an all-comment line from being empty
    except ValueError as err:
        return str(err)
    return None


def _strings(value: Any, key: str) -> list[tuple[str, str]]:
    """Every (key, text) inside a config value: keys and values of mappings, list items."""
    if isinstance(value, BaseModel):
        found = []
        for name in type(value).model_fields:
            found += _strings(getattr(value, name), f"{key}.{name}")
        return found
    if isinstance(value, dict):
        found = []
        for name, item in value.items():
            found += [(f"{key}.{name}", str(name)), *_strings(item, f"{key}.{name}")]
        return found
    if isinstance(value, list | tuple):
        found = []
        for index, item in enumerate(value):
            found += _strings(item, f"{key}[{index}]")
        return found
    if isinstance(value, str | Path):
        return [(key, str(value))]
    return []


def _check_script_values(config: Config, source: str) -> None:
    """No control character (NUL, newline, escape ...) in a value that reaches a script."""
    for section in _SCRIPT_SECTIONS:
        for key, text in _strings(getattr(config, section), section):
            found = _CONTROL.search(text)
            if found:
                raise ConfigError(
                    f"{source}: {key}: holds the control character {found.group()!r}; "
                    "values written into job scripts must be one line of printable text"
                )


def _resolve_paths(model: BaseModel, base: Path, source: str, prefix: str = "") -> None:
    """Expand ~ and $VARS in every local Path field, relative to ``base``; an undefined
    variable is an error naming the key (it would otherwise become a folder name)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, Path) and name != "source":
            text = str(value)
            undefined = [
                match.group(0)
                for match in _VARIABLE.finditer(text)
                if match.group(1).strip("{}") not in os.environ
            ]
            if undefined:
                raise ConfigError(
                    f"{source}: {key}: {undefined[0]} is not set in the environment; "
                    "set it (also for cron and systemd) or write the path out"
                )
            path = Path(_expand(text))
            if not path.is_absolute():
                path = base / path
            object.__setattr__(model, name, path)
        elif isinstance(value, BaseModel):
            _resolve_paths(value, base, source, f"{key}.")


def _check_directories(config: Config, source: str) -> None:
    """A folder key must name a folder, or a path that can become one."""
    keys = [*DIRECTORY_KEYS]
    for key in keys:
        path: Path = getattr(config, key)
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            where = "" if probe == path else f" ({probe} is a file)"
            raise ConfigError(f"{source}: {key}: {path} is not a folder{where}; name a folder")
    template_dir = config.slurm.template_dir
    if template_dir is not None and template_dir.exists() and not template_dir.is_dir():
        raise ConfigError(f"{source}: slurm.template_dir: {template_dir} is not a folder")


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
    _check_script_values(config, source)
    _resolve_paths(config, base or Path.cwd(), source)
    _check_directories(config, source)
    return config


def find_config_file(explicit: Path | None = None) -> Path:
    """The config file to read, by the documented resolution order."""
    if explicit is not None:
        return explicit
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return Path.cwd() / DEFAULT_CONFIG_NAME


def load_optional_config(explicit: Path | None = None) -> Config | None:
    """The config for commands that can run without one (``mqi check``): None only when
    no ``--config`` is given, ``$MQI_CONFIG`` is unset and there is no ``./mqi.yaml``.
    A ``--config`` or ``$MQI_CONFIG`` naming a missing file is a ConfigError."""
    if (
        explicit is None
        and not os.environ.get(CONFIG_ENV)
        and not (Path.cwd() / DEFAULT_CONFIG_NAME).exists()
    ):
        return None
    return load_config(explicit)


def _read_text(path: Path) -> str:
    """The file as UTF-8 text; a FIFO, device or folder is refused before it is opened."""
    try:
        info = path.stat()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a pipe or device?)"
        raise ConfigError(f"{path}: is {kind}; the config must be a YAML file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: is not UTF-8 text (byte {err.start} is {data[err.start : err.start + 1]!r}); "
            "save the file as UTF-8"
        ) from None


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 base-60 numbers, refusing duplicate keys."""


_ConfigLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(
        r"""^(?:[-+]?0b[0-1_]+
        |[-+]?0[0-7_]+
        |[-+]?(?:0|[1-9][0-9_]*)
        |[-+]?0x[0-9a-fA-F_]+)$""",
        re.X,
    ),
    list("-+0123456789"),
)
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _construct_mapping(loader: _ConfigLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} is written twice (first on line {seen[key].start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_ConfigLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(explicit: Path | None = None) -> Config:
    """Load and validate the config; every failure is a ConfigError with one line."""
    path = find_config_file(explicit)
    if not path.exists():
        raise ConfigError(
            f"no config file at {path}: create one with `mqi init`, or pass --config / set ${CONFIG_ENV}"
        )
    text = _read_text(path)
    try:
        data = yaml.load(text, Loader=_ConfigLoader)
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


_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(f"{value!r} is not an AE title (1-16 printable characters, no backslash)")
    return value.strip()


class DicomCaller(_Model):
    """One sender allowed to open an association: its calling AE title and its address."""

    ae: str = Field(description="Calling AE title of the sender (the TPS), exactly as it sends it.")
    host: str = Field(
        description="Its address: an IP address, a network such as 10.0.0.0/24, or a host name "
        "(resolved when the listener starts)."
    )

    @field_validator("ae")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return _check_ae_title(value)


class DicomPeer(_Model):
    """A DICOM node that results are sent to by C-STORE."""

    ae_title: str = Field(description="Called AE title of the destination.")
    host: str = Field(description="Host name or IP address of the destination.")
    port: int = Field(ge=1, le=65535, description="Its DICOM port.")

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return _check_ae_title(value)

    def label(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class SendRetry(_Model):
    """Back-off between attempts to send results to a destination that failed."""

    first_delay_seconds: float = Field(60, ge=0, description="Wait before the second attempt.")
    factor: float = Field(2, ge=1, description="Each further wait is this many times the previous one.")
    max_delay_seconds: float = Field(3600, ge=0, description="No wait is longer than this.")
    max_attempts: int = Field(24, ge=1, description="Give up (send shown failed) after this many attempts.")


class DicomConfig(_Model):
    """DICOM networking: receive cases from the TPS (Storage SCP), send results back (SCU)."""

    ae_title: str = Field("MQI", description="mqi's own AE title; associations calling another are refused.")
    port: int = Field(11112, ge=1, le=65535, description="TCP port `mqi listen` accepts associations on.")
    bind: str = Field(
        "127.0.0.1",
        description="Address to listen on. A TPS on another host needs the address of this "
        "machine's interface (or 0.0.0.0); only callers in `allowed` are accepted either way.",
    )
    allowed: list[DicomCaller] = Field(
        default_factory=list,
        description="Senders accepted, as {ae, host} pairs; any other association is rejected "
        "(calling AE title not recognised). Empty: `mqi listen` refuses to start.",
    )
    spool_dir: Path = Field(
        Path("~/.local/state/mqi/dicom-spool"),
        description="Received instances and the case folders built from them (keep it outside watch_dir).",
    )
    quiet_seconds: float = Field(
        30,
        ge=0,
        description="A complete case is handed over once no instance of it came for this long "
        "(or at once when the association that completed it is released).",
    )
    min_free_mb: float = Field(
        200, ge=0, description='Below this much free space in the spool, C-STORE answers "out of resources".'
    )
    send_results_to: list[DicomPeer] = Field(
        default_factory=list,
        description="Destinations (TPS, PACS) receiving the RT Dose files by C-STORE.",
    )
    send_retry: SendRetry = Field(default_factory=SendRetry)
    timeout_seconds: float = Field(
        30, gt=0, description="Network timeout for connecting, association and each DIMSE reply."
    )

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return _check_ae_title(value)


class WebConfig(_Model):
    """The dashboard (`mqi serve`) and its `/metrics`."""

    bind: str = Field(
        "127.0.0.1:8050",
        description="HOST:PORT to listen on. Any address but loopback needs `token` (or `token_env`) "
        "or `trusted_proxy_header`.",
    )
    token: str | None = Field(
        None, description="Access token every request must carry (Authorization: Bearer, or ?token= once)."
    )
    token_env: str | None = Field(
        None, description="Name of an environment variable holding the access token (instead of `token`)."
    )
    trusted_proxy_header: str | None = Field(
        None,
        description="Header set by an authenticating reverse proxy (e.g. X-Remote-User); a request "
        "carrying it is let in. Only safe when the proxy is the only way to reach mqi serve.",
    )
    stale_poll_factor: float = Field(
        3.0, gt=0, description="Banner when the last good poll is older than this many poll intervals."
    )
    refresh_seconds: float = Field(5.0, gt=0, description="How often open pages refresh their live parts.")

    @field_validator("bind")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bind must be HOST:PORT, e.g. 127.0.0.1:8050, not {value!r}")
        return value

    @staticmethod
    def host_port(bind: str) -> tuple[str, int]:
        """``HOST:PORT`` (``[::1]:8050`` for IPv6) -> (host, port); ConfigError when it is not one."""
        host, _, port = bind.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"bind must be HOST:PORT, e.g. 127.0.0.1:8050, not {bind!r}")
        return host.strip("[]"), int(port)

    def check_bind(self, bind: str) -> tuple[str, int]:
        """(host, port) to listen on; ConfigError for a non-loopback host without a token or a
        trusted proxy header."""
        host, port = self.host_port(bind)
        if _is_loopback(host) or self.access_token() or self.trusted_proxy_header:
            return host, port
        raise ConfigError(
            f"refusing to serve on {host}, which is not loopback, without an access token: set "
            "web.token (or web.token_env) or web.trusted_proxy_header in the config, or bind to 127.0.0.1"
        )

    def access_token(self) -> str | None:
        """The configured token, from `token` or the environment variable `token_env` names."""
        if self.token:
            return self.token
        if self.token_env:
            return os.environ.get(self.token_env) or None
        return None


def _is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, and names that resolve only to them (``localhost``)."""
    import ipaddress
    import socket

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


Config.model_rebuild()  # `dicom` and `web` name models defined after Config
