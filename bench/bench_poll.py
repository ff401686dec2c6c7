"""Poll speed with 1,000 and 5,000 tracked jobs in the real cluster, against one bare sacct.

Run: .venv/bin/python bench/bench_poll.py [--sizes 1000,5000] [--transports local,ssh]
(needs scripts/dev-cluster.sh running)

For each size and each transport (local, then SSH to 127.0.0.1), one after the other so
that only one set of jobs is in the cluster at a time, it submits dummy chains as the
submitter shapes them: per case a prepare job, a simulate array of 2 tasks and a post
job, named ``mqi.<case_uid>.<step>`` with ``--comment=mqi:<case_uid>`` (434 chains for
the size 1,000: 1,302 tracked jobs; 1,767 chains for 5,000: 5,301). The first 100 cases'
prepare and simulate jobs are short and finish (so do the next 100 cases' prepare jobs):
300 tracked jobs end COMPLETED and are known only to sacct by the time the cycles run;
the rest are held, and all are scancelled as soon as that set is measured. The jobs are
recorded in a fresh Store (upsert_case, add_jobs, set_beams, update_beam: as the
submitter does).

Each repetition copies that database, then times ``Poller.poll_once()`` twice:

- the burst cycle (300 more tracked jobs than the size; 300 finish, and every held
  beam's pending reason is written): what the first poll after a large submission or an
  outage does;
- the steady cycle right after (the size: 1,002 or 5,001 tracked jobs, nothing
  changes): what every other poll does. The targets (ratio <= 1.5, <= 2 Slurm commands)
  are checked on this cycle at each size; the burst cycle's ratio is reported next to it.

The floor, measured in the same repetition over the same transport, is ONE bare
``sacct -X --parsable2 -j <the same ids> -S <the same start>``. Slurm commands per cycle
are taken from PollReport.slurm_commands and counted again in the commands the transport
was given. Medians of 9 (after one warm-up); a repetition during which Slurm or sshd did
not answer (tests elsewhere restart them) is discarded and repeated. Exits 1 when a
target is missed at any size.

On the Slurm 25.11 flavour with pyslurm installed (``MQI_SLURM=25.11 scripts/dev-cluster.sh
pyslurm``), a pyslurm column follows at the smallest size: the local transport's jobs and store
polled with ``slurm.backend: pyslurm`` and, in the same repetitions, with the command line
(alternating which goes first); target: pyslurm's steady cycle at most 0.5x the command line's.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from devcluster import cluster_env, ssh_cluster

from mqi import slurm
from mqi.clock import now_utc
from mqi.config import Config, parse_config
from mqi.errors import TransportError
from mqi.poll import Poller, PollReport
from mqi.slurm.backend import CliBackend
from mqi.store import Job, Store, parse_utc
from mqi.transport import CommandResult, LocalTransport, TransferStats, Transport
from mqi.transport.ssh import SSHTransport

SIZES = (1000, 5000)  # tracked jobs in the steady cycle
BEAMS = 2  # simulate array tasks per case
SHORT_CHAINS = 100  # cases whose prepare and simulate run and complete
SHORT_PREPARES = 200  # cases whose prepare runs and completes (includes the above)
REPS = 9
TARGET_RATIO = 1.5
TARGET_COMMANDS = 2
WAIT_SECONDS = 360
SLURM_TOOLS = re.compile(r"\b(sacct|squeue|sbatch|scancel|scontrol|sinfo)\b")


def make_config(env: dict[str, str], kind: str, tmp: Path) -> Config:
    if kind == "ssh":
        cluster = ssh_cluster(env, env["MQI_TEST_REMOTE_DIR"])
    else:
        local_dir = env.get("MQI_TEST_LOCAL_DIR", "/tmp")
        cluster = {"transport": "local", "retry_seconds": 0, "remote_dir": local_dir}
    data = {
        "state_dir": str(tmp / kind / "state"),
        "results_dir": str(tmp / kind / "results"),
        "watch_dir": str(tmp / kind / "incoming"),
        "cluster": cluster,
        "slurm": {"partition": env["MQI_TEST_PARTITION"]},
        "poll": {"gpu_usage_seconds": 0},  # the job mirror alone; the dashboard's GPU read is apart
    }
    return parse_config(data, f"<bench-poll-{kind}>", base=tmp)


class CountingTransport:
    """Delegates to a real transport; keeps every command it was given."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.description = inner.description
        self.commands: list[str] = []
        self.runs: list[tuple[CommandResult, float]] = []  # each command's result and seconds

    def run(self, command: str, *, timeout: float | None = None, stdin: str | None = None) -> CommandResult:
        self.commands.append(command)
        start = time.perf_counter()
        result = self.inner.run(command, timeout=timeout, stdin=stdin)
        self.runs.append((result, time.perf_counter() - start))
        return result

    def put_files(
        self, local_root: Path, remote_root: str, names: Iterable[str], progress: Any = None
    ) -> TransferStats:
        self.commands.append(f"<put {remote_root}>")
        return self.inner.put_files(local_root, remote_root, names, progress)

    def get_files(
        self, remote_root: str, local_root: Path, names: Iterable[str], progress: Any = None
    ) -> TransferStats:
        self.commands.append(f"<get {remote_root}>")
        return self.inner.get_files(remote_root, local_root, names, progress)

    def close(self) -> None:
        self.inner.close()


