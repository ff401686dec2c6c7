"""`mqi doctor`: is everything in place to submit? One SSH connection, a table of checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from mqi import slurm
from mqi.config import Config
from mqi.errors import MqiError
from mqi.shell import join_words, quote, split_words
from mqi.slurm.backend import backend_description, open_backend
from mqi.transport import Transport


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _first_word(command: str) -> str:
    try:
        words = split_words(command)
    except ValueError:
        return ""
    return words[0] if words else ""


def run_checks(config: Config, transport: Transport, *, job: bool = False) -> list[Check]:
    """Every check, in order; after a failed connection the cluster checks are skipped."""
    checks = [Check("config", True, str(config.source or "defaults")), *local_checks(config)]
    try:
        who = transport.run("id -un && hostname", timeout=30)
    except MqiError as err:
        checks.append(Check("connection", False, str(err)))
        return checks
    if not who.ok:
        checks.append(Check("connection", False, who.first_error_line()))
        return checks
    user, _, host = who.stdout.strip().partition("\n")
    checks.append(Check("connection", True, f"{transport.description} as {user} on {host}"))

    def remote(name: str, command: str, ok_detail: Callable[[str], str], fix: str) -> None:
        try:
            result = transport.run(command, timeout=60)
        except MqiError as err:
            checks.append(Check(name, False, str(err)))
            return
        if result.ok:
            checks.append(Check(name, True, ok_detail(result.stdout.strip())))
        else:
            checks.append(Check(name, False, f"{result.first_error_line()} — {fix}"))

    workspace = quote(config.cluster.remote_dir)
    remote(
        "remote workspace",
        f"umask 077 && mkdir -p {workspace} && "
        f'probe=$(mktemp {workspace}/.mqi-doctor.XXXXXX) && rm -f "$probe"',
        lambda _: f"{config.cluster.remote_dir} is writable",
        "set cluster.remote_dir to a folder the cluster user can write",
    )
    remote(
        "workspace private",
        f"m=$(stat -c %a {workspace}) && case $m in *00) echo $m;; *) echo $m >&2; exit 1;; esac",
        lambda mode: f"{config.cluster.remote_dir} is {mode}: only the cluster user reads it",
        f"other users can read it: chmod 700 {workspace} (it holds patient data)",
    )
    remote(
        "slurm commands",
        slurm.tools_command(),
        lambda out: ", ".join(line.rsplit("/", 1)[-1] for line in out.splitlines()),
        "sbatch/squeue/sacct/scancel must be on the PATH of a non-interactive shell",
    )
    remote(
        "squeue answers",
        slurm.squeue_command(),
        lambda out: f"{len(out.splitlines())} live job(s) of this user",
        "slurmctld does not answer; ask the cluster admins",
    )
    remote(
        "sacct accounting",
        slurm.accounting_command(),
        lambda _: "slurmdbd answers",
        "mqi needs Slurm accounting (slurmdbd) to follow finished jobs; ask the cluster admins",
    )
    checks.append(_backend_check(config, transport))
    checks.append(_partition_check(config, transport))
    engine = _first_word(config.moqui.command)
    # The jobs run the prologue first (e.g. "module load ..."), so the check does too.
    prologue = "".join(f"{line}; " for line in config.slurm.prologue)
    remote(
        "simulator command",
        f"{prologue}command -v {quote(engine)}",
        lambda out: out,
        "set moqui.command to the engine's path on the cluster",
    )
    python = config.cluster.python
    remote(
        "remote python",
        f"{prologue}{join_words(split_words(python))} -c 'import mqi, mqi.post; print(mqi.__version__)'",
        lambda out: f"{python}: mqi {out}",
        "install mqi on the cluster and set cluster.python (the post job runs python -m mqi.post)",
    )
    if job:
        remote(
            "test GPU job",
            slurm.test_job_command(config.slurm, config.cluster.remote_dir),
            lambda out: out.splitlines()[-1] if out else "ran",
            "the job failed: check slurm.partition, slurm.prologue and the GPU request",
        )
    return checks + dicom_checks(config)


PLACEHOLDER_HOSTS = ("example.org", "example.com", "example.net")


def local_checks(config: Config) -> list[Check]:
    """What the workstation itself needs: a real host, the folders cases come from and go to."""
    checks = []
    host = config.cluster.host or ""
    if config.cluster.transport == "ssh" and (not host or host.endswith(PLACEHOLDER_HOSTS)):
        checks.append(Check("cluster host", False, f"{host or '(none)'} is a placeholder: set cluster.host"))
    for key, folder in (("watch_dir", config.watch_dir), ("results_dir", config.results_dir)):
        if folder.is_dir():
            checks.append(Check(key, True, str(folder)))
        else:
            checks.append(Check(key, False, f"{folder} does not exist: create it or set {key}"))
    return checks


def dicom_checks(config: Config) -> list[Check]:
    """With a ``dicom:`` section: the listener's port is free, each destination answers C-ECHO."""
    if config.dicom is None:
        return []
    from mqi.dicomnet import echo, port_free

    dicom = config.dicom
    free, detail = port_free(dicom.bind, dicom.port)
    checks = [
        Check("dicom port", free, detail if free else f"{detail} — stop what uses it or set dicom.port")
    ]
    for peer in dicom.send_results_to:
        answered, said = echo(peer, calling_ae=dicom.ae_title, timeout=dicom.timeout_seconds)
        checks.append(Check(f"dicom destination {peer.label()}", answered, said))
    return checks


def _backend_check(config: Config, transport: Transport) -> Check:
    """Which backend talks to Slurm (slurm.backend), and its version where it has one."""
    try:
        backend = open_backend(config.slurm.backend, transport)
    except MqiError as err:
        return Check("slurm backend", False, str(err))
    return Check("slurm backend", True, backend_description(backend))


def _partition_check(config: Config, transport: Transport) -> Check:
    partition = config.slurm.partition
    try:
        result = transport.run(slurm.partition_command(partition), timeout=60)
    except MqiError as err:
        return Check("partition", False, str(err))
    info = slurm.parse_partition(result.stdout) if result.ok else None
    if info is None:
        return Check("partition", False, f"partition {partition!r} does not exist — set slurm.partition")
    if not info.available:
        return Check("partition", False, f"partition {partition!r} is not up")
    if info.gpus_per_node < config.slurm.gpus_per_beam:
        return Check(
            "partition",
            False,
            f"partition {partition!r} offers {info.gpus_per_node} GPU(s) per node, "
            f"slurm.gpus_per_beam asks for {config.slurm.gpus_per_beam}",
        )
    return Check("partition", True, f"{info.name}: {info.nodes} node(s), {info.gpus_per_node} GPU(s) each")


def checks_json(checks: list[Check]) -> dict:
    return {"ok": all(check.ok for check in checks), "checks": [asdict(check) for check in checks]}
