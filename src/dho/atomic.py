"""Durable writes: a file or a whole directory appears complete or not at all.

Files are written beside their final name, flushed and fsynced, then renamed over it (an atomic
step on POSIX file systems); the directory is fsynced so the rename itself survives a crash. A
directory of several files is assembled as ``.NAME.partial`` and closed by a ``COMPLETE`` marker,
written last, that lists each file's SHA-256; only then is it renamed into place. A reader trusts a
directory only when the marker is there and every checksum matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["MARKER", "DamagedCheckpoint", "file_digest", "read_marker", "write_dir_atomic", "write_file_atomic"]

MARKER = "COMPLETE"
Writer = Callable[[Path], Any]  # writes one file at the path it is given


class DamagedCheckpoint(ValueError):
    """A checkpoint directory that is incomplete, truncated or altered since it was written."""


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_file_atomic(path: str | Path, write: Writer) -> Path:
    """``write(tmp)`` then fsync and rename onto ``path``; on any failure ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)
    return path


def write_dir_atomic(parent: str | Path, name: str, writers: dict[str, Writer], marker: dict | None = None,
                     previous: str | None = None) -> Path:
    """Write ``parent/name/`` from ``writers`` (file name -> writer) plus its marker, atomically.

    An existing complete ``name`` becomes ``previous`` (when given; the older ``previous`` goes),
    otherwise it is replaced. ``marker`` adds fields (e.g. the step) to the COMPLETE file.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp, final = parent / f".{name}.partial", parent / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for fname, write in writers.items():
            write(tmp / fname)
            _fsync_path(tmp / fname)
        content = {**(marker or {}), "files": {fname: file_digest(tmp / fname) for fname in writers}}
        (tmp / MARKER).write_text(json.dumps(content, indent=1))
        _fsync_path(tmp / MARKER)
        _fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = parent / f".{name}.old"
    if final.exists():
        if previous is not None and (final / MARKER).is_file():
            shutil.rmtree(parent / previous, ignore_errors=True)
            final.rename(parent / previous)
        else:
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
    tmp.rename(final)
    _fsync_path(parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_marker(directory: str | Path) -> dict:
    """The COMPLETE marker of ``directory`` after checking every file it lists, or DamagedCheckpoint."""
    directory = Path(directory)
    try:
        marker = json.loads((directory / MARKER).read_text())
        files = marker["files"]
    except FileNotFoundError:
        raise DamagedCheckpoint(f"{directory} is incomplete (no {MARKER} marker)") from None
    except (ValueError, KeyError, TypeError):
        raise DamagedCheckpoint(f"{directory}/{MARKER} is unreadable") from None
    for fname, expected in files.items():
        if not (directory / fname).is_file():
            raise DamagedCheckpoint(f"{directory}/{fname} is missing")
        if file_digest(directory / fname) != expected:
            raise DamagedCheckpoint(f"{directory}/{fname} is damaged (checksum mismatch)")
    return marker
