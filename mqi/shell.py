"""Shell quoting for everything mqi writes into bash scripts.

Every value that reaches a shell goes through :func:`quote` (the Jinja filter ``sh``
in the job-script templates), so a case folder named ``$(touch x)`` or a beam named
``b1; rm -rf ~`` stays a plain word. Commands taken from the config (the engine,
the interpreter, the remote Python) are *word lists*: split like a POSIX shell
would split them (quotes respected), then every word is quoted again. No variable,
``~`` or glob in them is ever expanded.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable


def quote(value: object) -> str:
    """One shell word that bash reads back as exactly ``str(value)``."""
    return shlex.quote(str(value))


def split_words(command: str, *, comments: bool = False) -> list[str]:
    """A command from the config as a word list; ValueError when unbalanced or empty."""
    words = shlex.split(command, comments=comments, posix=True)
    if not words:
        raise ValueError("is empty")
    return words


def join_words(words: Iterable[object]) -> str:
    """Words as one shell command line, each quoted."""
    return " ".join(quote(word) for word in words)
