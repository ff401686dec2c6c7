"""Rendering: a checked ``Case`` plus the ``Config`` -> a self-contained bundle directory.

The bundle (layout in :mod:`mqi.bundle`) needs nothing else once copied to the cluster:
``input/`` (CT slices ``CT_0000.dcm``... sorted by z, ``RTPLAN.dcm``, ``RTSTRUCT.dcm``),
``tps/`` (TPS RT Dose), ``delivery_logs/`` (the machine logs intake found, renamed
``log_0001.csv``...; the original names are returned in ``RenderedBundle.delivery_logs``
and never leave the workstation), ``beams/<number>/moqui_tps.in``,
``jobs/{prepare,simulate,post}.sbatch``, ``jobs/submit.sh``, ``jobs/checksums.sha256``
and ``manifest.json`` (opaque ids and numbers only), and, for the workstation only,
``.local/ct_sources.json``. Only files intake classified are copied.

Rewriting the CT as int16 is most of a render's time. A render over an earlier bundle of
the case reuses each int16 slice whose source file has the same sha256 as when that slice
was made (and whose own sha256 is still the one that render recorded); any other slice is
converted again. The bundle is private (folders 0700, files 0600) and built in a staging folder
that SIGTERM/SIGHUP remove and the next render sweeps after a SIGKILL.

Rendering is pure and deterministic: the same case and config give a byte-identical
bundle (no timestamps, sorted keys). It refuses, with a :class:`RenderError` naming the
key, the engine-parameter traps listed in docs/moqui.md.

Job scripts come from Jinja2 templates (``mqi/templates/slurm/``, or the site folder in
``slurm.template_dir``; a name missing there falls back to the built-in one). Templates
see these variables: ``case_uid``, ``step``, ``directives`` (the option of each
``#SBATCH`` line), ``prologue``, ``beam_numbers``, ``beam_count``, ``engine``,
``python``, ``interpreter`` (word lists), ``scorer``, ``output_format``,
``expected_bytes``, ``checksums``, ``sbatch`` (submit.sh's command lines) and the
filter ``sh`` (shell quoting). Jinja comments are ``{## ... ##}`` so that bash's
``${#array[@]}`` stays literal. Commands from the config (``moqui.command``,
``moqui.interpreter_command``, ``cluster.python``) are shell *word lists*: split like
POSIX sh splits them (quotes respected), never expanded (no ``$VAR``, ``~`` or globs;
set the environment in ``slurm.prologue``).

The ``#SBATCH`` lines and submit.sh's sbatch command lines come from :mod:`mqi.slurm`
(``sbatch_directives``, ``sbatch_submit_lines``), the one module that knows Slurm syntax.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element

from mqi import moqui_params
from mqi import slurm as slurm_syntax
from mqi.bundle import (
    CT_SOURCES_NAME,
    MANIFEST_NAME,
    QA_CONFIG_NAME,
    Manifest,
    ManifestBeam,
    ManifestGrid,
    read_manifest,
    sha256_file,
    write_manifest,
)
from mqi.config import Config, MoquiConfig, Priority, SlurmConfig
from mqi.errors import UsageError
from mqi.intake.model import Case, TPSDose
from mqi.intake.pixels import INT16, int16_offset, is_plain, stored_pixels
from mqi.shell import quote, split_words
from mqi.textsafe import shell_quote_path

BUILTIN_TEMPLATES = Path(__file__).parent / "templates" / "slurm"
STEPS = ("prepare", "simulate", "post")
SCRIPT_NAMES = ("prepare.sbatch", "simulate.sbatch", "post.sbatch", "submit.sh")
CHECKSUMS_NAME = "jobs/checksums.sha256"
OWNED_KEYS = (
    "GPUID",
    "BeamNumbers",
    "ParentDir",
    "DicomDir",
    "OutputDir",
    "OverwriteResults",
    "UseAbsolutePath",
)
SCORERS = ("Dose", "LETd", "LETt", "Dij")
OUTPUT_FORMATS = ("raw", "mhd", "mha", "npz")
_CASE_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_INT16 = INT16
STAGING_SUFFIX = ".rendering"
_STAGING = re.compile(r"^\..*\.(\d+)\.[^.]*\.rendering$|^\..*\.old-(\d+)$")
DIR_MODE = 0o700  # bundles hold patient DICOM: private to the user
FILE_MODE = 0o600
SCRIPT_MODE = 0o700
LOG_DIR = "delivery_logs"
# Attributes whose VR (US or SS) follows PixelRepresentation: dropped when rewriting.
_REPRESENTATION_BOUND = (
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
)


class RenderError(UsageError):
    """The case and config cannot make a bundle that would run correctly."""


@dataclass(frozen=True)
class RenderedBundle:
    path: Path
    manifest: Manifest
    sbatch_lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # bundle path -> the original path (relative to the case folder) of each delivery log:
    # the mapping stays on the workstation, only the opaque names are uploaded
    delivery_logs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineSettings:
    """``moqui.parameters`` checked: the config's lines and what the job scripts need."""

    lines: tuple[str, ...]
    scorer: str
    output_format: str
    fixed_seed: bool
    grid_sized: bool
    warnings: tuple[str, ...]


