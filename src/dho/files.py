"""Files: durable writes, the cache directory, and other projects' ``torch.save`` dicts read safely.

Durable writes: a file or a whole directory appears complete or not at all. Files are written
beside their final name, flushed and fsynced, then renamed over it (an atomic step on POSIX file
systems); the directory is fsynced so the rename itself survives a crash. A directory of several
files is assembled as ``.NAME.partial`` and closed by a ``COMPLETE`` marker, written last, that
lists each file's SHA-256; only then is it renamed into place. A reader trusts a directory only
when the marker is there and every checksum matches.

The cache directory (:func:`cache_dir`) holds what dho derives and can rebuild: unpacked datasets,
text embeddings.

Other projects' ``torch.save`` dicts (:func:`load_torch_file`) are read with
``torch.load(..., weights_only=True)``: tensors, containers and plain Python scalars only. Scripts
that store hyper-parameters found by numpy (``np.float64`` alphas and betas) pickle numpy scalars
too; exactly the globals those need are allowed for the one call, nothing else (any other global,
e.g. a class instance or an ``os.system`` reduce, is refused).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MARKER", "DamagedCheckpoint", "cache_dir", "file_digest", "load_torch_file", "numpy_float64_globals", "read_marker",
           "remove_stale_temp",
           "write_csv_atomic", "write_dir_atomic", "write_file_atomic", "write_text_atomic"]

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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def write_file_atomic(path: str | Path, write: Writer) -> Path:
    """``write(tmp)`` then fsync and rename onto ``path``; on any failure ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # as a plain open() would make it (some writers create files 0600)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)
    return path


STALE_TEMP = re.compile(r"\.tmp[A-Za-z0-9_]{6,}")  # what a writer killed mid-file leaves (safetensors' temp files)


def remove_stale_temp(directory: Path) -> None:
    """Delete temp files a killed writer left in ``directory`` (the caller holds the directory's lock)."""
    for p in directory.iterdir():
        if STALE_TEMP.fullmatch(p.name) and p.is_file():
            p.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`write_file_atomic`)."""
    return write_file_atomic(path, lambda p: p.write_text(text))


def write_csv_atomic(path: str | Path, fieldnames: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """A CSV table (a header, then one line per row dict) written atomically."""
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(fieldnames))
            writer.writeheader()
            writer.writerows(rows)
    return write_file_atomic(path, write)


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
    present = {p.name for p in directory.iterdir() if p.is_file() and p.name != MARKER and not p.name.startswith(".")}
    if not isinstance(files, dict) or not files or not all(isinstance(v, str) for v in files.values()):
        raise DamagedCheckpoint(f"{directory}/{MARKER} lists no checksums (damaged or edited)")
    if present - set(files):
        raise DamagedCheckpoint(f"{directory}/{MARKER} does not list {', '.join(sorted(present - set(files)))} "
                                "(damaged or edited)")
    for fname, expected in files.items():
        if not (directory / fname).is_file():
            raise DamagedCheckpoint(f"{directory}/{fname} is missing")
        if file_digest(directory / fname) != expected:
            raise DamagedCheckpoint(f"{directory}/{fname} is damaged (checksum mismatch)")
    return marker

def cache_dir() -> Path:
    """``$DHO_CACHE_DIR``, else ``$XDG_CACHE_HOME/dho``, else ``~/.cache/dho``."""
    if os.environ.get("DHO_CACHE_DIR"):
        return Path(os.environ["DHO_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dho"

def numpy_float64_globals() -> list[Any]:
    """What unpickling a ``numpy.float64`` scalar needs: ``multiarray.scalar`` (under the module
    names numpy 1.x and 2.x write), ``numpy.dtype`` and the float64 dtype class (it is BUILT)."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    names = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
    return [scalar, *((scalar, name) for name in names), np.dtype, type(np.dtype(np.float64))]


def load_torch_file(path: str | Path) -> dict[str, Any]:
    """The dict stored at ``path`` by ``torch.save``, on the CPU; numpy float64 scalars allowed.

    Raises FileNotFoundError when there is no file and a one-line ValueError when it cannot be
    read this way (anything pickled beyond tensors, plain containers and numpy float64 scalars)
    or does not hold a dict.
    """
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    try:
        with torch.serialization.safe_globals(numpy_float64_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        reason = (f"it pickles {refused.group(1)}, which is not allowed" if refused else
                  f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:160]}")
        raise ValueError(f"{path} cannot be read as a plain torch file ({reason})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a dict")
    return data
