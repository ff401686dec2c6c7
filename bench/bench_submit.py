"""Submit speed over real SSH: the APTG case through `Submitter.submit`, against a bare floor.

Run: .venv/bin/python bench/bench_submit.py   (needs scripts/dev-cluster.sh running)

Each repetition is a real first submission: a fresh copy of the case folder (so a fresh
case uid), a fresh state_dir and a fresh remote sub-folder. Jobs carry ``--begin=now+600``
so they stay pending and cost nothing; every job is scancelled and every remote folder
removed at the end.

Measured in the same run, alternating with the submits (which goes first alternates too):

* submit: wall time of ``Submitter(config, store, SSHTransport(...)).submit(case_dir)``;
* SSH connections per submit, three ways: ``SSHTransport.connections_opened``, paramiko
  ``Transport`` objects started in this process, and "Accepted publickey" lines that sshd
  logged for those client ports;
* floor: one fabric connection with TCP_NODELAY set on its socket once connected (paramiko
  leaves Nagle's algorithm on, and small files and commands then wait on delayed ACKs;
  mqi sets it before the handshake and acknowledges at once, see ``prompt_socket`` in
  mqi/transport/ssh.py, which saves two delayed ACKs of 40 ms: one in the login and one
  on the first channel; the floor on that socket is measured too, for information),
  SFTP of the same rendered bundle to a fresh remote folder, and three
  ``sbatch --parsable --hold --wrap true`` in one command over that connection;
* breakdown: the network operations inside the submit (timed by a pass-through wrapper
  around the real transport: when each started after the submit began, and how long it
  took) and the local steps timed on their own (read_case, folder_fingerprint,
  render_bundle, bundle_checksums), and render_bundle again with the CT of the first
  render at hand (what a resubmission of the same case renders).

Before each timed run the benchmark flushes its own earlier writes (``os.sync``: the fresh
case copy, the bundles of earlier runs). On ext4 a burst of new files otherwise slows every
file creation that follows while writeback catches up (a render of this case takes 48 ms
after a sync and grows 64 -> 127 ms over six renders in a row without one), which would
charge the benchmark's own set-up to whichever run comes next.

Prints medians of 7 (after one warm-up), the ratio submit/floor (target: at most 1.2) and
the load average; exits 1 when the target or the one-connection rule is missed. A
repetition during which sshd or Slurm did not answer (tests elsewhere restart them) is
discarded and repeated.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import fabric
import paramiko
import pydicom
from devcluster import cluster_env, ssh_cluster

from mqi.config import Config, parse_config
from mqi.errors import MqiError, OperationalError
from mqi.intake import IntakeOptions, folder_fingerprint, read_case
from mqi.intake.identity import case_uid
from mqi.render import render_bundle
from mqi.store import Store
from mqi.submit import Submitter, bundle_checksums
from mqi.transport import CommandResult, TransferStats
from mqi.transport.ssh import SSHTransport, prompt_socket

ROOT = Path(__file__).resolve().parents[1]
APTG = ROOT.parent / "shared" / "data" / "aptg-plan03"
REPS = 7
TARGET_RATIO = 1.2


# -- the dev cluster ----------------------------------------------------------------


def make_config(env: dict[str, str], state_dir: Path, remote_dir: str) -> Config:
    data: dict[str, Any] = {
        "watch_dir": str(state_dir.parent / "incoming"),
        "results_dir": str(state_dir.parent / "results"),
        "state_dir": str(state_dir),
        "cluster": ssh_cluster(env, remote_dir) | {"python": env.get("MQI_TEST_REMOTE_PYTHON", "python3")},
        "slurm": {
            "partition": env["MQI_TEST_PARTITION"],
            "time_limit": "00:10:00",
            "mem_per_beam": None,
            "post_mem": None,
            "extra_directives": ["--begin=now+600"],
        },
        "moqui": {"command": env.get("MQI_TEST_STANDIN", "tps_env")},
        "intake": {"allow_patient_id_mismatch": True},
    }
    return parse_config(data, "<bench-submit>", base=state_dir.parent)


# -- instrumentation (pass-through: the real transport and the real paramiko do the work) --


@dataclass
class Op:
    kind: str  # survey | upload | submit | run
    seconds: float
    label: str = ""
    began: float = 0.0  # seconds after the transport was made (just before the submit began)


class TimedTransport:
    """Delegates every call to a real transport and records when each one began and how
    long it took."""

    def __init__(self, inner: SSHTransport) -> None:
        self.inner = inner
        self.description = inner.description
        self.ops: list[Op] = []
        self.origin = time.perf_counter()
        self.cpu = 0.0  # CPU seconds of this process (every thread) during the submit

    @property
    def connections_opened(self) -> int:
        return self.inner.connections_opened

    def run(self, command: str, *, timeout: float | None = None, stdin: str | None = None) -> CommandResult:
        start = time.perf_counter()
        try:
            return self.inner.run(command, timeout=timeout, stdin=stdin)
        finally:
            if "jobs/submit.sh" in command:
                kind = "submit"
            elif "@@mqi-section@@" in command:
                kind = "survey"
            elif command == "true":
                kind = "connect"
            else:
                kind = "run"
            self.ops.append(Op(kind, time.perf_counter() - start, command[:60], start - self.origin))

    def put_files(
        self, local_root: Path, remote_root: str, names: Iterable[str], progress: Any = None
    ) -> TransferStats:
        start = time.perf_counter()
        try:
            return self.inner.put_files(local_root, remote_root, names, progress)
        finally:
            self.ops.append(Op("upload", time.perf_counter() - start, remote_root, start - self.origin))

    def get_files(
        self, remote_root: str, local_root: Path, names: Iterable[str], progress: Any = None
    ) -> TransferStats:
        return self.inner.get_files(remote_root, local_root, names, progress)

    def close(self) -> None:
        self.inner.close()


@dataclass
class SSHWatch:
    """Counts SSH sessions this process starts (paramiko.Transport.start_client) and times
    the connection setup (fabric.Connection.open), without changing what they do."""

    client_ports: list[int] = field(default_factory=list)
    open_seconds: list[float] = field(default_factory=list)

    def install(self) -> None:
        watch = self
        start_client = paramiko.Transport.start_client
        open_connection = fabric.Connection.open

        def counted_start_client(self: paramiko.Transport, *args: Any, **kwargs: Any) -> Any:
            try:
                watch.client_ports.append(int(self.sock.getsockname()[1]))
            except (OSError, AttributeError, IndexError, TypeError):
                watch.client_ports.append(-1)
            return start_client(self, *args, **kwargs)

        def timed_open(self: fabric.Connection, *args: Any, **kwargs: Any) -> Any:
            begin = time.perf_counter()
            try:
                return open_connection(self, *args, **kwargs)
            finally:
                watch.open_seconds.append(time.perf_counter() - begin)

        paramiko.Transport.start_client = counted_start_client  # type: ignore[method-assign]
        fabric.Connection.open = timed_open  # type: ignore[method-assign]


class SshdLog:
    """New "Accepted publickey" lines in the dev sshd's log (None when it cannot be read)."""

    ACCEPTED = re.compile(r"Accepted publickey for (\S+) from \S+ port (\d+)")

    def __init__(self, env: dict[str, str]) -> None:
        self.path = Path(env.get("MQI_DEV_DIR", "/var/lib/mqi-dev")) / "log" / "sshd.log"
        self.offset = 0

    def readable(self) -> bool:
        return os.access(self.path, os.R_OK)

    def mark(self) -> None:
        if self.readable():
            self.offset = self.path.stat().st_size

    def accepted_since_mark(self) -> list[tuple[str, int]] | None:
        if not self.readable():
            return None
        time.sleep(0.05)  # sshd writes the line as it accepts; leave it a moment
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            text = handle.read().decode(errors="replace")
        return [(m.group(1), int(m.group(2))) for m in self.ACCEPTED.finditer(text)]


