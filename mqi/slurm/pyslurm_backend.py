"""The pyslurm backend: direct calls to slurmctld and slurmdbd from the machine mqi runs on.

For a site that runs mqi on a login node (``cluster.transport: local``), it replaces a
process per Slurm call with library calls, and answers in the same shapes as the
command-line backend (:class:`~mqi.slurm.backend.CliBackend`): the same ``JobRecord``
fields, state names, reasons, exit codes and UTC times as the sacct and squeue parsers.

- submit: the bundle's rendered job scripts, with the options of their ``#SBATCH`` lines
  and of submit.sh's sbatch lines (so both backends submit the same jobs);
- query: ``pyslurm.Jobs.load()`` (slurmctld, every job at once), then one accounting call
  (slurmdbd) only for the tracked jobs slurmctld cannot tell all about: those it no longer
  knows, those it knows as finished (sacct's record carries the exit code and who cancelled
  it), and arrays with a started task (Slurm forgets a finished task MinJobAge after it
  ends, while its siblings still run). The accounting call is pyslurm's raw
  ``slurmdb_jobs().get()`` without job steps where it exists (``db.Jobs.load`` otherwise);
- case_jobs (adoption after a crash): ``Jobs.load()`` and ``db.Jobs.load()`` by job name;
- ``top`` and the GPU usage run the commands through the local transport (pyslurm has
  no call for either).

pyslurm is imported when the backend is built, never at mqi's import: it links the
libslurm of exactly one Slurm major version.

Known differences, none of which mqi stores: the raw accounting rows carry no pending
reason (sacct's Reason of a finished job); ``pyslurm.db.Job`` objects give an exit code
of 128 or more minus 128; the query's records are the tracked jobs' only (squeue --me
also lists the user's other jobs).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mqi.errors import OperationalError, TransportError, UsageError
from mqi.shell import split_words
from mqi.slurm import commands
from mqi.slurm.backend import FirstSubmit, QueryAnswer
from mqi.slurm.names import STEPS, id_sort_key, job_name, parent_id
from mqi.slurm.parse import JobRecord, merge_records, parse_array_spec, parse_gpu_usage
from mqi.slurm.states import TERMINAL_STATES, is_transient
from mqi.transport import Transport

INSTALL_HINT = "pip install 'mqi[pyslurm]' as docs/cluster-setup.md says, or set slurm.backend: cli"

_NO_VALUE = frozenset(("", "None", "None assigned", "Unknown", "N/A", "(null)"))


class SubmitPlanError(OperationalError):
    """A bundle's job scripts hold something the pyslurm backend cannot submit."""


# -- pyslurm job objects -> JobRecord (pure: any object with these attributes) ---------


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return None if text in _NO_VALUE else text


@functools.lru_cache(maxsize=8192)
def slurm_stamp(epoch: int | None) -> str | None:
    """Seconds since the epoch as sacct/squeue print them under TZ=UTC (cached: the jobs of
    one submission share their seconds)."""
    if not epoch:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))


def task_indices(spec: str | None) -> list[int]:
    """Pending array tasks: ``0-3,5`` (slurmctld) or the hex bitmap ``0x2f`` (slurmdbd)."""
    if not spec:
        return []
    spec = spec.split("%")[0]
    if spec.lower().startswith("0x"):
        bits = int(spec, 16)
        return [index for index in range(bits.bit_length()) if bits >> index & 1]
    return parse_array_spec(spec)


def _job_ids(job: Any) -> list[str]:
    """The ids squeue -r and sacct print for one job object: ``123``, ``12_3`` or, for the
    pending part of an array, one id per task."""
    array_id = job.array_id
    if not array_id:
        return [str(job.id)]
    task = job.array_task_id
    if task is not None:
        return [f"{array_id}_{task}"]
    waiting = task_indices(job.array_tasks_waiting)
    if waiting:
        return [f"{array_id}_{index}" for index in waiting]
    return [f"{array_id}_0"]  # pyslurm reads task 0 as "no task"


def dependency_text(dependencies: dict[str, Any] | None) -> str | None:
    """pyslurm's parsed dependency back into squeue's text: ``afterok:53_*(unfulfilled)``."""
    if not dependencies:
        return None
    items = [
        f"{kind}:{target}"
        for kind, targets in dependencies.items()
        if type(targets) is list
        for target in targets
    ]
    if dependencies.get("singleton"):
        items.append("singleton")
    return ("?" if dependencies.get("satisfy") == "any" else ",").join(items) or None