def resolve_priority(slurm: SlurmConfig, priority: str | None) -> Priority:
    name = priority or slurm.default_priority
    if name not in slurm.priorities:
        known = ", ".join(sorted(slurm.priorities))
        raise RenderError(f"priority {name!r} is not one of slurm.priorities ({known})")
    chosen = slurm.priorities[name]
    if chosen.qos is not None:
        try:
            slurm_syntax.directive("qos", f"slurm.priorities.{name}.qos", chosen.qos)
        except slurm_syntax.DirectiveError as err:
            raise RenderError(str(err)) from None
    return chosen


# --- moqui_tps.in ---------------------------------------------------------------------
def _param_text(key: str, value: Any) -> str:
    try:
        return moqui_params.format_value(value)
    except ValueError as err:
        raise RenderError(f"moqui.parameters.{key}: {err}") from None


def _unique_keys(parameters: Mapping[str, Any]) -> dict[str, str]:
    """Lowercase key -> key as written; refuses a key written twice in any letter case."""
    seen: dict[str, str] = {}
    for key in parameters:
        if not key or "#" in key or any(char.isspace() for char in key):
            raise RenderError(f"moqui.parameters: {key!r} is not a valid MOQUI key")
        if key.lower() in seen:
            raise RenderError(
                f"moqui.parameters: {seen[key.lower()]!r} and {key!r} are the same key "
                "(MOQUI ignores letter case and uses the first); keep one"
            )
        seen[key.lower()] = key
    for owned in OWNED_KEYS:
        if owned.lower() in seen:
            raise RenderError(
                f"moqui.parameters.{seen[owned.lower()]}: mqi sets this key for each beam; "
                "remove it from the config"
            )
    return seen


def _check_particles(values: Mapping[str, str]) -> None:
    text = values.get("particlesperhistory")
    if text is None:
        raise RenderError("moqui.parameters.ParticlesPerHistory is missing (it must be > 0)")
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not number > 0:
        raise RenderError(f"moqui.parameters.ParticlesPerHistory: {text!r} must be a number > 0")


def _check_choice(values: Mapping[str, str], key: str, allowed: tuple[str, ...], default: str) -> str:
    text = values.get(key.lower(), default)
    if text not in allowed:
        raise RenderError(f"moqui.parameters.{key}: {text!r} is not one of {', '.join(allowed)}")
    return text


