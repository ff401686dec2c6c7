"""Text from files and folder names, made safe to show and to paste into a shell.

Names come from case folders, DICOM files and config values that mqi does not
control: a newline would split a one-line error, an ANSI escape would reach the
terminal raw, a ``$(...)`` in a path shown in a hint would run when pasted.

* :func:`escape_control` - control characters, line separators, bidi overrides and
  the undecodable bytes of a non-UTF-8 file name (surrogate escapes) become visible
  ``\\n``/``\\x1b``/``\\u202e`` escapes; everything else is kept.
* :func:`shell_quote_path` - one word a POSIX shell reads back as exactly the path,
  on one line: ``shlex.quote`` when the name is printable, bash's ``$'...'`` form
  when it holds control characters or undecodable bytes.
* :func:`json_safe` - a JSON-ready structure with non-finite floats replaced by None,
  for ``json.dumps(..., allow_nan=False)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from mqi.shell import quote

_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _unsafe(char: str) -> bool:
    code = ord(char)
    return (
        code < 0x20
        or 0x7F <= code < 0xA0
        or 0xD800 <= code < 0xE000  # surrogates: undecodable bytes of a file name
        or char in ("\u2028", "\u2029")
        or char in _BIDI
    )


def _escaped(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogate escape of byte code-0xDC00
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def escape_control(text: object) -> str:
    """``text`` on one line with every control character written as an escape."""
    value = str(text)
    if not any(_unsafe(char) for char in value):
        return value
    return "".join(_escaped(char) if _unsafe(char) else char for char in value)


def shell_quote_path(path: object) -> str:
    """A path as one shell word on one line (what a hint tells the user to paste)."""
    value = os.fspath(path) if isinstance(path, PurePath) else str(path)
    if not any(_unsafe(char) for char in value):
        return quote(value)
    parts = []
    for char in value:
        if char in ("\\", "'"):
            parts.append("\\" + char)
        elif _unsafe(char):
            code = ord(char)
            if 0xDC80 <= code <= 0xDCFF:
                parts.append(f"\\x{code - 0xDC00:02x}")
            else:
                parts.append("".join(f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogatepass")))
        else:
            parts.append(char)
    return "$'" + "".join(parts) + "'"


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None and tuples as lists, for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value