def ctld_records(
    jobs: Iterable[Any], *, parents: set[str] | None = None, uid: int | None = None
) -> list[JobRecord]:
    """slurmctld's jobs (``pyslurm.Job``) as parse_squeue reads ``squeue -h -t all -r``:
    no exit code or end time (sacct's records carry those). ``parents``: only these jobs;
    ``uid``: only this user's (squeue --me)."""
    records = []
    for job in jobs:
        if parents is not None and str(job.array_id or job.id) not in parents:
            continue
        if uid is not None and job.user_id != uid:
            continue
        state = job.state or "UNKNOWN"
        fields = (
            str(job.id),
            job.name or "",
            state.split()[0],
            state,
            _text(job.state_reason),
            None,
            None,
            _text(job.allocated_nodes),
            slurm_stamp(job.submit_time),
            slurm_stamp(job.start_time),
            None,
            _text(job.comment),
            dependency_text(job.dependencies),
        )
        records += [tuple.__new__(JobRecord, (job_id, *fields)) for job_id in _job_ids(job)]
    return records


def _uid_of(name: str) -> int | None:
    if name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def db_records(jobs: Iterable[Any], uid_of: Callable[[str], int | None] = _uid_of) -> list[JobRecord]:
    """slurmdbd's jobs (``pyslurm.db.Job``) as parse_sacct reads ``sacct -X --parsable2``.

    pyslurm's objects give an exit code of 128 or more minus 128 and the canceller by name:
    the backend reads accounting with ``db_rows`` where it can (see ``PyslurmBackend``)."""
    records = []
    for job in jobs:
        state = job.state or "UNKNOWN"
        detail = state
        if state == "CANCELLED" and job.cancelled_by:
            uid = uid_of(job.cancelled_by)  # sacct: "CANCELLED by <uid>"
            if uid is not None:
                detail = f"CANCELLED by {uid}"
        fields = (
            str(job.id),
            job.name or "",
            state.split()[0],
            detail,
            _text(job.state_reason),
            job.exit_code,
            job.exit_code_signal,
            _text(job.nodelist),
            slurm_stamp(job.submit_time),
            slurm_stamp(job.start_time),
            slurm_stamp(job.end_time),
            _text(job.comment),
            None,
        )
        records += [tuple.__new__(JobRecord, (job_id, *fields)) for job_id in _job_ids(job)]
    return records


NO_VAL = 0xFFFFFFFE  # Slurm's "no value" and "infinite" for 32-bit fields
INFINITE = 0xFFFFFFFF


def _raw_stamp(epoch: int | None) -> str | None:
    return slurm_stamp(epoch) if epoch and epoch < NO_VAL else None


def _raw_ids(row: dict[str, Any]) -> list[str]:
    """sacct's JobID of one raw accounting record: ``123``, ``12_3``, or ``12_[0-2]`` expanded."""
    array_id, task, pending = (
        row.get("array_job_id") or 0,
        row.get("array_task_id"),
        row.get("array_task_str"),
    )
    if array_id and pending:
        return [f"{array_id}_{index}" for index in task_indices(pending)]
    if array_id and task is not None and task < NO_VAL:
        return [f"{array_id}_{task}"]
    return [str(row["jobid"])]


def exit_status(raw: int | None) -> tuple[int | None, int | None]:
    """A wait(2) status as sacct prints it (``code:signal``), e.g. 34304 -> (134, 0), 11 -> (0, 11)."""
    if raw is None or raw >= NO_VAL:
        return 0, 0
    return (raw >> 8) & 0xFF, raw & 0x7F if os.WIFSIGNALED(raw) else 0