def check_parameters(moqui: MoquiConfig) -> EngineSettings:
    """Check ``moqui.parameters`` against the traps in docs/moqui.md."""
    keys = _unique_keys(moqui.parameters)
    values = {key.lower(): _param_text(key, value) for key, value in moqui.parameters.items()}
    _check_particles(values)
    if moqui.family == "logbased" and values.get("gantrynum", "1") not in ("1", "2"):
        raise RenderError(
            f"moqui.parameters.GantryNum: {values['gantrynum']!r} must be 1 or 2 "
            "(the log-based engine silently uses 2 otherwise)"
        )
    scorer = _check_choice(values, "Scorer", SCORERS, "Dose")
    output_format = _check_choice(values, "OutputFormat", OUTPUT_FORMATS, "raw")
    known = moqui_params.KNOWN_KEYS[moqui.family]
    warnings = [
        f"moqui.parameters.{key}: not a key {moqui.family} MOQUI reads; it would be ignored (misspelt?)"
        for low, key in keys.items()
        if low not in known
    ]
    if moqui.family == "logbased" and "gantrynum" not in values:
        warnings.append("moqui.parameters.GantryNum is not set: the log-based engine uses gantry 2")
    if values.get("randomseed") == "-1":
        warnings.append("moqui.parameters.RandomSeed: -1 is time-based; results are not reproducible")
    grid_sized = (
        moqui.family == "upstream"
        and scorer != "Dij"
        and output_format in ("raw", "mhd")
        and "scorervoxelsize" not in values
    )
    return EngineSettings(
        lines=tuple(f"{key} {values[key.lower()]}" for key in moqui.parameters),
        scorer=scorer,
        output_format=output_format,
        fixed_seed="randomseed" in values,
        grid_sized=grid_sized,
        warnings=tuple(warnings),
    )


def beam_seed(case_uid: str, beam_number: int) -> int:
    """A fixed RandomSeed per beam, in 1..2**31-1, derived from the case uid."""
    digest = hashlib.sha256(f"mqi-seed:{case_uid}:{beam_number}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1) + 1


def moqui_input_text(case_uid: str, beam_number: int, engine: EngineSettings) -> str:
    """The text of ``beams/<number>/moqui_tps.in``."""
    owned: list[tuple[str, Any]] = [
        ("GPUID", 0),
        ("BeamNumbers", beam_number),
        ("ParentDir", "."),
        ("DicomDir", "input"),
        ("OutputDir", f"beams/{beam_number}/output"),
        ("OverwriteResults", True),
        ("UseAbsolutePath", False),
    ]
    if not engine.fixed_seed:
        owned.append(("RandomSeed", beam_seed(case_uid, beam_number)))
    lines = [
        f"# MOQUI parameters for beam {beam_number} of case {case_uid} (rendered by mqi)",
        *engine.lines,
        "# set by mqi for this beam",
        *(moqui_params.format_parameter_line(key, value) for key, value in owned),
    ]
    return "\n".join(lines) + "\n"


# --- DICOM inputs -----------------------------------------------------------------------
def _ds_number(value: float) -> str:
    text = f"{value:.10g}"
    return "0" if text in ("-0", "0") else text


def _ds_value(ds: pydicom.Dataset, keyword: str, default: float) -> float:
    """A DS value as intake reads it: the default when absent or empty."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _shift_to_int16(ds: pydicom.Dataset, label: str) -> None:
    """Rewrite pixels as signed int16, explicit VR little endian, with the same HU
    (stored*slope + intercept): unsigned values are shifted, signed ones kept.

    Intake decoded the same pixels with the same function (``stored_pixels``) and
    checked the shift fits, so a RenderError here means a case that bypassed intake."""
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    try:
        values = stored_pixels(ds)
    except Exception as err:  # pydicom and its plugins raise many types
        raise RenderError(f"CT {label}: pixel data cannot be decoded ({type(err).__name__}: {err})") from None
    slope = _ds_value(ds, "RescaleSlope", 1.0)
    intercept = _ds_value(ds, "RescaleIntercept", 0.0)
    if slope == 0 or not np.isfinite(slope) or not np.isfinite(intercept):
        raise RenderError(
            f"CT {label}: RescaleSlope {slope:g} / RescaleIntercept {intercept:g} are not usable"
        )
    offset = 0 if signed else int16_offset(slope, intercept)
    shifted = values + offset
    low, high = int(shifted.min()), int(shifted.max())
    if low < _INT16[0] or high > _INT16[1]:
        hu = (low * slope + intercept - offset * slope, high * slope + intercept - offset * slope)
        raise RenderError(
            f"CT {label}: HU {hu[0]:g}..{hu[1]:g} do not fit signed int16 at RescaleSlope "
            f"{slope:g}; MOQUI needs int16 CT pixels"
        )
    ds.PixelData = shifted.astype("<i2").tobytes()
    ds["PixelData"].VR = "OW"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept = _ds_number(intercept - offset * slope)
    ds.RescaleSlope = _ds_number(slope)
    for keyword in _REPRESENTATION_BOUND:
        if keyword in ds:
            delattr(ds, keyword)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian


def write_ct_slice(src: Path, dst: Path, label: str) -> bool:
    """Copy one CT slice; rewrite it as signed int16 explicit VR little endian when it is
    not already plain little-endian signed 16-bit. True when rewritten."""
    return _write_ct_bytes(src.read_bytes(), dst, label)


def _write_ct_bytes(data: bytes, dst: Path, label: str, *, splice: bool = True) -> bool:
    """:func:`write_ct_slice` from the slice file's bytes. ``splice``: an explicit VR little
    endian source gets only its changed elements written (see :func:`_spliced`)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) or None
    # before any value is read: reading turns an element into a decoded one, without its place
    spans = _spans(ds, data) if splice and syntax == pydicom.uid.ExplicitVRLittleEndian else None
    if ds.get("PixelRepresentation") == 1 and ds.get("BitsAllocated") == 16 and is_plain(syntax):
        dst.write_bytes(data)
        return False
    _shift_to_int16(ds, label)
    spliced = _spliced(data, ds, spans) if spans is not None else None
    if spliced is not None:
        dst.write_bytes(spliced)
    else:
        # force_encoding: a big-endian or deflated source is written as explicit VR little endian
        pydicom.dcmwrite(dst, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    return True


# The elements _shift_to_int16 writes or removes; a source without one of the first six is
# rewritten by pydicom as a whole (the element would have to be inserted).
_REWRITTEN = (0x00280100, 0x00280101, 0x00280102, 0x00280103, 0x00281052, 0x00281053, 0x7FE00010)
_REMOVED = (0x00280106, 0x00280107, 0x00280108, 0x00280109, 0x00280120, 0x00280121)
_GROUP_LENGTHS = (0x00280000, 0x7FE00000)  # would change with the group
_LONG_HEADER_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})