# -- dummy jobs ----------------------------------------------------------------------


def cases_for(size: int) -> int:
    """Chains whose jobs, less the short ones that finish, are ``size`` tracked jobs or just over."""
    return -(-(size + SHORT_PREPARES + SHORT_CHAINS) // 3)


@dataclass
class JobSet:
    prefix: str
    cases: int
    chains: list[tuple[str, str, str]] = field(default_factory=list)  # (prepare, simulate, post)
    short_ids: list[str] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)  # every id sbatch printed, for cleanup


SUBMITTERS = 2  # sbatch loops side by side (slurmctld answers several at once; others share it)


def submit_script(prefix: str, partition: str, cases: int) -> str:
    """One shell command submitting every dummy chain (in SUBMITTERS loops side by side);
    prints ``<case> <step> <id>`` lines."""
    return f"""
p={shlex.quote(prefix)}; part={shlex.quote(partition)}
passing='timed out|Unable to contact|Connection re|temporarily'
sb() {{ local out try; for try in 1 2 3 4 5 6 7 8 9 10; do  # slurmctld busy or restarted by a test
  out=$(sbatch --parsable -p "$part" -t 5 -o /dev/null "$@" --wrap true 2>&1) && break
  out="ERR ${{out//$'\\n'/ }}"; [[ $out =~ $passing ]] || break
  sleep 2; done; echo "${{out%%;*}}"; }}
for ((w = 0; w < {SUBMITTERS}; w++)); do (
for ((i = w; i < {cases}; i += {SUBMITTERS})); do
  printf -v uid '%s%08d' "$p" "$i"
  hp=--hold; hs=--hold
  if ((i < {SHORT_PREPARES})); then hp=; fi
  if ((i < {SHORT_CHAINS})); then hs=; fi
  echo "$i prepare $(sb $hp -J mqi.$uid.prepare --comment=mqi:$uid)"
  echo "$i simulate $(sb $hs --array=0-{BEAMS - 1} -J mqi.$uid.simulate --comment=mqi:$uid)"
  echo "$i post $(sb --hold -J mqi.$uid.post --comment=mqi:$uid)"
done ) & done; wait
"""


def uid_of(prefix: str, index: int) -> str:
    return f"{prefix}{index:08d}"


def submit_jobs(transport: Transport, partition: str, jobs: JobSet) -> None:
    result = transport.run(submit_script(jobs.prefix, partition, jobs.cases), timeout=900)
    found: dict[int, dict[str, str]] = {}
    errors = []
    for line in result.stdout.splitlines():
        index, _, rest = line.partition(" ")
        step, _, job_id = rest.partition(" ")
        if job_id.isdigit():
            found.setdefault(int(index), {})[step] = job_id
            jobs.submitted.append(job_id)
        else:
            errors.append(line)
    for index in sorted(found):
        steps = found[index]
        if len(steps) == 3:
            jobs.chains.append((steps["prepare"], steps["simulate"], steps["post"]))
            if index < SHORT_PREPARES:
                jobs.short_ids.append(steps["prepare"])
            if index < SHORT_CHAINS:
                jobs.short_ids.append(steps["simulate"])
    if errors or len(jobs.chains) != jobs.cases or not result.ok:
        raise RuntimeError(
            f"{len(errors)} sbatch call(s) failed (first: {errors[:1]}; {result.stderr.strip()[:200]}); "
            f"{len(jobs.submitted)} jobs were submitted and will be cancelled"
        )