def db_rows(rows: Iterable[dict[str, Any]]) -> list[JobRecord]:
    """Raw accounting records (``pyslurm.slurmdb_jobs().get()``: Slurm's own numbers) as
    parse_sacct reads ``sacct -X --parsable2``. They carry no pending reason (sacct's
    Reason of a finished job, which mqi never reads)."""
    records = []
    for row in rows:
        state = row.get("state_str") or "UNKNOWN"
        detail = state
        requid = row.get("requid")
        if state == "CANCELLED" and requid is not None and requid < NO_VAL:
            detail = f"CANCELLED by {requid}"
        code, signal = exit_status(row.get("exitcode"))
        fields = (
            str(row["jobid"]),
            row.get("jobname") or "",
            state.split()[0],
            detail,
            None,
            code,
            signal,
            _text(row.get("nodes")),
            _raw_stamp(row.get("submit")),
            _raw_stamp(row.get("start")),
            _raw_stamp(row.get("end")),
            _text(row.get("derived_es")),
            None,
        )
        records += [tuple.__new__(JobRecord, (job_id, *fields)) for job_id in _raw_ids(row)]
    return records


def accounting_needed(parents: Iterable[str], live: Iterable[JobRecord]) -> list[str]:
    """The tracked jobs to ask slurmdbd about, given slurmctld's records of them: those it
    does not know, knows as finished (sacct says who cancelled, and how it ended), and
    arrays with a started task (a finished task leaves slurmctld before its siblings)."""
    seen: dict[str, list[JobRecord]] = {}
    for record in live:
        seen.setdefault(record.parent_id, []).append(record)
    needed = []
    for parent in parents:
        records = seen.get(parent)
        if (
            not records
            or any(record.state in TERMINAL_STATES for record in records)
            or any(record.array_index is not None and record.state != "PENDING" for record in records)
        ):
            needed.append(parent)
    return sorted(needed, key=id_sort_key)


# -- what submit.sh would run (pure) ----------------------------------------------------

_SUBMIT_LINE = re.compile(r"^\s*submit\s+(prepare|simulate|post)\s+(sbatch\s.*)$", re.M)
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def submit_words(submit_sh: str) -> dict[str, list[str]]:
    """The sbatch words of a rendered submit.sh, by step (``simulate_only``: the retry line)."""
    found: dict[str, list[str]] = {}
    for step, line in _SUBMIT_LINE.findall(submit_sh):
        try:
            words = split_words(line)
        except ValueError as error:
            raise SubmitPlanError(f"jobs/submit.sh line {line[:80]!r}: {error}") from None
        key = "simulate_only" if step == "simulate" and any(w.startswith("--array=") for w in words) else step
        found.setdefault(key, words)
    missing = [key for key in (*STEPS, "simulate_only") if key not in found]
    if missing:
        raise SubmitPlanError(
            f"jobs/submit.sh has no sbatch line for {', '.join(missing)}: use slurm.backend: cli"
        )
    return found


def script_options(script: str) -> list[str]:
    """The options of a job script's ``#SBATCH`` lines (sbatch stops at the first command)."""
    options = []
    for line in script.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            try:
                options += split_words(stripped[len("#SBATCH") :], comments=True)
            except ValueError as error:
                raise SubmitPlanError(f"job script line {stripped[:80]!r}: {error}") from None
        elif stripped and not stripped.startswith("#"):
            break
    return options


# sbatch's long option -> (JobSubmitDescription attribute, how to read the value)
_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "job-name": ("name", str),
    "comment": ("comment", str),
    "partition": ("partitions", str),
    "account": ("account", str),
    "qos": ("qos", str),
    "time": ("time_limit", str),
    "cpus-per-task": ("cpus_per_task", int),
    "mem": ("memory_per_node", str),
    "mem-per-cpu": ("memory_per_cpu", str),
    "mem-per-gpu": ("memory_per_gpu", str),
    "gres": ("gres_per_node", str),
    "array": ("array", str),
    "output": ("standard_output", str),
    "error": ("standard_error", str),
    "chdir": ("working_directory", str),
    "nice": ("nice", int),
    "dependency": ("dependencies", str),
    "kill-on-invalid-dep": ("kill_on_invalid_dependency", lambda value: value == "yes"),
    "constraint": ("constraints", str),
    "reservation": ("reservations", str),
    "exclude": ("excluded_nodes", str),
    "nodelist": ("required_nodes", str),
    "nodes": ("nodes", str),
    "ntasks": ("ntasks", int),
    "licenses": ("licenses", str),
    "wckey": ("wckey", str),
    "mail-type": ("mail_types", str),
    "mail-user": ("mail_user", str),
    "tmp": ("temporary_disk_per_node", str),
    "signal": ("signal", str),
    "begin": ("begin_time", str),
    "requeue": ("is_requeueable", lambda _value: True),
    "no-requeue": ("is_requeueable", lambda _value: False),
    "hold": ("priority", lambda _value: 0),
}
_IGNORED = frozenset(("parsable",))


