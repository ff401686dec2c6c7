"""The names and formats mqi uses with Slurm: job names, comments, log files, query fields.

Names are ``mqi.<case_uid>.<step>``; comments ``mqi:<case_uid>``: only the opaque uid
reaches the cluster, where every user can read them.
"""

from __future__ import annotations

JOB_NAME_PREFIX = "mqi."
STEPS = ("prepare", "simulate", "post")

SACCT_FIELDS = (
    "JobID",
    "JobIDRaw",
    "JobName",
    "State",
    "ExitCode",
    "Submit",
    "Start",
    "End",
    "Elapsed",
    "NodeList",
    "Reason",
    "Comment",
)
# squeue -o letters for the same information; '|' never occurs in our names or comments.
SQUEUE_FORMAT = "%i|%A|%j|%T|%r|%k|%N|%E|%V|%S"
ARGUMENT_MAX_BYTES = 131_071
"""The longest single argument Linux passes to a program (MAX_ARG_STRLEN, 32 pages, less the
NUL): the cap on sacct's ``-j`` list, and on a whole command given to ``bash -c`` or to sshd.
Slurm itself takes any number of ids there (22.05 answered 18,000 in one call)."""
SECTION = "@@mqi-section@@"
"""Separates the outputs of several commands run in one round trip."""


def job_name(case_uid: str, step: str) -> str:
    return f"{JOB_NAME_PREFIX}{case_uid}.{step}"


def job_comment(case_uid: str) -> str:
    return f"mqi:{case_uid}"


PLACEHOLDER_NAME = "allocation"
"""The name slurmdbd stores for a job whose start reached it without a name
(``as_mysql_job.c``). On a loaded 22.05 cluster sacct showed it for a few seconds for
finished jobs of mqi's, with their comment intact, before their own name arrived."""


def is_named(record_name: str, record_comment: str | None, name: str, comment: str) -> bool:
    """Whether a record is the job mqi submitted as ``name`` with ``comment``: by its name,
    or by sacct's placeholder name and the comment."""
    return record_name == name or (record_name == PLACEHOLDER_NAME and record_comment == comment)


def parse_job_name(name: str) -> tuple[str, str] | None:
    """``mqi.<uid>.<step>`` -> (uid, step); None for other jobs."""
    if not name.startswith(JOB_NAME_PREFIX):
        return None
    uid, _, step = name[len(JOB_NAME_PREFIX) :].rpartition(".")
    if not uid or step not in STEPS:
        return None
    return uid, step


def parent_id(job_id: str) -> str:
    """``123_4`` -> ``123``: the job an array task belongs to."""
    return job_id.split("_", 1)[0]


def id_sort_key(job_id: str) -> tuple[int, str]:
    return (int(job_id) if job_id.isdigit() else 0, job_id)


def log_file(step: str, case_uid: str, job_id: str) -> str:
    """The bundle-relative log of a prepare or post job (the scripts' ``--output``)."""
    return f"logs/{job_name(case_uid, step)}-{job_id}.out"


def task_log_glob(case_uid: str, array_index: int) -> str:
    """The bundle-relative logs of one simulate task, over every generation of the chain."""
    return f"logs/{job_name(case_uid, 'simulate')}-*_{array_index}.out"


OUTPUT_PATTERNS = {"job": "logs/%x-%j.out", "task": "logs/%x-%A_%a.out"}
"""``--output`` patterns that make the names above (``%x`` is the job name)."""