def short_jobs_left(transport: Transport, jobs: JobSet, since: str) -> int:
    """How many short jobs are not yet COMPLETED in sacct or still in squeue (MinJobAge)."""
    expected = SHORT_PREPARES + SHORT_CHAINS * BEAMS
    command = (
        f'squeue -h -u "$(id -un)" -t all -o "%j|%T|%r" | grep "^mqi\\.{jobs.prefix}" '
        f'| grep -vc "|PENDING|JobHeldUser$"; '
        f"TZ=UTC sacct -X --parsable2 --noheader -S {since} -j {','.join(jobs.short_ids)} -o JobID,State "
        "| grep -c '|COMPLETED$'"
    )
    try:
        out = transport.run(command, timeout=120).stdout.split()
    except TransportError:
        return expected  # sshd restarted by a test elsewhere: ask again
    if len(out) != 2 or not all(x.isdigit() for x in out):
        return expected
    in_squeue, completed = (int(x) for x in out)
    return max(in_squeue, expected - completed)


def wait_for_short_jobs(transports: dict[str, Transport], sets: dict[str, JobSet], since: str) -> float:
    """Until every short job of every set has finished and left squeue."""
    start = time.monotonic()
    shown = start
    while True:
        left = {kind: short_jobs_left(transport, sets[kind], since) for kind, transport in transports.items()}
        if not any(left.values()):
            return time.monotonic() - start
        if time.monotonic() - start > WAIT_SECONDS:
            print(f"  warning: short jobs still unfinished after {WAIT_SECONDS} s ({left}); measuring anyway")
            return time.monotonic() - start
        if time.monotonic() - shown > 30:
            shown = time.monotonic()
            print(f"  waiting for the short jobs: {left} left after {shown - start:.0f} s")
        time.sleep(2)


def record_jobs(store: Store, jobs: JobSet) -> None:
    """As the submitter records a new chain: case, jobs, beams pointing at array tasks."""
    for index, (prepare, simulate, post) in enumerate(jobs.chains):
        uid = uid_of(jobs.prefix, index)
        case_id = f"bench-{index:04d}-{uid[:8]}"
        with store.transaction():
            store.upsert_case(
                case_id,
                case_uid=uid,
                source_dir=f"/bench/{case_id}",
                status="submitted",
                reason=f"chain {simulate} submitted",
                priority="normal",
                remote_dir=f"/bench/remote/{uid}",
            )
            store.add_jobs(
                case_id,
                [
                    {"job_id": prepare, "step": "prepare", "generation": 1},
                    {
                        "job_id": simulate,
                        "step": "simulate",
                        "generation": 1,
                        "array_indices": f"0-{BEAMS - 1}",
                    },
                    {"job_id": post, "step": "post", "generation": 1},
                ],
            )
            store.set_beams(
                case_id,
                [{"number": n + 1, "name": f"B{n + 1}", "array_index": n} for n in range(BEAMS)],
            )
            for n in range(BEAMS):
                store.update_beam(
                    case_id, n + 1, status="pending", job_id=f"{simulate}_{n}", slurm_state="PENDING"
                )


def cancel(transport: Transport, jobs: JobSet) -> int:
    """scancel every id we know, then anything of this run still in squeue by name; a
    cluster restarting meanwhile (tests elsewhere do that) is waited for."""
    for attempt in range(10):
        try:
            return cancel_once(transport, jobs)
        except TransportError:
            if attempt == 9:
                raise
            time.sleep(3)
    return 0


def cancel_once(transport: Transport, jobs: JobSet) -> int:
    ids = sorted(set(jobs.submitted), key=int)
    for i in range(0, len(ids), 500):
        result = transport.run("scancel " + " ".join(ids[i : i + 500]), timeout=120)
        if not result.ok and "Invalid job id" not in result.stderr:
            raise TransportError(f"scancel: {result.first_error_line()}", transient=True)
    listing = transport.run('squeue -h -u "$(id -un)" -o "%A|%j"', timeout=60)
    if not listing.ok:
        raise TransportError(f"squeue: {listing.first_error_line()}", transient=True)
    stray = sorted(
        {line.split("|")[0] for line in listing.stdout.splitlines() if f"|mqi.{jobs.prefix}" in line} - {"0"}
    )
    if stray:
        transport.run("scancel " + " ".join(stray), timeout=120)
    return len(ids) + len(stray)