def _spans(ds: pydicom.Dataset, data: bytes) -> dict[int, tuple[int, int]] | None:
    """Where each element :func:`_shift_to_int16` touches lies in ``data`` (undecoded, in
    tag order, not overlapping); None when the slice is not that simple."""
    if any(tag in ds for tag in _GROUP_LENGTHS):
        return None
    spans: dict[int, tuple[int, int]] = {}
    for tag in (*_REWRITTEN, *_REMOVED):
        if tag not in ds:
            if tag in _REWRITTEN:
                return None
            continue
        elem = ds.get_item(tag)
        if not isinstance(elem, RawDataElement) or elem.is_buffered or elem.VR is None:
            return None
        if elem.value_tell is None or elem.length == 0xFFFFFFFF or elem.is_implicit_VR:
            return None
        header = 12 if elem.VR in _LONG_HEADER_VRS else 8
        spans[tag] = (elem.value_tell - header, elem.value_tell + elem.length)
    ordered = [spans[tag] for tag in sorted(spans)]
    if ordered[0][0] < 132 or ordered[-1][1] > len(data):
        return None
    if any(end > start for (_, end), (start, _) in itertools.pairwise(ordered)):
        return None
    return spans


def _spliced(data: bytes, ds: pydicom.Dataset, spans: dict[int, tuple[int, int]]) -> bytes | None:
    """The rewritten slice: ``data`` with each touched element replaced by its new encoding
    (the same encoder pydicom's writer uses) or left out; every other byte as it was."""
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    position = 0
    try:
        for tag in sorted(spans):
            start, end = spans[tag]
            out.write(data[position:start])
            if tag in ds:
                write_data_element(out, ds.get_item(tag))
            position = end
    except Exception:  # anything pydicom's writer refuses: it writes the whole file instead
        return None
    out.write(data[position:])
    return out.getvalue()


# Part of the key of a reused slice: a change to the conversion (or to pydicom, which
# writes the file) never reuses a slice converted the old way.
_CT_CONVERSION = f"int16-1/pydicom-{pydicom.__version__}"


@dataclass(frozen=True)
class EarlierSlice:
    """A CT slice an earlier render wrote: its file, whether it was rewritten, its sha256."""

    path: Path
    rewritten: bool
    digest: str


def earlier_ct(bundle: Path) -> dict[str, EarlierSlice]:
    """The CT slices of the bundle already at ``bundle`` (an earlier render of the case),
    by the sha256 of the source file each was made from; empty when there is none or its
    record does not match this conversion."""
    try:
        record = json.loads((bundle / CT_SOURCES_NAME).read_text(encoding="utf-8"))
        files = read_manifest(bundle).files
    except (OSError, ValueError):  # absent, unreadable, or not this format
        return {}
    if not isinstance(record, dict) or record.get("conversion") != _CT_CONVERSION:
        return {}
    found: dict[str, EarlierSlice] = {}
    slices = record.get("slices")
    for name, entry in slices.items() if isinstance(slices, dict) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str) or name not in files:
            continue
        if not name.startswith("input/CT_") or "/" in name.removeprefix("input/"):
            continue
        found[entry["source"]] = EarlierSlice(bundle / name, bool(entry.get("rewritten")), files[name])
    return found


def _reuse(earlier: EarlierSlice, dst: Path) -> bool:
    """Put an earlier slice at ``dst`` (a hard link, else a copy) if its content is still
    what that render wrote; False when it is not (it is converted again then)."""
    try:
        if sha256_file(earlier.path) != earlier.digest:
            return False
        try:
            os.link(earlier.path, dst)
        except OSError:
            shutil.copyfile(earlier.path, dst)
    except OSError:
        return False
    return True


@dataclass
class CopiedCT:
    normalised: bool = False
    slices: dict[str, dict[str, Any]] = field(default_factory=dict)  # bundle name -> source, rewritten
    digests: dict[str, str] = field(default_factory=dict)  # bundle name -> sha256, for reused slices


def _copy_ct(case: Case, input_dir: Path, earlier: Mapping[str, EarlierSlice]) -> CopiedCT:
    copied = CopiedCT()
    for index, src in enumerate(case.ct.files):
        label = f"slice {index} ({shell_quote_path(src.name)})"
        dst = input_dir / f"CT_{index:04d}.dcm"
        name = f"input/{dst.name}"
        try:
            data = src.read_bytes()
            source = hashlib.sha256(data).hexdigest()
            reused = earlier.get(source)
            if reused is not None and _reuse(reused, dst):
                rewritten = reused.rewritten
                copied.digests[name] = reused.digest
            else:
                rewritten = _write_ct_bytes(data, dst, label)
        except (RenderError, OSError):
            raise
        except Exception as err:  # intake read the same file; this is a file it could not vet
            raise RenderError(f"CT {label}: cannot be rewritten ({type(err).__name__}: {err})") from None
        copied.normalised |= rewritten
        copied.slices[name] = {"source": source, "rewritten": rewritten}
    return copied


def _tps_name(dose: TPSDose, taken: set[str]) -> str:
    if dose.beam_number is not None:
        stem = f"RD_BEAM_{dose.beam_number}"
    else:
        stem = "RD_" + re.sub(r"[^A-Za-z0-9]+", "_", dose.summation_type.upper()).strip("_")
    name, count = f"{stem}.dcm", 1
    while name in taken:
        count += 1
        name = f"{stem}_{count}.dcm"
    taken.add(name)
    return name


def _copy_tps(case: Case, tps_dir: Path) -> list[str]:
    names: list[str] = []
    taken: set[str] = set()
    ordered = sorted(
        case.tps_doses,
        key=lambda d: (d.beam_number is not None, d.beam_number or 0, d.summation_type, str(d.path)),
    )
    for dose in ordered:
        name = _tps_name(dose, taken)
        shutil.copyfile(dose.path, tps_dir / name)
        names.append(f"tps/{name}")
    return names


MOQUI_SETUP_NAME = "Setup"  # MOQUI skips a beam of this name: it must stay as it is


def opaque_beam_name(position: int) -> str:
    return f"beam{position + 1}"


def write_plan(src: Path, dst: Path) -> None:
    """The RT Ion Plan with opaque beam names (``beam1``, ``beam2`` by position).

    MOQUI names its output files after the beams, in folders every cluster user can list,
    and a planner's beam name can carry a patient's name; nothing else in the plan
    changes (post and the RT Dose refer to beams by number)."""
    ds = pydicom.dcmread(src)
    for position, item in enumerate(ds.get("IonBeamSequence") or []):
        if str(item.get("BeamName", "")) != MOQUI_SETUP_NAME:
            item.BeamName = opaque_beam_name(position)
    ds.save_as(dst)


def opaque_log_name(index: int, original: Path) -> str:
    """``log_0001.csv``: a delivery log's name in the bundle carries no part of the
    original name (which often holds a patient id or name), only its order and suffix."""
    suffix = original.suffix.lower() if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", original.suffix) else ""
    return f"log_{index:04d}{suffix}"


def _copy_logs(case: Case, root: Path) -> dict[str, str]:
    """Only the delivery-log files intake found, under opaque names; returns the mapping
    bundle path -> original path relative to the case folder (kept on the workstation)."""
    mapping: dict[str, str] = {}
    if not case.log_files:
        return mapping
    (root / LOG_DIR).mkdir()
    for index, src in enumerate(sorted(case.log_files), start=1):
        name = f"{LOG_DIR}/{opaque_log_name(index, src)}"
        shutil.copyfile(src, root / name)
        try:
            original = src.relative_to(case.source_dir).as_posix()
        except ValueError:
            original = str(src)
        mapping[name] = original
    return mapping


def _copy_inputs(case: Case, root: Path, earlier: Mapping[str, EarlierSlice]) -> tuple[CopiedCT, list[str]]:
    """input/ (CT, plan, structures) and tps/; returns (the CT, tps)."""
    input_dir, tps_dir = root / "input", root / "tps"
    input_dir.mkdir()
    tps_dir.mkdir()
    ct = _copy_ct(case, input_dir, earlier)
    write_plan(case.plan.path, input_dir / "RTPLAN.dcm")
    if case.structure_set is not None:
        shutil.copyfile(case.structure_set.path, input_dir / "RTSTRUCT.dcm")
    tps = _copy_tps(case, tps_dir)
    return ct, tps


# --- job scripts ------------------------------------------------------------------------
def _words(key: str, command: str | None) -> list[str]:
    if command is None:
        return []
    try:
        return split_words(command)
    except ValueError as err:
        raise RenderError(f"{key}: {command!r} is not a shell word list: {err}") from None


def _template_env(template_dir: Path | None) -> jinja2.Environment:
    """The job-script templates: the site folder's first, then the built-in ones. One
    environment per state of the site folder (names, sizes, times), so that a long-running
    mqi (scan, run) compiles each template once and still sees a site template that was
    added, changed or removed."""
    if template_dir is None:
        return _environment(None, ())
    if not template_dir.is_dir():
        raise RenderError(f"slurm.template_dir: {template_dir} is not a folder")
    try:
        state = tuple(
            sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(template_dir))
        )
    except OSError as err:
        reason = err.strerror or err
        raise RenderError(f"slurm.template_dir: {template_dir} cannot be read: {reason}") from None
    return _environment(str(template_dir), state)


@functools.lru_cache(maxsize=16)
def _environment(template_dir: str | None, _state: tuple[tuple[str, int, int], ...]) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if template_dir is not None:
        loaders.append(jinja2.FileSystemLoader(template_dir))
    loaders.append(jinja2.FileSystemLoader(str(BUILTIN_TEMPLATES)))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        comment_start_string="{##",  # bash's ${#array[@]} must stay literal
        comment_end_string="##}",
    )
    env.filters["sh"] = quote
    return env


def _script_context(case: Case, config: Config, engine: EngineSettings, priority: Priority) -> dict[str, Any]:
    grid = case.ct
    return {
        "case_uid": case.case_uid,
        "prologue": list(config.slurm.prologue),
        "beam_numbers": [beam.number for beam in case.beams],
        "beam_count": len(case.beams),
        "engine": _words("moqui.command", config.moqui.command),
        "interpreter": _words("moqui.interpreter_command", config.moqui.interpreter_command),
        "python": _words("cluster.python", config.cluster.python),
        "scorer": engine.scorer,
        "output_format": engine.output_format,
        "expected_bytes": grid.rows * grid.columns * grid.slices * 8 if engine.grid_sized else 0,
        "checksums": CHECKSUMS_NAME,
        "sbatch": slurm_syntax.sbatch_submit_lines(priority, config.slurm.max_parallel_beams),
        "keep_raw": config.retention.keep_raw,
    }


def render_scripts(case: Case, config: Config, engine: EngineSettings, priority: Priority) -> dict[str, str]:
    """Script name -> text of each job script and submit.sh."""
    env = _template_env(config.slurm.template_dir)
    context = _script_context(case, config, engine, priority)
    if not context["engine"]:
        raise RenderError("moqui.command is empty")
    if not context["python"]:
        raise RenderError("cluster.python is empty")
    scripts = {}
    for name in SCRIPT_NAMES:
        step = name.removesuffix(".sbatch")
        try:
            directives = (
                slurm_syntax.sbatch_directives(step, config.slurm, case.case_uid, len(case.beams))
                if step in STEPS
                else []
            )
        except slurm_syntax.DirectiveError as err:
            raise RenderError(str(err)) from None
        try:
            template = env.get_template(name)
            scripts[name] = template.render(context, step=step, directives=directives)
        except jinja2.TemplateError as err:
            raise RenderError(f"job-script template {name}: {err}") from None
    return scripts


# --- the bundle -------------------------------------------------------------------------
def _check_case(case: Case) -> None:
    if not _CASE_UID.match(case.case_uid):
        raise RenderError(f"case_uid {case.case_uid!r} is not an opaque id ([A-Za-z0-9._-], <= 64)")
    if not case.beams:
        raise RenderError(f"case {case.case_id}: no treatment beam to simulate")
    numbers = [beam.number for beam in case.beams]
    if len(set(numbers)) != len(numbers) or min(numbers) < 0:
        raise RenderError(f"case {case.case_id}: beam numbers {numbers} are not unique and >= 0")


def _write(path: Path, text: str, mode: int = FILE_MODE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    path.chmod(mode)


def _make_private(root: Path) -> None:
    """Folders 0700, files 0600 (scripts 0700): the bundle holds patient DICOM."""
    root.chmod(DIR_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), DIR_MODE)
        for name in files:
            path = os.path.join(folder, name)
            os.chmod(path, SCRIPT_MODE if os.stat(path).st_mode & 0o100 else FILE_MODE)


def _checksums(root: Path, known: Mapping[str, str]) -> dict[str, str]:
    """sha256 of every input file; ``known``: sums already checked (reused CT slices)."""
    tops = ("input", "tps", "delivery_logs", "beams", "jobs")
    files = sorted(p for top in tops if (root / top).is_dir() for p in (root / top).rglob("*"))
    sums = {}
    for path in files:
        if path.is_file():
            name = path.relative_to(root).as_posix()
            sums[name] = known.get(name) or sha256_file(path)
    return sums


def _manifest(
    case: Case,
    config: Config,
    engine: EngineSettings,
    normalised: bool,
    tps: list[str],
    files: dict[str, str],
) -> Manifest:
    ct = case.ct
    grid = ManifestGrid(
        rows=ct.rows,
        columns=ct.columns,
        slices=ct.slices,
        spacing=ct.spacing,
        origin=ct.origin,
        frame_of_reference_uid=ct.frame_of_reference_uid,
        normalised_to_int16=normalised,
    )
    beams = [
        ManifestBeam(
            array_index=i, number=b.number, name=b.name, dir=f"beams/{b.number}", meterset=b.meterset
        )
        for i, b in enumerate(case.beams)
    ]
    return Manifest(
        case_uid=case.case_uid,
        plan_uid=case.plan.sop_instance_uid,
        fractions=case.plan.fractions,
        family=config.moqui.family,
        scorer=engine.scorer,
        output_format=engine.output_format,
        dose_type=config.moqui.dose_type,
        grid=grid,
        beams=beams,
        plan_file="input/RTPLAN.dcm",
        tps_doses=tps,
        files=files,
    )


def _fill(
    root: Path,
    case: Case,
    config: Config,
    engine: EngineSettings,
    scripts: dict[str, str],
    earlier: Mapping[str, EarlierSlice],
) -> tuple[Manifest, dict[str, str]]:
    """Write every file of the bundle into ``root``; returns the manifest and the
    delivery-log name mapping."""
    ct, tps = _copy_inputs(case, root, earlier)
    logs = _copy_logs(case, root)
    for beam in case.beams:
        text = moqui_input_text(case.case_uid, beam.number, engine)
        _write(root / "beams" / str(beam.number) / "moqui_tps.in", text)
    for name, text in scripts.items():
        _write(root / "jobs" / name, text, SCRIPT_MODE)
    _write(root / QA_CONFIG_NAME, config.qa.model_dump_json(indent=2) + "\n")
    (root / "logs").mkdir()
    files = _checksums(root, ct.digests)
    _write(root / CHECKSUMS_NAME, "".join(f"{h}  {p}\n" for p, h in sorted(files.items())))
    manifest = _manifest(case, config, engine, ct.normalised, tps, files)
    write_manifest(root, manifest)
    record = {"conversion": _CT_CONVERSION, "slices": ct.slices}
    _write(root / CT_SOURCES_NAME, json.dumps(record, indent=1, sort_keys=True) + "\n")
    _make_private(root)
    return manifest, logs


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise RenderError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
        raise RenderError(f"{out_dir} is not empty and holds no bundle; choose a new or empty folder")


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished bundle into place, replacing an older bundle there."""
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    out_dir.rename(old)
    staging.rename(out_dir)
    shutil.rmtree(old)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_staging(parent: Path) -> list[Path]:
    """Remove the staging and replaced-bundle folders that a killed render (SIGKILL, power
    loss) left in ``parent``: hidden folders named with the pid of a process that is gone.
    Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        found = _STAGING.match(entry.name)
        if not found or not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(found.group(1) or found.group(2))
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


class RenderInterrupted(BaseException):
    """SIGTERM or SIGHUP arrived while a bundle was being written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into an exception while rendering, so the staging folder is
    removed on the way out; the signal is then delivered again with its old handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = (signal.SIGTERM, signal.SIGHUP)

    def interrupt(signum: int, _frame: object) -> None:
        raise RenderInterrupted(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in caught}
    try:
        yield
    except RenderInterrupted as interrupted:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        previous = {}
        signal.raise_signal(interrupted.signum)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def render_bundle(
    case: Case, config: Config, out_dir: Path, *, priority: str | None = None
) -> RenderedBundle:
    """Render ``case`` into the bundle folder ``out_dir`` (created; an older bundle is replaced).

    The config and case checks run before anything is written, and the bundle is built in
    a private staging folder that is removed on any error and on SIGTERM/SIGHUP; folders
    that a killed render left behind are swept first. A RenderError leaves no trace.
    """
    _check_case(case)
    chosen = resolve_priority(config.slurm, priority)
    engine = check_parameters(config.moqui)
    scripts = render_scripts(case, config, engine, chosen)
    out_dir = Path(out_dir).absolute()
    _check_target(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    sweep_stale_staging(out_dir.parent)
    # The bundle already there (an earlier render of the case) lends its int16 CT slices
    # where their source file is byte for byte the same.
    earlier = earlier_ct(out_dir) if out_dir.is_dir() else {}
    # The name is chosen before the folder exists, so that a signal arriving just after
    # the mkdir still finds the folder inside the try that removes it.
    staging = out_dir.parent / f".{out_dir.name}.{os.getpid()}.{secrets.token_hex(4)}{STAGING_SUFFIX}"
    with _terminate_cleanly():
        try:
            staging.mkdir(mode=DIR_MODE)
            manifest, logs = _fill(staging, case, config, engine, scripts, earlier)
            _publish(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    lines = slurm_syntax.sbatch_submit_lines(chosen, config.slurm.max_parallel_beams)
    return RenderedBundle(
        path=out_dir,
        manifest=manifest,
        sbatch_lines=[lines[step] for step in STEPS],
        warnings=list(engine.warnings),
        delivery_logs=logs,
    )


def dry_run(case: Case, config: Config, out_dir: Path, priority: str | None = None) -> RenderedBundle:
    """What ``mqi submit --dry-run`` shows: the bundle rendered locally, nothing submitted."""
    return render_bundle(case, config, out_dir, priority=priority)