# -- the floor -------------------------------------------------------------------------


def floor_once(
    env: dict[str, str],
    bundle: Path,
    names: list[str],
    remote: str,
    partition: str,
    name: str,
    *,
    prompt: bool = False,
) -> tuple[float, list[str], dict[str, float]]:
    """One connection with TCP_NODELAY, SFTP of the bundle's files, three held sbatch in
    one command. Returns (seconds, job ids, parts). ``prompt``: on mqi's own socket
    (TCP_NODELAY before the handshake, quick ACKs)."""
    files = [bundle / name for name in names]
    relative = {PurePosixPath(name).parent for name in names}
    dirs = sorted({PurePosixPath(remote, d) for rel in relative for d in [rel, *rel.parents]})
    parts: dict[str, float] = {}
    start = time.perf_counter()
    cpu = time.process_time()
    connection = fabric.Connection(
        env["MQI_TEST_SSH_HOST"],
        user=env["MQI_TEST_SSH_USER"],
        port=int(env["MQI_TEST_SSH_PORT"]),
        connect_kwargs={
            "key_filename": [env["MQI_TEST_SSH_KEY"]],
            "look_for_keys": False,
            "allow_agent": False,
        },
    )
    connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    connection.client.load_host_keys(env["MQI_TEST_KNOWN_HOSTS"])
    try:
        if prompt:
            connection.connect_kwargs["sock"] = prompt_socket(connection.host, connection.port, 10.0)
        connection.open()
        connection.client.get_transport().sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        parts["connect"] = time.perf_counter() - start
        mark = time.perf_counter()
        sftp = connection.sftp()
        for folder in dirs:  # sorted: parents before children
            sftp.mkdir(str(folder))
        for path, relative_name in zip(files, names, strict=True):
            target = str(PurePosixPath(remote, relative_name))
            sftp.put(str(path), target)
            if path.stat().st_mode & 0o100:
                sftp.chmod(target, path.stat().st_mode & 0o7777)
        parts["upload"] = time.perf_counter() - mark
        mark = time.perf_counter()
        one = (
            f"sbatch --parsable --hold -p {shlex.quote(partition)} -o /dev/null "
            f"-J {shlex.quote(name)} --wrap true"
        )
        result = connection.run(f"{one} && {one} && {one}", hide=True, warn=True, in_stream=False)
        parts["submit"] = time.perf_counter() - mark
        seconds = time.perf_counter() - start
        parts["cpu"] = time.process_time() - cpu
    finally:
        connection.close()
    ids = [line.split(";")[0].strip() for line in result.stdout.split()]
    if result.exited != 0 or len(ids) != 3:
        raise SystemExit(f"floor sbatch failed: {result.stderr.strip() or result.stdout.strip()}")
    return seconds, ids, parts


