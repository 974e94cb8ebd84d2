"""`dho data check`: every image of a dataset decoded once, each under a time limit, and a report
of what is wrong (bad files, empty classes, unknown classes, the same content in two splits) or
odd (modes and orientations that the decode policy of :mod:`dho.data.decode` converts).

Files are decoded in worker processes that run :mod:`dho.data.decode` as a script and answer one
file at a time over a pipe; a file that takes longer than ``timeout`` seconds, or that crashes its
worker, is reported and the worker replaced. A check never hangs on a file.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import sys
import time
from collections import Counter, defaultdict, deque
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import decode
from .benchmarks import read_pools
from .folders import list_classes
from .images import IMAGE_EXTENSIONS
from .manifest import SPLITS, SplitManifest

__all__ = ["AuditReport", "audit_benchmark", "audit_folder", "bad_files", "inspect_files"]

log = logging.getLogger(__name__)

WORKER = Path(decode.__file__)


class _Worker:
    """One decode worker process; ``job`` is the index of the file it is busy with (None: idle)."""

    def __init__(self) -> None:
        # -I: isolated, so neither this package nor the user's environment is imported into the worker
        self.proc = subprocess.Popen([sys.executable, "-I", str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.job: int | None = None
        self.deadline = 0.0

    @property
    def stdin(self) -> IO[str]:
        assert self.proc.stdin is not None  # opened with stdin=PIPE
        return self.proc.stdin

    @property
    def stdout(self) -> IO[str]:
        assert self.proc.stdout is not None  # opened with stdout=PIPE
        return self.proc.stdout

    def send(self, job: int, path: str, timeout: float) -> bool:
        self.job, self.deadline = job, time.monotonic() + timeout
        try:
            self.stdin.write(json.dumps(path) + "\n")
            self.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.stdin, self.stdout):
            with suppress(OSError):
                pipe.close()


def _cores() -> int:
    """The cores this process may run on (dho.device.free_cores, without importing torch here)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def inspect_files(paths: list[str], timeout: float = decode.DECODE_SECONDS, workers: int = 1) -> list[dict]:
    """:func:`dho.data.decode.inspect_file` of every path, in ``workers`` processes; a file that
    takes more than ``timeout`` seconds or kills its worker gets an ``ok: False`` record."""
    if not paths:
        return []
    results: list[dict | None] = [None] * len(paths)
    todo = deque(range(len(paths)))
    pool = [_Worker() for _ in range(max(1, min(workers, len(paths))))]
    sel = selectors.DefaultSelector()
    for w in pool:
        sel.register(w.stdout, selectors.EVENT_READ, w)

    def fail(w: _Worker, kind: str, error: str) -> None:  # record the file, replace the worker
        assert w.job is not None  # called for a busy worker only
        results[w.job] = {"path": paths[w.job], "ok": False, "kind": kind, "error": error}
        sel.unregister(w.stdout)
        w.close()
        fresh = _Worker()
        pool[pool.index(w)] = fresh
        sel.register(fresh.stdout, selectors.EVENT_READ, fresh)

    try:
        while todo or any(w.job is not None for w in pool):
            for w in list(pool):
                if w.job is None and todo:
                    job = todo.popleft()
                    if not w.send(job, paths[job], timeout):
                        fail(w, "crashed", "the decode worker died before reading it")
            busy = [w for w in pool if w.job is not None]
            if not busy:
                continue
            for key, _ in sel.select(max(0.0, min(w.deadline for w in busy) - time.monotonic())):
                w = key.data
                line = w.proc.stdout.readline() if w.job is not None else ""
                if line:
                    results[w.job], w.job = json.loads(line), None
                elif w.job is not None:
                    fail(w, "crashed", f"the decoder crashed on it (exit code {w.proc.wait()})")
            now = time.monotonic()
            for w in list(pool):
                if w.job is not None and w.deadline <= now:
                    fail(w, "timeout", f"not decoded within {timeout:g} s")
    finally:
        for w in pool:
            w.close()
        sel.close()
    return results  # type: ignore[return-value]


# ---- a dataset folder -------------------------------------------------------------------------
@dataclass
class AuditReport:
    """What :func:`audit_folder` found. Paths are relative to ``root``."""

    root: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split folder -> class -> decodable images
    files: list[dict]  # one record per image file: path, split, class, ok, kind/error or notes, hash
    problems: list[str] = field(default_factory=list)  # empty classes, class folders train/ lacks
    duplicates: list[list[str]] = field(default_factory=list)  # files with the same content

    @property
    def bad(self) -> list[dict]:
        return [f for f in self.files if not f["ok"]]

    @property
    def odd(self) -> list[dict]:
        return [f for f in self.files if f["ok"] and f.get("notes")]

    @property
    def cross_split_duplicates(self) -> list[list[str]]:
        return [g for g in self.duplicates if len({p.split("/")[0] for p in g}) > 1 or "all" in self.counts]

    @property
    def clean(self) -> bool:
        return not (self.bad or self.problems or self.cross_split_duplicates)

    def summary(self) -> dict:
        return {"images": len(self.files), "bad": dict(Counter(f["kind"] for f in self.bad)),
                "odd": dict(Counter(kind for f in self.odd for kind, _ in f["notes"])),
                "problems": len(self.problems), "duplicate_groups": len(self.duplicates),
                "cross_split_duplicate_groups": len(self.cross_split_duplicates)}

    def to_dict(self) -> dict:
        return {"root": self.root, "summary": self.summary(), "classes": self.classes, "counts": self.counts,
                "problems": self.problems, "duplicates": self.duplicates, "bad": self.bad, "odd": self.odd}


