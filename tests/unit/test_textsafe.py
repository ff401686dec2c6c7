"""Names shown to people: quoted as a shell reads them back, on one line, escapes visible."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from mqi.textsafe import escape_control, json_safe, shell_quote_path

NAMES = [
    "plain/RP.dcm",
    "Case 01/RP.dcm",
    "it's",
    "$(touch pwned)",
    "`id`;rm -rf x",
    "two\nlines",
    "red\x1b[31mtext",
    "tab\tand\rreturn",
    os.fsdecode(b"caf\xe9 \xff"),  # a name that is not UTF-8
    "bidi\u202eevil",
]


@pytest.mark.parametrize("name", NAMES)
def test_bash_reads_the_quoted_path_back_exactly(name: str) -> None:
    quoted = shell_quote_path(name)
    assert "\n" not in quoted and "\x1b" not in quoted and "\r" not in quoted
    ran = subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True, check=True)
    assert ran.stdout == os.fsencode(name)


def test_printable_names_use_plain_shlex_quoting() -> None:
    assert shell_quote_path("ct/CT_001.dcm") == "ct/CT_001.dcm"
    assert shell_quote_path("Case 01") == "'Case 01'"


def test_control_characters_are_escaped_and_the_rest_kept() -> None:
    assert escape_control("a\nb\x1b[31mc\x00d") == "a\\nb\\x1b[31mc\\x00d"
    assert escape_control(os.fsdecode(b"caf\xe9")) == "caf\\xe9"
    assert escape_control("Grüße 線量") == "Grüße 線量"
    assert escape_control("x\u202ey") == "x\\u202ey"


def test_json_safe_makes_strict_json() -> None:
    data = {"a": float("nan"), "b": [1.0, float("inf")], "c": (2, -float("inf")), "d": "x"}
    assert (
        json.dumps(json_safe(data), allow_nan=False)
        == '{"a": null, "b": [1.0, null], "c": [2, null], "d": "x"}'
    )