def job_description(words: Iterable[str], variables: dict[str, str]) -> dict[str, Any]:
    """sbatch options (the script's first, then the command line's, which win as with
    sbatch) as ``pyslurm.JobSubmitDescription`` keyword arguments; ``$name`` words take
    ``variables``. An option this backend cannot pass refuses the submission."""
    description: dict[str, Any] = {}
    for word in words:
        if not word.startswith("--"):
            raise SubmitPlanError(f"sbatch option {word!r}: the pyslurm backend takes long options only")
        option, _, value = word[2:].partition("=")
        if option in _IGNORED:
            continue
        if option not in _OPTIONS:
            raise SubmitPlanError(
                f"sbatch option --{option} is not one the pyslurm backend passes on: use slurm.backend: cli"
            )
        unknown = [
            name for pair in _VARIABLE.findall(value) for name in pair if name and name not in variables
        ]
        if unknown:
            raise SubmitPlanError(f"sbatch option {word!r} uses ${unknown[0]}, which only a shell knows")
        value = _VARIABLE.sub(lambda match: variables[match.group(1) or match.group(2)], value)
        attribute, read = _OPTIONS[option]
        try:
            description[attribute] = read(value)
        except ValueError:
            raise SubmitPlanError(f"sbatch option {word!r}: {value!r} is not a number") from None
    return description


def step_description(root: Path, words: list[str], variables: dict[str, str]) -> dict[str, Any]:
    """One step of the chain: its script's #SBATCH options, overridden by submit.sh's."""
    if len(words) < 2 or words[0] != "sbatch":
        raise SubmitPlanError(f"jobs/submit.sh line {' '.join(words)!r} is not an sbatch call")
    script_path = root / words[-1]
    script = script_path.read_text(encoding="utf-8")
    description = job_description([*script_options(script), *words[1:-1]], variables)
    description["script"] = script
    return description


# -- the backend --------------------------------------------------------------------------


def load_pyslurm() -> Any:
    """pyslurm, or one clear line on why not."""
    try:
        import pyslurm  # type: ignore[import-not-found]
    except ImportError as error:
        said = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(
            f"slurm.backend: pyslurm, but pyslurm does not import here ({said}): {INSTALL_HINT}"
        ) from None
    return pyslurm


def major(version: str) -> str:
    """``25.11.2`` -> ``25.11``: Slurm's major release, which pyslurm must match."""
    return ".".join(version.split(".")[:2])


def pyslurm_version(module: Any) -> str:
    return str(getattr(getattr(module, "version", None), "__version__", "") or "unknown")


