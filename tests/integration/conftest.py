"""Every integration test starts on a usable node, whatever an earlier test did to it."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import resume_drained_nodes


@pytest.fixture(autouse=True)
def usable_node() -> None:
    if shutil.which("sinfo"):
        resume_drained_nodes()
