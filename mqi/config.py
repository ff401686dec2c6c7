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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    web: WebConfig = Field(default_factory=lambda: WebConfig())

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


Config.model_rebuild()  # resolve `web: WebConfig`, defined after Config