# -- the local steps on their own ------------------------------------------------------


def local_steps(config: Config, case_dir: Path, out: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    start = time.perf_counter()
    result = read_case(case_dir, IntakeOptions.from_config(config))
    times["intake (read_case)"] = time.perf_counter() - start
    if result.case is None:
        raise SystemExit(f"intake refused {case_dir}: {[p.message for p in result.errors]}")
    start = time.perf_counter()
    folder_fingerprint(case_dir)
    times["folder_fingerprint"] = time.perf_counter() - start
    os.sync()
    start = time.perf_counter()
    rendered = render_bundle(result.case, config, out, priority=config.slurm.default_priority)
    times["render_bundle"] = time.perf_counter() - start
    start = time.perf_counter()
    bundle_checksums(rendered.path, known=rendered.manifest.files)
    times["bundle_checksums"] = time.perf_counter() - start
    os.sync()
    start = time.perf_counter()
    render_bundle(result.case, config, out, priority=config.slurm.default_priority)
    times["render_bundle again (the CT of the first render reused)"] = time.perf_counter() - start
    return times


@dataclass
class Measured:
    submit: float
    floor: float
    floor_parts: dict[str, float]
    prompt_floor: float
    counted: tuple[int, int, int | None, int | None]
    ops: list[Op]
    connect: float
    cpu: float
    local_steps: dict[str, float]
    bundle: Path


def timed_submit(
    config: Config, case_dir: Path, watch: SSHWatch, sshd: SshdLog, job_ids: list[str]
) -> tuple[float, TimedTransport, tuple[int, int, int | None, int | None], float, Path]:
    store = Store(config.db_path)
    transport = TimedTransport(SSHTransport(config.cluster))
    ports_before = len(watch.client_ports)
    opens_before = len(watch.open_seconds)
    sshd.mark()
    start = time.perf_counter()
    transport.origin = start
    cpu = time.process_time()
    try:
        outcome = Submitter(config, store, transport).submit(case_dir)
        seconds = time.perf_counter() - start
        transport.cpu = time.process_time() - cpu
    finally:
        transport.close()
        store.close()
    job_ids += [job for job in outcome.jobs.values() if job]
    if outcome.adopted or outcome.already or outcome.status != "submitted":
        raise SystemExit(f"not a first submission: {outcome.to_json()}")
    ports = watch.client_ports[ports_before:]
    accepted = sshd.accepted_since_mark()
    ours = None if accepted is None else sum(1 for _, port in accepted if port in ports)
    others = None if accepted is None else len(accepted) - (ours or 0)
    counted = (transport.connections_opened, len(ports), ours, others)
    connect = sum(watch.open_seconds[opens_before:])
    return seconds, transport, counted, connect, config.bundles_dir / outcome.case_uid


def one_rep(
    env: dict[str, str],
    config: Config,
    case_dir: Path,
    rep: int,
    remote_root: str,
    watch: SSHWatch,
    sshd: SshdLog,
    job_ids: list[str],
    tmp: Path,
    reference: Path | None,
) -> Measured:
    """One submit and the floor (which goes first alternates), then the local steps alone.
    The floor uploads ``reference`` (a bundle rendered earlier: the same files) when the
    floor goes first, else this submit's bundle."""
    name = f"bench-floor-{remote_root.rsplit('-', 1)[-1]}"
    partition = config.slurm.partition

    def floor(bundle: Path, prompt: bool = False) -> tuple[float, dict[str, float]]:
        names = sorted(bundle_checksums(bundle))
        where = f"{remote_root}/floor{rep}{'-prompt' if prompt else ''}"
        seconds, ids, parts = floor_once(env, bundle, names, where, partition, name, prompt=prompt)
        job_ids.extend(ids)
        return seconds, parts

    if rep % 2 and reference is not None:
        os.sync()
        floor_s, parts = floor(reference)
        os.sync()
        seconds, transport, counted, connect, bundle = timed_submit(config, case_dir, watch, sshd, job_ids)
    else:
        os.sync()
        seconds, transport, counted, connect, bundle = timed_submit(config, case_dir, watch, sshd, job_ids)
        os.sync()
        floor_s, parts = floor(bundle)
    os.sync()
    prompt_floor, _ = floor(bundle, prompt=True)
    os.sync()
    steps = local_steps(config, case_dir, tmp / f"rep{rep}" / "bundle-again")
    return Measured(
        seconds, floor_s, parts, prompt_floor, counted, transport.ops, connect, transport.cpu, steps, bundle
    )


# -- main --------------------------------------------------------------------------------


def fresh_case(tmp: Path, name: str) -> Path:
    """A copy of the APTG folder in its own place: a new case uid, a first submission."""
    target = tmp / name / APTG.name
    shutil.copytree(APTG, target, copy_function=shutil.copyfile)
    for folder in [target, *(p for p in target.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)
    return target


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.0f} ms"


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    if not APTG.is_dir():
        print(f"skipped: the APTG case {APTG} is absent")
        return 0
    env = cluster_env()
    run_id = uuid.uuid4().hex[:8]
    remote_root = f"{env['MQI_TEST_REMOTE_DIR']}/bench-submit-{run_id}"
    watch = SSHWatch()
    watch.install()
    sshd = SshdLog(env)
    job_ids: list[str] = []
    admin = SSHTransport(make_config(env, Path(tempfile.gettempdir()) / "unused", remote_root).cluster)
    runs: list[Measured] = []
    sizes = (0, 0)
    uids: list[str] = []
    discarded = 0
    loads: list[float] = [os.getloadavg()[0]]
    reference: Path | None = None
    plan_uid = str(pydicom.dcmread(next(APTG.glob("RP*.dcm")), stop_before_pixels=True).SOPInstanceUID)
    try:
        setup = admin.run(f"mkdir -p {shlex.quote(remote_root)}")
        if not setup.ok:
            raise SystemExit(f"cannot create {remote_root}: {setup.first_error_line()}")
        with tempfile.TemporaryDirectory(prefix="mqi-bench-submit-") as tmp_name:
            tmp = Path(tmp_name)
            rep = -1
            while len(runs) < REPS:  # repetition 0 warms Python up and is not counted
                rep += 1
                if discarded > REPS:
                    raise SystemExit(f"the cluster did not answer in {discarded} repetitions")
                case_dir = fresh_case(tmp, f"rep{rep}")
                uids.append(case_uid(case_dir, plan_uid))
                config = make_config(env, tmp / f"rep{rep}" / "state", f"{remote_root}/r{rep}")
                try:
                    measured = one_rep(
                        env, config, case_dir, rep, remote_root, watch, sshd, job_ids, tmp, reference
                    )
                except (MqiError, paramiko.SSHException, OSError) as error:
                    # e.g. a test elsewhere restarting sshd or slurmctld: this repetition measures nothing
                    discarded += 1
                    print(f"repetition {rep} discarded, the cluster did not answer: {error}")
                    time.sleep(3)
                    continue
                if rep == 0:
                    print(f"warm-up (not counted): submit {ms(measured.submit)}, floor {ms(measured.floor)}")
                    reference = measured.bundle
                    names = sorted(bundle_checksums(reference))
                    sizes = (len(names), sum((reference / name).stat().st_size for name in names))
                    continue
                runs.append(measured)
                loads.append(os.getloadavg()[0])
            report(runs, sizes, loads)
        if discarded:
            print(f"({discarded} repetition(s) discarded: the cluster did not answer during them)")
    finally:
        cleanup(admin, job_ids, [*uids, f"bench-floor-{run_id}"], remote_root)
    ratio = med([r.submit for r in runs]) / med([r.floor for r in runs])
    return 0 if ratio <= TARGET_RATIO and all(r.counted[0] == 1 for r in runs) else 1


def report(runs: list[Measured], sizes: tuple[int, int], loads: list[float]) -> None:
    files, size = sizes
    submits = [r.submit for r in runs]
    floors = [r.floor for r in runs]
    print(
        f"APTG plan 03 over SSH to 127.0.0.1, {len(runs)} repetitions, bundle {files} files "
        f"{size / 1e6:.1f} MB; load average (1 min) {min(loads):.2f} to {max(loads):.2f} "
        f"on {os.cpu_count()} cpus"
    )
    print(
        f"  submit (Submitter.submit, first submission):     median {ms(med(submits))}"
        f"  (min {ms(min(submits))}, max {ms(max(submits))})"
    )
    print(
        f"  floor (1 connection, TCP_NODELAY + sftp + 3 sbatch): median {ms(med(floors))}"
        f"  (min {ms(min(floors))}, max {ms(max(floors))})"
    )
    ratio = med(submits) / med(floors)
    verdict = "ok" if ratio <= TARGET_RATIO else "ABOVE TARGET"
    print(f"  ratio submit/floor: {ratio:.2f}  (target <= {TARGET_RATIO}: {verdict})")
    prompt_floors = [r.prompt_floor for r in runs]
    print(
        f"  for information, the floor on mqi's socket (TCP_NODELAY before the handshake, quick"
        f" ACKs): median {ms(med(prompt_floors))}; submit/that {med(submits) / med(prompt_floors):.2f}"
    )
    print(
        f"  CPU time of this process (all threads): submit {ms(med([r.cpu for r in runs]))},"
        f" floor {ms(med([r.floor_parts['cpu'] for r in runs]))}  (the rest of the wall time is"
        " waiting: on the network, sshd, Slurm, and the CPU when the machine is busy)"
    )
    counted = [r.counted for r in runs]
    print("SSH connections per submit (target 1):")
    print(f"  SSHTransport.connections_opened: {sorted({c[0] for c in counted})}")
    print(f"  paramiko sessions started in this process: {sorted({c[1] for c in counted})}")
    if counted[0][2] is None:
        print("  sshd log: not readable here")
    else:
        print(
            f"  sshd 'Accepted publickey' for those client ports: {sorted({c[2] for c in counted})}"
            f"  (other logins in the same windows: {sum(c[3] or 0 for c in counted)})"
        )
    print("inside the submit (medians; 'starts' is after the submit began):")
    names = {
        "connect": "connect (while the bundle renders: connect, then `true`)",
        "survey": "survey (squeue [+ sacct] by name + remote sha256 listing)",
        "upload": "upload (one tar stream: mkdir, unpack, sizes)",
        "submit": "submit round trip (squeue as the guard, rename, submit.sh: 3 sbatch)",
        "run": "other remote commands",
    }
    for kind, label in names.items():
        began = [op.began for r in runs for op in r.ops if op.kind == kind]
        took = [sum(op.seconds for op in r.ops if op.kind == kind) for r in runs]
        if began:
            print(f"  {label:<74} starts {ms(med(began))}, takes {ms(med(took))}")
    print(f"  {'  of which the ssh connect':<74} {'':14}takes {ms(med([r.connect for r in runs]))}")
    after = [
        r.submit - max(op.began + op.seconds for op in r.ops if op.kind == "submit")
        for r in runs
        if any(op.kind == "submit" for op in r.ops)
    ]
    print(
        f"  {'after the submit round trip (the store records the chain)':<74} {'':14}takes {ms(med(after))}"
    )
    print("the local steps, each timed on its own (medians):")
    for key in runs[0].local_steps:
        value = med([r.local_steps[key] for r in runs])
        print(f"  {key:<74} {ms(value)}")
    print("the floor's parts (medians):")
    for key in ("connect", "upload", "submit"):
        print(f"  {key:<74} {ms(med([r.floor_parts[key] for r in runs]))}")


def cleanup(admin: SSHTransport, job_ids: list[str], names: list[str], remote_root: str) -> None:
    """scancel our jobs (by id, then any left by name), remove the remote folder; a cluster
    restarting meanwhile (tests elsewhere do that) is waited for."""
    for attempt in range(10):
        try:
            stray = cleanup_once(admin, job_ids, names, remote_root)
            print(f"cleaned up: scancelled {len(set(job_ids)) + stray} jobs, removed {remote_root}")
            break
        except (MqiError, OSError, paramiko.SSHException) as error:
            if attempt == 9:
                ids = " ".join(job_ids)
                print(f"cleanup failed ({error}): scancel {ids}; rm -rf {remote_root}", file=sys.stderr)
            admin.close()
            time.sleep(3)
    admin.close()


def cleanup_once(admin: SSHTransport, job_ids: list[str], names: list[str], remote_root: str) -> int:
    if job_ids:
        result = admin.run("scancel " + " ".join(sorted(set(job_ids), key=int)), timeout=60)
        if not result.ok and "Invalid job id" not in result.stderr:
            raise OperationalError(f"scancel: {result.first_error_line()}")
    listing = admin.run('squeue -h -u "$(id -un)" -o "%A|%j"', timeout=60)
    if not listing.ok:
        raise OperationalError(f"squeue: {listing.first_error_line()}")
    stray = sorted(
        {
            line.split("|")[0]
            for line in listing.stdout.splitlines()
            if any(name in line.partition("|")[2] for name in names)
        }
    )
    if stray:
        admin.run("scancel " + " ".join(stray), timeout=60)
    result = admin.run(f"rm -rf {shlex.quote(remote_root)}", timeout=120)
    if not result.ok:
        raise OperationalError(f"cannot remove {remote_root}: {result.first_error_line()}")
    return len(stray)


if __name__ == "__main__":
    sys.exit(main())