# -- one transport ----------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.0f} ms"


def sacct_start(since_iso: str) -> str:
    """The -S the poller uses for this bound (slurm.sacct_commands: 5 minutes earlier, UTC)."""
    return (parse_utc(since_iso) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")


def floor_command(ids: list[str], since_iso: str) -> str:
    parents = sorted({job.split("_")[0] for job in ids}, key=int)
    return f"TZ=UTC sacct -X --parsable2 -j {','.join(parents)} -S {sacct_start(since_iso)}"


def copy_db(source: Path, target: Path) -> None:
    """A closed database (and its WAL, if SQLite left one) as a new file."""
    for suffix in ("", "-wal"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")


def count_slurm_commands(commands: list[str]) -> int:
    return sum(len(SLURM_TOOLS.findall(command)) for command in commands)


def snapshot_uids(db: Path) -> dict[str, str]:
    store = Store(db)
    try:
        return {case.case_id: case.case_uid for case in store.list_cases()}
    finally:
        store.close()


def time_matching(jobs: list[Job], records: dict[str, slurm.JobRecord], uids: dict[str, str]) -> float:
    """The poller's per-job record lookup as Poller._cycle does it (records indexed by parent
    id once, then filtered by name), re-run alone on the same jobs and records."""
    start = time.perf_counter()
    by_parent: dict[str, list[slurm.JobRecord]] = {}
    for record in records.values():
        by_parent.setdefault(record.parent_id, []).append(record)
    for job in jobs:
        name = slurm.job_name(uids.get(job.case_id, ""), job.step)
        [r for r in by_parent.get(job.job_id, []) if r.name == name]
    return time.perf_counter() - start


@dataclass
class Cycle:
    seconds: float
    report: PollReport
    commands: list[str]


def timed_cycle(config: Config, db: Path, transport: CountingTransport) -> tuple[Cycle, Store]:
    store = Store(db)
    poller = Poller(config, store, transport)
    transport.commands.clear()
    start = time.perf_counter()
    report = poller.poll_once()
    seconds = time.perf_counter() - start
    transport.runs.clear()
    return Cycle(seconds, report, list(transport.commands)), store


@dataclass
class Rep:
    first: Cycle
    steady: Cycle
    floor: float
    steady_floor: float
    query: float
    parse: float
    match: float
    finished: int
    steady_query: float
    steady_parse: float
    steady_match: float
    problem: str | None = None


class Replay:
    """Hands back recorded results in order: a query's own work, without Slurm."""

    description = "replay"

    def __init__(self, results: list[CommandResult]) -> None:
        self.results = list(results)

    def run(self, command: str, *, timeout: float | None = None, stdin: str | None = None) -> CommandResult:
        return self.results.pop(0)


def timed_query(
    transport: CountingTransport, jobs: list[Job], since_iso: str, arrays: dict[str, str]
) -> tuple[list[CommandResult], float, float, dict[str, slurm.JobRecord]]:
    """The poller's query alone (``CliBackend.query`` as a cycle runs it): its results, the
    time of its round trips, the same query's own work (parsing, merging) timed again on
    its recorded results, the records."""
    ids, since = [job.job_id for job in jobs], parse_utc(since_iso)
    transport.runs.clear()
    CliBackend(transport).query(ids, since, arrays=arrays)
    results = [result for result, _ in transport.runs]
    seconds = sum(took for _, took in transport.runs)
    transport.runs.clear()
    start = time.perf_counter()
    answer = CliBackend(cast(Transport, Replay(results))).query(ids, since, arrays=arrays)
    return results, seconds, time.perf_counter() - start, answer.records or {}


def one_rep(config: Config, transport: CountingTransport, db: Path) -> Rep:
    """Floor, the poller's query alone, then the first and the steady cycle on a copy of the store."""
    probe = Store(db)
    active = probe.active_jobs()
    since = probe.oldest_active_submit_time() or ""
    arrays = probe.active_arrays()
    probe.close()
    # the floor: one bare sacct over the same ids and -S
    start = time.perf_counter()
    floor = transport.inner.run(floor_command([j.job_id for j in active], since), timeout=120)
    floor_s = time.perf_counter() - start
    # the poller's own remote command alone, and its parsing
    answer, query_s, parse_s, records = timed_query(transport, active, since, arrays)
    match_s = time_matching(active, records, snapshot_uids(db))
    # the cycles
    cycle, store = timed_cycle(config, db, transport)
    try:
        finished = sum(1 for job in store.list_jobs() if job.finished)
        remaining = store.active_jobs()
        since2 = store.oldest_active_submit_time() or since
        start = time.perf_counter()
        floor2 = transport.inner.run(floor_command([j.job_id for j in remaining], since2), timeout=120)
        steady_floor_s = time.perf_counter() - start
        answer2, steady_query_s, steady_parse_s, records2 = timed_query(
            transport, remaining, since2, store.active_arrays()
        )
        uids = {case.case_id: case.case_uid for case in store.list_cases()}
        steady_match_s = time_matching(remaining, records2, uids)
        transport.commands.clear()
        start = time.perf_counter()
        report2 = Poller(config, store, transport).poll_once()
        transport.runs.clear()
        again = Cycle(time.perf_counter() - start, report2, list(transport.commands))
    finally:
        store.close()
    problems = [str(c.report.errors or c.report.failed or c.report.resubmitted or "") for c in (cycle, again)]
    problems += [r.first_error_line() for r in (floor, *answer, floor2, *answer2) if not r.ok]
    problem = next((p for p in problems if p), None)
    return Rep(
        cycle,
        again,
        floor_s,
        steady_floor_s,
        query_s,
        parse_s,
        match_s,
        finished,
        steady_query_s,
        steady_parse_s,
        steady_match_s,
        problem,
    )


def measure(kind: str, config: Config, transport: CountingTransport, snapshot: Path, tmp: Path) -> dict:
    reps: list[Rep] = []
    discarded = 0
    rep = -1
    while len(reps) < REPS:  # repetition 0 warms caches and is not counted
        rep += 1
        if discarded > 2 * REPS:
            raise SystemExit(f"{kind}: Slurm or sshd did not answer in {discarded} repetitions")
        db = tmp / f"{kind}-cycle{rep}.db"
        copy_db(snapshot, db)
        try:
            result = one_rep(config, transport, db)
        except (TransportError, slurm.SlurmOutputError) as error:
            result = None
            problem = str(error)
        else:
            problem = result.problem
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        if problem or result is None:
            # e.g. a test elsewhere restarting slurmctld or sshd: such a cycle measures nothing
            discarded += 1
            print(f"  {kind}: repetition {rep} discarded, the cluster did not answer: {problem[:160]}")
            time.sleep(3)
            continue
        if rep > 0:
            reps.append(result)
    return {
        "first": [r.first for r in reps],
        "steady": [r.steady for r in reps],
        "floor": [r.floor for r in reps],
        "steady_floor": [r.steady_floor for r in reps],
        "query": [r.query for r in reps],
        "parse": [r.parse for r in reps],
        "match": [r.match for r in reps],
        "finished": [r.finished for r in reps],
        "steady_query": [r.steady_query for r in reps],
        "steady_parse": [r.steady_parse for r in reps],
        "steady_match": [r.steady_match for r in reps],
        "discarded": discarded,
    }


def report_transport(kind: str, description: str, result: dict, summary: list[str]) -> bool:
    first: list[Cycle] = result["first"]
    steady: list[Cycle] = result["steady"]
    ok = True
    print(f"{kind} transport ({description}), load average {result['load']}:")
    for name, cycles, floors, gated in (
        ("burst cycle ", first, result["floor"], False),
        ("steady cycle", steady, result["steady_floor"], True),
    ):
        cycle_s = med([c.seconds for c in cycles])
        floor_s = med(floors)
        ratio = cycle_s / floor_s
        tracked = cycles[0].report.jobs_tracked
        changes = cycles[0].report.changes
        reported = sorted({c.report.slurm_commands for c in cycles})
        seen = sorted({count_slurm_commands(c.commands) for c in cycles})
        trips = sorted({len(c.commands) for c in cycles})
        verdict = "ok" if ratio <= TARGET_RATIO else "ABOVE TARGET"
        if not gated:
            verdict = f"{'within' if ratio <= TARGET_RATIO else 'above'} it; reported, not gated"
        print(
            f"  {name}: {tracked} tracked jobs, {changes} changes: median {ms(cycle_s)}"
            f"  floor (1 bare sacct, same ids and -S) {ms(floor_s)}  ratio {ratio:5.2f}"
            f" (target <= {TARGET_RATIO}: {verdict})"
        )
        commands_ok = max(reported + seen) <= TARGET_COMMANDS
        print(
            f"      Slurm commands per cycle: PollReport {reported}, counted in what the transport ran {seen}"
            f" (target <= {TARGET_COMMANDS}: {'ok' if commands_ok else 'ABOVE TARGET'}); round trips {trips}"
        )
        ok = ok and (ratio <= TARGET_RATIO or not gated) and commands_ok
        if gated:
            summary.append(
                f"{tracked:>7} {kind:>5} {ms(cycle_s)} {ms(floor_s)}  {ratio:5.2f} (<= {TARGET_RATIO})"
                f"  {max(reported + seen):>3} (<= {TARGET_COMMANDS})  {result['load']:>14}"
                f"  {'ok' if ratio <= TARGET_RATIO and commands_ok else 'MISSED'}"
            )
    query_s, parse_s, match_s = med(result["query"]), med(result["parse"]), med(result["match"])
    cycle_s = med([c.seconds for c in first])
    print("  burst cycle, where the time goes (medians, parts timed on their own):")
    print(f"      the poller's query (CliBackend.query), its round trips             {ms(query_s)}")
    print(f"      parse + merge of their output                                       {ms(parse_s)}")
    print(f"      matching records to tracked jobs (indexed by job id)                {ms(match_s)}")
    print(
        f"      the rest: SQLite reads and writes in one transaction (by difference) "
        f"{ms(cycle_s - query_s - parse_s - match_s)}"
    )
    steady_s = med([c.seconds for c in steady])
    query2, parse2 = med(result["steady_query"]), med(result["steady_parse"])
    match2 = med(result["steady_match"])
    print("  steady cycle, where the time goes (medians, parts timed on their own):")
    print(f"      the poller's query (CliBackend.query), its round trips             {ms(query2)}")
    print(f"      parse + merge of their output                                       {ms(parse2)}")
    print(f"      matching records to tracked jobs (indexed by job id)                {ms(match2)}")
    rest = steady_s - query2 - parse2 - match2
    print(f"      the rest: SQLite reads, lock, threads (by difference)               {ms(rest)}")
    if result["discarded"]:
        print(f"  ({result['discarded']} repetition(s) discarded: Slurm did not answer during them)")
    expected = SHORT_PREPARES + SHORT_CHAINS
    finished = sorted(set(result["finished"]))
    print(f"  jobs marked finished by the burst cycle: {finished} (expected {expected})")
    return ok and finished == [expected]


# -- the pyslurm column (Slurm 25.11, transport local) ----------------------------------
# The same tracked jobs and store snapshot as the local transport's, polled with
# slurm.backend: pyslurm and with the command line in the same repetitions. Target: its
# steady cycle at most PYSLURM_TARGET x the command line's.

PYSLURM_TARGET = 0.5


def pyslurm_config(env: dict[str, str], tmp: Path) -> Config | None:
    """The local transport's config with slurm.backend: pyslurm; None (and why) when pyslurm
    cannot run here (another Slurm than 25.11, or pyslurm not installed)."""
    from mqi.errors import MqiError
    from mqi.slurm.backend import open_backend

    config = make_config(env, "local", tmp)
    config = config.model_copy(update={"slurm": config.slurm.model_copy(update={"backend": "pyslurm"})})
    try:
        backend = open_backend("pyslurm", LocalTransport())
    except MqiError as error:
        print(f"no pyslurm column: {error}")
        return None
    print(f"pyslurm column: {getattr(backend, 'description', 'pyslurm')}")
    return config


def cycles_and_query(
    config: Config, transport: CountingTransport, db: Path
) -> tuple[Cycle, Cycle, float, str | None]:
    """The burst and the steady cycle with ``config``'s backend, and its query alone before the
    steady cycle; the first problem seen (Slurm not answering), else None."""
    cycle, store = timed_cycle(config, db, transport)
    try:
        remaining = store.active_jobs()
        since = parse_utc(store.oldest_active_submit_time() or now_utc().isoformat())
        poller = Poller(config, store, transport)
        start = time.perf_counter()
        answer = poller.backend.query([job.job_id for job in remaining], since)
        query_s = time.perf_counter() - start
        transport.commands.clear()
        start = time.perf_counter()
        report = Poller(config, store, transport).poll_once()
        again = Cycle(time.perf_counter() - start, report, list(transport.commands))
    finally:
        store.close()
    problems = [str(c.report.errors or c.report.failed or c.report.resubmitted or "") for c in (cycle, again)]
    problems.append(answer.error or "")
    return cycle, again, query_s, next((p for p in problems if p), None)


def measure_pyslurm(
    cli_config: Config, config: Config, transport: CountingTransport, snapshot: Path, tmp: Path
) -> dict:
    """Repetitions that run the command line's cycles and pyslurm's on copies of the same
    snapshot back to back (in alternating order), so that both see the same load."""
    results: dict[str, dict[str, list]] = {
        name: {"first": [], "steady": [], "query": []} for name in ("cli", "pyslurm")
    }
    discarded = rep = 0
    while len(results["pyslurm"]["steady"]) < REPS:
        order = [("cli", cli_config), ("pyslurm", config)]
        measured = {}
        for name, use in order if rep % 2 else reversed(order):
            db = tmp / f"pair-{name}-{rep}.db"
            copy_db(snapshot, db)
            try:
                measured[name] = cycles_and_query(use, transport, db)
            finally:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
        problem = next((m[3] for m in measured.values() if m[3]), None)
        if problem:
            discarded += 1
            if discarded > 2 * REPS:
                raise SystemExit(f"pyslurm: Slurm did not answer in {discarded} repetitions")
            print(f"  pyslurm: repetition {rep} discarded, the cluster did not answer: {problem[:160]}")
            time.sleep(3)
        elif rep > 0:  # repetition 0 warms caches and is not counted
            for name, (burst, again, query_s, _) in measured.items():
                results[name]["first"].append(burst)
                results[name]["steady"].append(again)
                results[name]["query"].append(query_s)
        rep += 1
    return {**results, "discarded": discarded, "load": jobs_load_alone()}


def jobs_load_alone() -> tuple[float, int, int]:
    """pyslurm.Jobs.load() alone (median of REPS), and how many jobs it returned: every job in
    slurmctld, of every user (pyslurm has no per-user load, which squeue --me uses), and how
    many of them are this user's."""
    import os

    import pyslurm

    times = []
    jobs = pyslurm.Jobs.load()
    for _ in range(REPS):
        start = time.perf_counter()
        jobs = pyslurm.Jobs.load()
        times.append(time.perf_counter() - start)
    mine = sum(1 for job in jobs.values() if job.user_id == os.getuid())
    return med(times), len(jobs), mine


def report_pyslurm(result: dict) -> bool:
    """The pyslurm column beside the command line's, measured in the same repetitions."""
    print("pyslurm backend against the command line, transport local, the local transport's jobs and store,")
    print("  both in each repetition (alternating which goes first):")
    ok = True
    py, cli = result["pyslurm"], result["cli"]
    for name, key in (("burst cycle ", "first"), ("steady cycle", "steady")):
        cycles: list[Cycle] = py[key]
        seconds = med([c.seconds for c in cycles])
        cli_seconds = med([c.seconds for c in cli[key]])
        ratio = seconds / cli_seconds
        calls = sorted({c.report.slurm_commands for c in cycles})
        processes = sorted({count_slurm_commands(c.commands) for c in cycles})
        gated = key == "steady"
        verdict = ("ok" if ratio <= PYSLURM_TARGET else "ABOVE TARGET") if gated else "reported, not gated"
        print(
            f"  {name}: {cycles[0].report.jobs_tracked} tracked jobs: pyslurm {ms(seconds)}"
            f"  command line {ms(cli_seconds)}  ratio {ratio:5.2f} (target <= {PYSLURM_TARGET}: {verdict})"
        )
        print(f"      pyslurm: calls to slurmctld/slurmdbd per cycle {calls}; Slurm processes {processes}")
        ok = ok and (ratio <= PYSLURM_TARGET or not gated)
    for name, part in (("pyslurm", py), ("command line", cli)):
        steady_s = med([c.seconds for c in part["steady"]])
        query_s = med(part["query"])
        print(
            f"  steady cycle, {name}: the backend's query alone {ms(query_s)};"
            f" the rest (matching, SQLite reads, by difference) {ms(steady_s - query_s)}"
        )
    load_s, count, mine = result["load"]
    print(
        f"  of pyslurm's query: Jobs.load() alone {ms(load_s)} for the {count} jobs slurmctld holds"
        f" ({mine} of them this user's; it returns every user's)"
    )
    if result["discarded"]:
        print(f"  ({result['discarded']} repetition(s) discarded: Slurm did not answer during them)")
    return ok


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_set(
    env: dict[str, str], kind: str, transport: CountingTransport, jobs: JobSet, tmp: Path
) -> dict[str, Any]:
    """Submit one set of jobs, let its short jobs finish, measure; its jobs are then cancelled."""
    start = time.perf_counter()
    submit_jobs(transport.inner, env["MQI_TEST_PARTITION"], jobs)
    print(
        f"  {kind}: submitted {jobs.cases} chains ({jobs.cases * 3} jobs, "
        f"{jobs.cases * (2 + BEAMS)} Slurm records) in {time.perf_counter() - start:.1f} s"
    )
    since = (now_utc() - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S")
    config = make_config(env, kind, tmp)
    store = Store(config.db_path)
    try:
        record_jobs(store, jobs)
    finally:
        store.close()
    waited = wait_for_short_jobs({kind: transport.inner}, {kind: jobs}, since)
    print(f"  {kind}: short jobs finished and left squeue {waited:.0f} s later")
    snapshot = tmp / f"{kind}-snapshot.db"
    copy_db(config.db_path, snapshot)
    before = load()
    result = measure(kind, config, transport, snapshot, tmp)
    result["load"] = f"{before} / {load()}"
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default=",".join(str(n) for n in SIZES), help="tracked jobs, e.g. 1000,5000"
    )
    parser.add_argument("--transports", default="local,ssh", help="local, ssh or both")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    env = cluster_env()
    run_id = uuid.uuid4().hex[:6]
    kinds = {
        "local": CountingTransport(LocalTransport()),
        "ssh": CountingTransport(SSHTransport(make_config(env, "ssh", Path(tempfile.gettempdir())).cluster)),
    }
    kinds = {kind: transport for kind, transport in kinds.items() if kind in args.transports.split(",")}
    ok = True
    summary: list[str] = []
    pyslurm_result = None
    try:
        with tempfile.TemporaryDirectory(prefix="mqi-bench-poll-") as tmp_name:
            for size in sizes:
                print(f"size {size:,}: {cases_for(size)} chains per transport, one transport at a time")
                for n, (kind, transport) in enumerate(kinds.items()):
                    jobs = JobSet(prefix=f"{run_id}{size // 1000:02d}{n}", cases=cases_for(size))
                    tmp = Path(tmp_name) / str(size)
                    try:
                        result = run_set(env, kind, transport, jobs, tmp)
                        if kind == "local" and size == min(sizes):
                            with_pyslurm = pyslurm_config(env, tmp)
                            if with_pyslurm is not None:
                                pyslurm_result = measure_pyslurm(
                                    make_config(env, "local", tmp),
                                    with_pyslurm,
                                    transport,
                                    tmp / "local-snapshot.db",
                                    tmp,
                                )
                    finally:
                        try:
                            print(f"  cleaned up ({kind}): scancelled {cancel(transport.inner, jobs)} jobs")
                        except Exception as error:
                            ids = " ".join(jobs.submitted)
                            print(f"cleanup ({kind}) failed: {error}; scancel {ids}", file=sys.stderr)
                    print(f"poll cycle, {REPS} repetitions, median:")
                    ok = report_transport(kind, transport.description, result, summary) and ok
                    if pyslurm_result is not None:
                        ok = report_pyslurm(pyslurm_result) and ok
                        pyslurm_result = None
    finally:
        for transport in kinds.values():
            transport.close()
    print("\nsteady cycle against 1 bare sacct of the same ids (medians; load average before / after):")
    print("tracked  where      cycle      floor  ratio (target)  Slurm cmds  load average   verdict")
    for line in summary:
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
