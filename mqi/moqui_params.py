"""MOQUI parameter files (``moqui_tps.in``): read them as MOQUI does, write lines it reads back.

MOQUI's reader (``mqi::file_parser`` in ``tps_env``) takes one ``Key value`` per line,
separated by whitespace. ``#`` starts a comment (to the end of the line), keys are
case-insensitive, and when a key appears twice the FIRST occurrence wins. Lists are
comma-separated; booleans are ``true``/``false``. MOQUI reads only the first word after
the key, so ``OutputDir my dir`` means ``OutputDir my``. Unknown keys are ignored
silently, so a misspelt key is a silent error: :func:`lint_parameters` reports keys not in
:data:`KNOWN_KEYS` for a family, keys written twice, multi-word values and booleans that
are neither ``true`` nor ``false``.

Everything here is pure: text in, values out. Reading a file is the caller's job
(:func:`read_parameter_file` is a two-line convenience).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Literal

Family = Literal["upstream", "logbased"]

_COMMON_KEYS = (
    # global
    "GPUID",
    "RandomSeed",
    "UseAbsolutePath",
    "TotalThreads",
    "MaxHistoriesPerBatch",
    "Verbosity",
    "BeamPrefix",
    # data directories
    "ParentDir",
    "DicomDir",
    # source
    "SourceType",
    "SimulationType",
    "BeamNumbers",
    "ParticlesPerHistory",
    "NumberOfFraction",
    "RBE",
    "CalibrationFactor",
    # scoring
    "Scorer",
    "SupressStd",
    "ScoreToCTGrid",
    "ScoringMask",
    "Mask",
    "SaveMap",
    "ScorerMapName",
    "ScorerVoxelSize",
    "ReadStructure",
    "BodyContourName",
    "ROIName",
    # output
    "OutputDir",
    "OutputFormat",
    "OverwriteResults",
)

_UPSTREAM_ONLY = (
    "CTVolumeName",
    "UnitWeights",
    "RangeshifterDensity",
    "Machine",
    "Calibration",
    # robustness scenarios
    "DensityScaling",
    "XShift",
    "YShift",
    "ZShift",
    # statistical stopping
    "StoppingStatistics",
    "SaveStoppingStatistics",
    "StoppingCriteria",
    "StatROIMaskFilename",
    "StatROIStructFromRT",
    "StatROI",
    "StatThreshold",
)

_LOGBASED_ONLY = (
    "DicomPath",
    "logFilePath",
    "GantryNum",
    "UsingPhantomGeo",
    "TwoCentimeterMode",
    "PhantomDimX",
    "PhantomDimY",
    "PhantomDimZ",
    "PhantomUnitX",
    "PhantomUnitY",
    "PhantomUnitZ",
    "PhantomPositionX",
    "PhantomPositionY",
    "PhantomPositionZ",
)


def _lower(keys: Iterable[str]) -> frozenset[str]:
    return frozenset(key.lower() for key in keys)


KNOWN_KEYS: dict[str, frozenset[str]] = {
    "upstream": _lower(_COMMON_KEYS + _UPSTREAM_ONLY),
    "logbased": _lower(_COMMON_KEYS + _LOGBASED_ONLY),
}
"""Lowercase keys the engine of each family reads; anything else is silently ignored by it."""

BOOL_KEYS: frozenset[str] = _lower(
    (
        "UseAbsolutePath",
        "OverwriteResults",
        "SupressStd",
        "ScoreToCTGrid",
        "ScoringMask",
        "SaveMap",
        "ReadStructure",
        "StoppingStatistics",
        "SaveStoppingStatistics",
        "StatROIStructFromRT",
        "UsingPhantomGeo",
        "TwoCentimeterMode",
    )
)
"""Lowercase keys whose value must be ``true`` or ``false``."""


class ParameterError(ValueError):
    """A value cannot be read as the type asked for (MOQUI would abort on it)."""


@dataclass(frozen=True)
class Entry:
    """One ``Key value`` line as written."""

    key: str
    value: str
    line: int = 0  # 1-based line number in the text
    extra: str = ""  # words after the value, which MOQUI ignores

    @property
    def norm_key(self) -> str:
        return self.key.lower()


@dataclass(frozen=True)
class Issue:
    """Something in a parameter file that MOQUI would read differently from what was meant."""

    code: str  # DUPLICATE_KEY, UNKNOWN_KEY, MULTI_WORD_VALUE, BAD_BOOL
    key: str
    line: int
    message: str


@dataclass(frozen=True)
class Parameters:
    """All entries of a parameter file in order; getters return what MOQUI would use."""

    entries: tuple[Entry, ...] = ()
    _first: dict[str, Entry] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for entry in self.entries:
            self._first.setdefault(entry.norm_key, entry)

    # --- lookup -------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key.lower() in self._first

    def entry(self, key: str) -> Entry | None:
        """The entry MOQUI uses for ``key`` (the first one), or None."""
        return self._first.get(key.lower())

    def keys(self) -> list[str]:
        """Effective keys, lowercase, in order of first appearance."""
        return list(self._first)

    def as_dict(self) -> dict[str, str]:
        """Effective values by lowercase key."""
        return {key: entry.value for key, entry in self._first.items()}

    def duplicates(self) -> dict[str, list[Entry]]:
        """Keys written more than once (lowercase key -> every entry, first one wins)."""
        seen: dict[str, list[Entry]] = {}
        for entry in self.entries:
            seen.setdefault(entry.norm_key, []).append(entry)
        return {key: found for key, found in seen.items() if len(found) > 1}

    # --- typed getters ------------------------------------------------------
    def get_str(self, key: str, default: str | None = None) -> str | None:
        entry = self.entry(key)
        return default if entry is None else entry.value

    def get_int(self, key: str, default: int | None = None) -> int | None:
        entry = self.entry(key)
        return default if entry is None else parse_int(entry.value, entry.key)

    def get_float(self, key: str, default: float | None = None) -> float | None:
        entry = self.entry(key)
        return default if entry is None else parse_float(entry.value, entry.key)

    def get_bool(self, key: str, default: bool | None = None) -> bool | None:
        """``true`` (any case) is True; any other word is False, as in MOQUI."""
        entry = self.entry(key)
        return default if entry is None else entry.value.lower() == "true"

    def get_list(self, key: str, default: Sequence[str] | None = None) -> list[str] | None:
        entry = self.entry(key)
        if entry is None:
            return None if default is None else list(default)
        return parse_list(entry.value)

    def get_int_list(self, key: str, default: Sequence[int] | None = None) -> list[int] | None:
        entry = self.entry(key)
        if entry is None:
            return None if default is None else list(default)
        return [parse_int(item, entry.key) for item in parse_list(entry.value)]


# --- pure value parsing -----------------------------------------------------
def parse_int(value: str, key: str = "value") -> int:
    try:
        return int(value)
    except ValueError:
        raise ParameterError(f"{key}: {value!r} is not an integer") from None


def parse_float(value: str, key: str = "value") -> float:
    try:
        return float(value)
    except ValueError:
        raise ParameterError(f"{key}: {value!r} is not a number") from None


def parse_list(value: str) -> list[str]:
    """Comma-separated items, stripped; empty items (``1,,2`` or a trailing comma) dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def _parse_line(raw: str, number: int) -> Entry | None:
    text = raw.split("#", 1)[0].strip()
    if not text:
        return None
    words = text.split()
    if len(words) < 2:
        return Entry(key=words[0], value="", line=number)
    return Entry(key=words[0], value=words[1], line=number, extra=" ".join(words[2:]))


