"""`mqi cron install|show|remove`: one crontab line that runs `mqi scan` and `mqi poll`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from mqi.config import Config
from mqi.errors import OperationalError
from mqi.shell import quote

MARKER = "# mqi: scan + poll (managed by `mqi cron`)"


def cron_line(config: Config, every_minutes: int = 1) -> str:
    """The crontab entry: scan then poll with this config, output appended to a log."""
    if config.source is None:
        raise OperationalError("cron needs a config file: pass --config FILE")
    mqi = quote(str(Path(sys.executable).with_name("mqi")))
    cfg = quote(str(config.source))
    log = quote(str(config.state_dir / "cron.log"))
    schedule = "*" if every_minutes == 1 else f"*/{every_minutes}"
    return (
        f"{schedule} * * * * {mqi} scan --quiet --config {cfg} >> {log} 2>&1; "
        f"{mqi} poll --quiet --config {cfg} >> {log} 2>&1 {MARKER}"
    )


def _crontab(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("crontab") is None:
        raise OperationalError("crontab is not installed (Debian: apt-get install cron)")
    return subprocess.run(["crontab", *args], input=stdin, capture_output=True, text=True, check=False)


def current_lines() -> list[str]:
    result = _crontab("-l")
    if result.returncode != 0:
        return []  # "no crontab for user"
    return result.stdout.splitlines()


def _write(lines: list[str]) -> None:
    result = _crontab("-", stdin="\n".join(lines) + "\n" if lines else "")
    if result.returncode != 0:
        raise OperationalError(f"crontab refused the change: {result.stderr.strip()}")


def install(config: Config, every_minutes: int = 1) -> str:
    """Add the mqi line, replacing an older one; other lines are kept as they are."""
    line = cron_line(config, every_minutes)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    _write([existing for existing in current_lines() if MARKER not in existing] + [line])
    return line


def show() -> str | None:
    return next((line for line in current_lines() if MARKER in line), None)


def remove() -> bool:
    lines = current_lines()
    kept = [line for line in lines if MARKER not in line]
    if len(kept) == len(lines):
        return False
    _write(kept)
    return True