class PyslurmBackend:
    """Slurm through pyslurm (in-cluster; ``cluster.transport: local`` only)."""

    def __init__(self, transport: Transport) -> None:
        if str(getattr(transport, "description", "")).startswith("ssh"):
            raise UsageError(
                "slurm.backend: pyslurm needs cluster.transport: local (use slurm.backend: cli over SSH)"
            )
        self.transport = transport
        self.pyslurm = load_pyslurm()
        self.version = pyslurm_version(self.pyslurm)
        self.slurm_version: str | None = None
        self.uid = os.getuid()
        self.user = pwd.getpwuid(self.uid).pw_name
        self._check_version()

    @property
    def description(self) -> str:
        answering = f", slurmctld {self.slurm_version}" if self.slurm_version else ""
        return f"pyslurm {self.version}{answering}"

    def _check_version(self) -> None:
        """Refuse a pyslurm built for another Slurm major version than slurmctld's (checked
        once; while slurmctld does not answer, the calls say so as the command line does)."""
        if self.slurm_version is not None:
            return
        try:
            answering = str(self.pyslurm.slurmctld.Config.load().version)
        except self.pyslurm.RPCError:
            return
        if major(answering) != major(self.version):
            raise UsageError(
                f"slurm.backend: pyslurm {self.version} is built for Slurm {major(self.version)}, "
                f"but slurmctld runs {answering}: pip install 'mqi[pyslurm]' built for Slurm "
                f"{major(answering)} (docs/cluster-setup.md), or set slurm.backend: cli"
            )
        self.slurm_version = answering

    def _error(self, what: str, error: Exception) -> OperationalError:
        said = str(error) or type(error).__name__
        if is_transient(said):
            return TransportError(f"Slurm is not answering ({said})", transient=True)
        return OperationalError(f"{what}: {said}")

    # -- submit ----------------------------------------------------------------------------
    def submit_chain(
        self, bundle_dir: str, *, only_indices: Iterable[int] | None = None, before: str = ""
    ) -> dict[str, str | None]:
        """Run ``before`` (e.g. publishing the upload), then submit the chain as the bundle's
        submit.sh would: prepare -> simulate array (afterok) -> post (afterany); on a refusal,
        cancel what was submitted. Its job ids."""
        if before:  # shell commands that end in "&& ", as the command line prefixes submit.sh
            result = self.transport.run(f"{before}true", timeout=300)
            if not result.ok:
                raise OperationalError(f"cannot prepare the submission: {result.first_error_line()}")
        self._check_version()
        root = Path(bundle_dir).resolve()
        if not (root / "manifest.json").is_file():
            raise OperationalError(f"{root} is not an mqi bundle root (no manifest.json)")
        lines = submit_words((root / "jobs" / "submit.sh").read_text(encoding="utf-8"))
        variables = {"root": str(root), "prepare_id": "", "simulate_id": "", "only_beams": ""}
        if only_indices is not None:
            indices = sorted(set(only_indices))
            beams = len(json.loads((root / "manifest.json").read_text(encoding="utf-8")).get("beams", []))
            if not indices or indices[0] < 0 or indices[-1] >= beams:
                raise OperationalError(
                    f"Slurm refused the case: --only-beams {indices} are not array indices "
                    f"of this case (0-{beams - 1})"
                )
            variables["only_beams"] = ",".join(str(i) for i in indices)
        (root / "logs").mkdir(exist_ok=True)
        submitted: list[str] = []
        try:
            prepare = None
            if only_indices is None:
                prepare = self._submit(root, "prepare", lines["prepare"], variables, submitted)
                variables["prepare_id"] = prepare
                simulate = self._submit(root, "simulate", lines["simulate"], variables, submitted)
            else:
                simulate = self._submit(root, "simulate", lines["simulate_only"], variables, submitted)
            variables["simulate_id"] = simulate
            post = self._submit(root, "post", lines["post"], variables, submitted)
        except BaseException:
            if submitted:
                with contextlib.suppress(OperationalError):
                    self.cancel(submitted)
            raise
        return {"prepare": prepare, "simulate": simulate, "post": post}

    def _submit(
        self, root: Path, step: str, words: list[str], variables: dict[str, str], done: list[str]
    ) -> str:
        description = step_description(root, words, variables)
        try:
            job_id = str(self.pyslurm.JobSubmitDescription(**description).submit())
        except (self.pyslurm.RPCError, ValueError) as error:
            said = str(error) or type(error).__name__
            if is_transient(said):
                raise TransportError(f"Slurm is not answering ({said})", transient=True) from None
            raise OperationalError(f"Slurm refused the case: sbatch refused the {step} job: {said}") from None
        done.append(job_id)
        return job_id

    # -- query -----------------------------------------------------------------------------
    def query(
        self,
        job_ids: Iterable[str],
        since: datetime,
        *,
        gpus: bool = False,
        arrays: Mapping[str, str] | None = None,
    ) -> QueryAnswer:
        """slurmctld for every tracked job in one call; slurmdbd in one more call only for
        those slurmctld cannot tell all about (``accounting_needed``). ``arrays`` (the
        command line's hint for expanding never-started tasks) is not needed here."""
        parents = {parent_id(job_id) for job_id in job_ids}
        count = 1
        try:
            self._check_version()
            jobs = self.pyslurm.Jobs.load()
        except self.pyslurm.RPCError as error:
            return QueryAnswer(None, count, error=f"Slurm did not answer: {error}")
        live = ctld_records(jobs.values(), parents=parents, uid=self.uid)
        answer = QueryAnswer(merge_records([], live), count)
        needed = accounting_needed(parents, live)
        if needed:
            answer.commands += 1
            try:
                finished = self._accounting(needed, since)
            except (self.pyslurm.RPCError, ValueError) as error:
                answer.accounting_down = True
                answer.warnings.append(f"accounting unavailable: {error}")
            else:
                answer.records = merge_records(finished, live)
        if gpus:
            answer.commands += 1
            result = self.transport.run(commands.gpu_usage_command(), timeout=60)
            answer.partitions = (parse_gpu_usage(result.stdout) or None) if result.ok else None
        return answer

    def _accounting(self, job_ids: list[str], since: datetime) -> list[JobRecord]:
        """slurmdbd's records of these jobs, in one call bounded as sacct -S (ids are recycled).

        pyslurm's raw accounting call (``slurmdb_jobs``) is used where it exists: it skips job
        steps as sacct -X does (6x faster than ``db.Jobs.load`` for 1,000 jobs, measured) and
        keeps Slurm's exit status and canceller uid as sacct prints them."""
        bound = since - timedelta(minutes=5)
        raw = getattr(self.pyslurm, "slurmdb_jobs", None)
        if raw is None:
            return db_records(self._db_jobs(start=bound, ids=[int(job_id) for job_id in job_ids]))
        seconds = max(0, int((datetime.now(UTC) - bound).total_seconds()))
        flags = self.pyslurm.JOBCOND_FLAG_NO_STEP | self.pyslurm.JOBCOND_FLAG_NO_TRUNC
        rows = raw().get(jobids=list(job_ids), starttime=f"now-{seconds}".encode(), flags=flags)
        return db_rows(rows.values())

    def _db_jobs(
        self, *, start: datetime, ids: list[int] | None = None, names: list[str] | None = None
    ) -> Any:
        filters: dict[str, Any] = {"start_time": int(start.timestamp())}
        if ids is not None:
            filters["ids"] = ids
        if names is not None:
            filters["names"] = names
            filters["users"] = [self.user]
        return self.pyslurm.db.Jobs.load(self.pyslurm.db.JobFilter(**filters)).values()

    def case_jobs(
        self, case_uid: str, since: datetime, *, also: str = "", live_only: bool = False
    ) -> tuple[list[JobRecord], str]:
        """This user's live jobs and a case's jobs in accounting by name, as the command
        line's squeue and sacct --name; and the output of ``also`` (run locally).
        ``live_only``: accounting is asked only when a job of the case is live."""
        try:
            self._check_version()
            live = ctld_records(self.pyslurm.Jobs.load().values(), uid=self.uid)
        except self.pyslurm.RPCError as error:
            raise self._error("cannot query the cluster", error) from None
        names = [job_name(case_uid, step) for step in STEPS]
        finished: list[JobRecord] = []
        if not live_only or any(record.name in names for record in live):
            # As the command line: sacct's failure leaves squeue's answer.
            with contextlib.suppress(self.pyslurm.RPCError, ValueError):
                finished = db_records(self._db_jobs(start=since - timedelta(minutes=5), names=names))
        listing = ""
        if also:
            result = self.transport.run(also, timeout=120)
            listing = result.stdout
        return live + finished, listing

    def submit_unless_found(
        self, case_uid: str, since: datetime, bundle_dir: str, *, before: str, also: str
    ) -> FirstSubmit:
        """As the command line's: submit unless slurmctld lists a job of the case or
        ``bundle_dir`` exists; else submit nothing and answer as ``case_jobs``."""
        records, _ = self.case_jobs(case_uid, since, live_only=True)
        names = {job_name(case_uid, step) for step in STEPS}
        if any(record.name in names for record in records) or Path(bundle_dir).exists():
            return FirstSubmit(None, records, self.transport.run(also, timeout=120).stdout)
        return FirstSubmit(self.submit_chain(bundle_dir, before=before))

    def live_jobs(self) -> list[JobRecord]:
        try:
            self._check_version()
            return ctld_records(self.pyslurm.Jobs.load().values(), uid=self.uid)
        except self.pyslurm.RPCError as error:
            raise OperationalError(f"slurmctld did not answer: {error}") from None

    def cancel(self, job_ids: Iterable[str]) -> None:
        for job_id in sorted({parent_id(job_id) for job_id in job_ids}, key=id_sort_key):
            try:
                self.pyslurm.Job(int(job_id)).cancel()
            except self.pyslurm.RPCError as error:
                raise self._error("scancel refused", error) from None

    def top(self, job_ids: Iterable[str]) -> None:
        result = self.transport.run(commands.scontrol_top_command(job_ids), timeout=60)
        if not result.ok:
            raise OperationalError(f"scontrol top refused: {result.first_error_line()}")