def _layout(root: Path) -> dict[str, Path]:
    """Split folder -> path: train/, val/, test/ when there is a train/, else the root itself ("all")."""
    if (root / "train").is_dir():
        return {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    return {"all": root}


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir())


def audit_folder(root: str | Path, timeout: float = decode.DECODE_SECONDS, workers: int | None = None) -> AuditReport:
    """Decode every image of an ImageFolder tree (see :mod:`dho.data.folders`) and report."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {str(root)!r} does not exist")
    layout = _layout(root)
    first = next(iter(layout))
    where = f"{first}/" if first != "all" else "the root"
    classes = list_classes(layout[first])
    problems, entries = [], []
    for split, folder in layout.items():
        found = {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
        if found - set(classes):
            problems.append(f"{split}/ has class folders that {where} lacks: {', '.join(sorted(found - set(classes))[:5])}")
        entries += [(split, c, p) for c in classes for p in _images(folder / c)]
    return _report(root, classes, list(layout), entries, problems, timeout, workers)


def audit_benchmark(fmt: str, root: str | Path, dataset: str | None = None, split_file: str | None = None,
                    timeout: float = decode.DECODE_SECONDS, workers: int | None = None) -> AuditReport:
    """Decode every image a benchmark's split lists name (``data.format`` coop / fgvc / imagenet)
    and report, as :func:`audit_folder` does for a folder; paths are relative to its image folder."""
    pools = read_pools(fmt, root, dataset, split_file)
    splits = [key for key in ("train", "val", "test") if getattr(pools, key)]
    entries = [(key, pools.classes[label], pools.image_root / rel) for key in splits for rel, label in getattr(pools, key)]
    return _report(pools.image_root, pools.classes, splits, entries, [], timeout, workers)


def _report(root: Path, classes: list[str], splits: list[str], entries: list[tuple[str, str, Path]],
            problems: list[str], timeout: float, workers: int | None) -> AuditReport:
    first = splits[0]
    where = f"{first}/" if first != "all" else "the root"
    regular = [str(p) for _, _, p in entries if p.is_file()]
    inspected = iter(inspect_files(regular, timeout, workers or _cores()))
    files, counts = [], {split: dict.fromkeys(classes, 0) for split in splits}
    by_hash: dict[str, list[str]] = defaultdict(list)
    for split, c, p in entries:
        rel = p.relative_to(root).as_posix()
        record: dict[str, Any] = next(inspected) if p.is_file() else {
            "ok": False, "kind": "not_a_file", "error": "not a regular file (a dangling link, a pipe or a device)"}
        record = {**record, "path": rel, "split": split, "class": c}
        files.append(record)
        counts[split][c] += bool(record["ok"])
        if record.get("hash"):
            by_hash[record["hash"]].append(rel)
    problems += [f"class {c!r} has no decodable images in {where}" for c in classes if counts[first][c] == 0]
    duplicates = sorted(sorted(group) for group in by_hash.values() if len(group) > 1)
    report = AuditReport(str(root.resolve()), classes, counts, files, problems, duplicates)
    log.debug("checked %s: %s", root, report.summary())
    return report


_BAD: dict[tuple[str, str], list[dict]] = {}


def _fingerprint(root: Path) -> str:
    entries = sorted((str(p), s.st_size, s.st_mtime_ns) for p in root.rglob("*") if (s := p.lstat()))
    return decode.content_digest(repr(entries).encode())


def bad_files(root: str | Path, timeout: float = decode.DECODE_SECONDS) -> list[dict]:
    """[{path, kind, error}] of the images under ``root`` that cannot be decoded: the files that
    ``data.skip_bad`` leaves out (audited once per process while no file under ``root`` changes)."""
    root = Path(root).expanduser().resolve()
    key = (str(root), _fingerprint(root))
    if key not in _BAD:
        _BAD[key] = [{"path": f["path"], "kind": f["kind"], "error": f["error"]} for f in audit_folder(root, timeout).bad]
    return _BAD[key]


def bad_in_manifest(manifest: SplitManifest, timeout: float = decode.DECODE_SECONDS) -> list[dict]:
    """[{path, kind, error}] of a benchmark split's images that cannot be decoded (every file its
    split lists, each checked as `dho data check` checks a folder's)."""
    rels = sorted({rel for key in SPLITS for rel, _ in manifest.split(key)})
    paths = [str(manifest.path(rel)) for rel in rels]
    regular = [p for p in paths if Path(p).is_file()]
    found = dict(zip(regular, inspect_files(regular, timeout, _cores())))
    missing = {"ok": False, "kind": "not_a_file", "error": "missing, or not a regular file (a link, a pipe or a device)"}
    return [{"path": rel, "kind": r["kind"], "error": r["error"]}
            for rel, path in zip(rels, paths) if not (r := found.get(path, missing))["ok"]]
