"""MOQUI parameter files read as MOQUI reads them, and lines written so that it reads them back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mqi.moqui_params import (
    BOOL_KEYS,
    KNOWN_KEYS,
    ParameterError,
    format_parameter_line,
    format_value,
    lint_parameters,
    parse_parameter_text,
    read_parameter_file,
)

GOLDEN_TPS_IN = Path(__file__).parent / "golden" / "aptg" / "beams" / "1" / "moqui_tps.in"


def test_keys_are_case_insensitive() -> None:
    params = parse_parameter_text("parentdir /data/case\nOUTPUTDIR out\n")
    assert params.get_str("ParentDir") == "/data/case"
    assert params.get_str("OutputDir") == "out"
    assert params.has("PARENTDIR") and params.has("outputdir")


def test_first_occurrence_wins_and_duplicates_are_reported() -> None:
    params = parse_parameter_text("OutputDir first\nGPUID 0\noutputdir second\nOUTPUTDIR third\n")
    assert params.get_str("OutputDir") == "first"
    duplicates = params.duplicates()
    assert list(duplicates) == ["outputdir"]
    assert [entry.value for entry in duplicates["outputdir"]] == ["first", "second", "third"]
    assert [entry.line for entry in duplicates["outputdir"]] == [1, 3, 4]


def test_comments_blank_lines_and_inline_comments() -> None:
    text = "# a comment\n\n   \nGPUID 1 # the device\n#Scorer LETd\n  Scorer   Dose  \n"
    params = parse_parameter_text(text)
    assert params.get_int("GPUID") == 1
    assert params.get_str("Scorer") == "Dose"
    assert params.keys() == ["gpuid", "scorer"]


def test_only_the_first_word_is_the_value() -> None:
    params = parse_parameter_text("OutputDir my results\n")
    assert params.get_str("OutputDir") == "my"
    (issue,) = lint_parameters(params)
    assert issue.code == "MULTI_WORD_VALUE" and "results" in issue.message


def test_a_key_without_value_reads_as_empty() -> None:
    params = parse_parameter_text("ParentDir\n")
    assert params.has("ParentDir") and params.get_str("ParentDir") == ""


def test_lists_are_comma_separated() -> None:
    params = parse_parameter_text("BeamNumbers 1,2,3\nMask a.raw,b.raw,\nScorer Dose\n")
    assert params.get_int_list("BeamNumbers") == [1, 2, 3]
    assert params.get_list("Mask") == ["a.raw", "b.raw"]
    assert params.get_list("Scorer") == ["Dose"]
    assert params.get_list("Missing") is None
    assert params.get_int_list("Missing", [0]) == [0]


def test_booleans_only_true_is_true() -> None:
    params = parse_parameter_text("A true\nB TRUE\nC false\nD yes\nE 1\n")
    assert [params.get_bool(key) for key in "ABCDE"] == [True, True, False, False, False]
    assert params.get_bool("Missing", True) is True


def test_typed_getters_defaults_and_errors() -> None:
    params = parse_parameter_text("RandomSeed 17\nRBE 1.1\nGPUID zero\n")
    assert params.get_int("RandomSeed") == 17
    assert params.get_float("RBE") == pytest.approx(1.1)
    assert params.get_int("TotalThreads", -1) == -1
    assert params.get_str("Missing") is None
    with pytest.raises(ParameterError, match="GPUID"):
        params.get_int("GPUID")


def test_as_dict_holds_the_effective_values() -> None:
    params = parse_parameter_text("A 1\na 2\nB 3\n")
    assert params.as_dict() == {"a": "1", "b": "3"}


def test_known_keys_per_family() -> None:
    upstream, logbased = KNOWN_KEYS["upstream"], KNOWN_KEYS["logbased"]
    for key in (
        "gpuid",
        "randomseed",
        "parentdir",
        "dicomdir",
        "outputdir",
        "beamnumbers",
        "particlesperhistory",
        "numberoffraction",
        "rbe",
        "scorer",
        "outputformat",
        "overwriteresults",
        "readstructure",
        "bodycontourname",
        "supressstd",
    ):
        assert key in upstream and key in logbased, key
    for key in (
        "gantrynum",
        "usingphantomgeo",
        "twocentimetermode",
        "phantomdimx",
        "phantomunity",
        "phantompositionz",
        "logfilepath",
    ):
        assert key in logbased and key not in upstream, key
    assert all(key == key.lower() for family in KNOWN_KEYS.values() for key in family)
    assert BOOL_KEYS.issubset(upstream | logbased)


def test_lint_reports_unknown_duplicate_and_bad_bool() -> None:
    text = "GPUID 0\nOverwriteResult true\nReadStructure yes\ngpuid 1\nGantryNum 1\n"
    issues = lint_parameters(parse_parameter_text(text), "upstream")
    assert [(issue.code, issue.line) for issue in issues] == [
        ("UNKNOWN_KEY", 2),
        ("BAD_BOOL", 3),
        ("DUPLICATE_KEY", 4),
        ("UNKNOWN_KEY", 5),
    ]
    assert "OverwriteResult" in issues[0].message
    assert lint_parameters(parse_parameter_text("GantryNum 1\n"), "logbased") == []


@pytest.mark.skipif(not GOLDEN_TPS_IN.is_file(), reason="no rendered golden moqui_tps.in")
def test_a_rendered_file_has_no_issues() -> None:
    params = read_parameter_file(GOLDEN_TPS_IN)
    assert lint_parameters(params, "upstream") == []
    assert params.get_int_list("BeamNumbers") == [1]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (np.int64(7), "7"),
        (1.1, "1.1"),
        (np.float32(0.5), "0.5"),
        (1e-05, "1e-05"),
        ([1, 2, 3], "1,2,3"),
        (("a.raw", "b.raw"), "a.raw,b.raw"),
        (Path("beams/1/output"), "beams/1/output"),
        ("Dose", "Dose"),
    ],
)
def test_format_value(value: object, text: str) -> None:
    assert format_value(value) == text  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["", "two words", "a#b", [], "line\nbreak", None])
def test_format_rejects_what_moqui_cannot_read_back(value: object) -> None:
    with pytest.raises(ValueError):
        format_parameter_line("Key", value)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["", "Two Words", "Key#"])
def test_format_rejects_bad_keys(key: str) -> None:
    with pytest.raises(ValueError):
        format_parameter_line(key, 1)


def test_written_lines_read_back_to_the_same_values() -> None:
    values = {
        "OverwriteResults": True,
        "BeamNumbers": [2, 5],
        "ParticlesPerHistory": 100000,
        "RBE": 1.1,
        "OutputDir": "beams/2/output",
    }
    text = "\n".join(format_parameter_line(key, value) for key, value in values.items())
    params = parse_parameter_text(text)
    assert params.get_bool("overwriteresults") is True
    assert params.get_int_list("beamnumbers") == [2, 5]
    assert params.get_float("particlesperhistory") == 100000
    assert params.get_float("rbe") == 1.1
    assert params.get_str("outputdir") == "beams/2/output"
    assert lint_parameters(params) == []
