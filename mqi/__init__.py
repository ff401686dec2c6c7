"""mqi: a Slurm-native submitter for MOQUI proton Monte Carlo dose QA.

``mqi.open(config)`` gives a :class:`mqi.api.Session` (see docs/api.md). Names are
imported on first use, so that ``import mqi`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Config", "MqiError", "Session", "__version__", "load_config", "open"]

if TYPE_CHECKING:
    from mqi.api import Session, open
    from mqi.config import Config, load_config
    from mqi.errors import MqiError

_HOMES = {
    "open": "mqi.api",
    "Session": "mqi.api",
    "Config": "mqi.config",
    "load_config": "mqi.config",
    "MqiError": "mqi.errors",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'mqi' has no attribute {name!r}")