def parse_parameter_text(text: str) -> Parameters:
    """Parse the text of a parameter file (never raises; typed getters may)."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        entry = _parse_line(raw, number)
        if entry is not None:
            entries.append(entry)
    return Parameters(tuple(entries))


def read_parameter_file(path: str | PathLike[str]) -> Parameters:
    return parse_parameter_text(Path(path).read_text(encoding="utf-8", errors="replace"))


# --- checks -----------------------------------------------------------------
def lint_parameters(params: Parameters, family: Family | str = "upstream") -> list[Issue]:
    """What MOQUI of ``family`` would read differently from what the file seems to say."""
    known = KNOWN_KEYS[family]
    issues: list[Issue] = []
    for found in params.duplicates().values():
        lines = ", ".join(str(entry.line) for entry in found)
        issues.append(
            Issue(
                "DUPLICATE_KEY",
                found[0].key,
                found[1].line,
                f"{found[0].key} is written {len(found)} times (lines {lines}); "
                f"MOQUI uses the first: {found[0].value!r}",
            )
        )
    for entry in params.entries:
        if entry.norm_key not in known:
            issues.append(
                Issue(
                    "UNKNOWN_KEY",
                    entry.key,
                    entry.line,
                    f"{entry.key} is not a key {family} MOQUI reads; it is ignored (misspelt?)",
                )
            )
        if entry.extra:
            issues.append(
                Issue(
                    "MULTI_WORD_VALUE",
                    entry.key,
                    entry.line,
                    f"{entry.key}: MOQUI reads only {entry.value!r} and ignores {entry.extra!r}",
                )
            )
        if entry.norm_key in BOOL_KEYS and entry.value.lower() not in ("true", "false"):
            issues.append(
                Issue(
                    "BAD_BOOL",
                    entry.key,
                    entry.line,
                    f"{entry.key}: {entry.value!r} is not true/false; MOQUI reads it as false",
                )
            )
    return sorted(issues, key=lambda issue: (issue.line, issue.code))


# --- writing ----------------------------------------------------------------
ParamValue = str | int | float | bool | PathLike[str] | Sequence[str | int | float | bool]


def format_value(value: ParamValue) -> str:
    """A value as MOQUI reads it back: bools true/false, lists comma-joined, no spaces."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, numbers.Integral):
        text = str(int(value))
    elif isinstance(value, numbers.Real):
        text = repr(float(value))
    elif isinstance(value, str):
        text = value
    elif isinstance(value, PathLike):
        text = str(Path(value))
    elif isinstance(value, Sequence):
        items = [format_value(item) for item in value]
        if not items:
            raise ValueError("an empty list cannot be written (MOQUI would read no value)")
        text = ",".join(items)
    else:
        raise ValueError(f"cannot write a {type(value).__name__} as a MOQUI value")
    if not text:
        raise ValueError("an empty value cannot be written (MOQUI would read no value)")
    if "#" in text or any(char.isspace() for char in text):
        raise ValueError(f"{text!r}: MOQUI values may not contain '#' or whitespace")
    return text


def format_parameter_line(key: str, value: ParamValue) -> str:
    """``Key value`` (no newline), or ValueError when MOQUI could not read it back."""
    if not key or "#" in key or any(char.isspace() for char in key):
        raise ValueError(f"{key!r} is not a valid MOQUI key")
    try:
        return f"{key} {format_value(value)}"
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from None
