"""Every integration test starts on a usable node, whatever an earlier test did to it."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import SLURM_FLAVOUR, cluster_env
from tests.helpers import resume_drained_nodes


@pytest.fixture(autouse=True)
def usable_node() -> None:
    # Another flavour's tools would resume the other cluster's nodes: only the chosen one's.
    if SLURM_FLAVOUR != "22.05" and cluster_env()[0] is None:
        return
    if shutil.which("sinfo"):
        resume_drained_nodes()
