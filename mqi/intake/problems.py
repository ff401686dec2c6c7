"""Collecting every problem of a case folder instead of stopping at the first."""

from __future__ import annotations

from pathlib import Path

from mqi.intake.codes import Code
from mqi.intake.model import Problem
from mqi.textsafe import escape_control, shell_quote_path

MAX_LISTED = 3  # examples named in one message before "and N more"


class Problems:
    """Errors and warnings found so far, in the order found."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, code: Code, message: str, path: Path | None = None) -> None:
        self.errors.append(Problem(code=code.value, message=escape_control(message), path=path))

    def warn(self, code: Code, message: str, path: Path | None = None) -> None:
        self.warnings.append(Problem(code=code.value, message=escape_control(message), path=path))

    def add(self, code: Code, message: str, path: Path | None = None, *, error: bool) -> None:
        (self.error if error else self.warn)(code, message, path)

    def rel(self, path: Path) -> str:
        """How a file is named in messages: relative to the case folder, quoted as a shell
        would need it, on one line."""
        try:
            return shell_quote_path(path.relative_to(self.root).as_posix())
        except ValueError:
            return shell_quote_path(path)

    @staticmethod
    def show(path: Path) -> str:
        """A path outside the case folder's naming (the folder itself), quoted."""
        return shell_quote_path(path)


def listing(items: list[str], limit: int = MAX_LISTED) -> str:
    """'a, b, c and 4 more'."""
    shown = ", ".join(items[:limit])
    rest = len(items) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown
