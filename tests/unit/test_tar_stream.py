"""The upload's tar stream: what GNU tar unpacks from it is the bundle, file for file."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from mqi.errors import TransportError
from mqi.transport.files import tar_stream


def bundle(root: Path) -> list[str]:
    files = {
        "manifest.json": b'{"case_uid": "x"}\n',
        "input/CT_0000.dcm": os.urandom(70_000),
        "input/RTPLAN.dcm": b"",
        "jobs/submit.sh": b"#!/bin/bash\necho hi\n",
        "beams/12/moqui_tps.in": b"GPUID 0\n" * 300,
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        (root / name).chmod(0o700 if name.endswith(".sh") else 0o600)
    return sorted(files)


def unpack(stream: bytes, target: Path) -> None:
    target.mkdir()
    done = subprocess.run(
        ["tar", "-x", "--no-same-owner", "-f", "-", "-C", str(target)], input=stream, capture_output=True
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("chunk", [512, 4096, 1 << 18])
def test_tar_unpacks_to_the_same_files_and_modes(tmp_path: Path, chunk: int) -> None:
    names = bundle(tmp_path / "bundle")
    pieces = list(tar_stream(tmp_path / "bundle", names, chunk))
    unpack(b"".join(piece.data for piece in pieces), tmp_path / "out")
    for name in names:
        sent, got = tmp_path / "bundle" / name, tmp_path / "out" / name
        assert got.read_bytes() == sent.read_bytes(), name
        assert stat.S_IMODE(got.stat().st_mode) == stat.S_IMODE(sent.stat().st_mode), name
    unpacked = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*"))
    assert [p for p in unpacked if (tmp_path / "out" / p).is_file()] == names
    # the pieces account for every file and every byte of content, once
    assert sorted(name for piece in pieces for name, _ in piece.finished) == names
    assert sum(piece.content_bytes for piece in pieces) == sum(
        (tmp_path / "bundle" / n).stat().st_size for n in names
    )
    listing = subprocess.run(
        ["tar", "-t", "-v", "--numeric-owner", "-f", "-"],
        input=b"".join(piece.data for piece in pieces),
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert all(" 0/0 " in line for line in listing.splitlines()), "no workstation user or group names"


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "input/../../x", "input//CT.dcm", ""])
def test_a_name_outside_the_bundle_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(TransportError, match="not a relative path inside the bundle"):
        list(tar_stream(tmp_path, [name]))


def test_only_regular_files_are_sent(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("not in the bundle")
    (tmp_path / "link").symlink_to(tmp_path / "secret")
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(TransportError, match=r"cannot read .*link"):
        list(tar_stream(tmp_path, ["link"]))
    with pytest.raises(TransportError, match=r"cannot read .*folder: Is a directory"):
        list(tar_stream(tmp_path, ["folder"]))
    with pytest.raises(TransportError, match="fifo is not a regular file"):
        list(tar_stream(tmp_path, ["fifo"]))
    with pytest.raises(TransportError, match="cannot read"):
        list(tar_stream(tmp_path, ["missing"]))
