"""Images that sit in two splits at once: the same file (by resolved path) or the same content
(by hash of the bytes). A test image that is also a training image inflates every score.

The digests computed are kept by file identity (path, device, inode, size, mtime and ctime)
in ``<cache dir>/digests.sqlite``: a later check, by any run on the same files, reads only files
that changed or are new. Where that file cannot be used the check reads what it needs each time."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..files import cache_dir
from .decode import content_digest
from .manifest import SPLITS, SplitManifest

__all__ = ["DigestCache", "check_overlaps", "overlap_lines", "split_overlaps"]

log = logging.getLogger(__name__)


HEAD_BYTES = 8192  # files of one size are told apart by their first bytes before any is read whole

Member = tuple[str, str, Path]  # (split, relative path, path)
K = TypeVar("K")


def _groups(members: list[Member], key: Callable[[Path], K]) -> list[tuple[K, list[Member]]]:
    """``members`` grouped by ``key(path)`` (files it cannot read are left out), keeping only the
    groups that hold files of more than one split: only those can hold a cross-split duplicate."""
    groups: dict[K, list[Member]] = defaultdict(list)
    for member in members:
        try:
            groups[key(member[2])].append(member)
        except OSError:  # unreadable files are the decoder's to report
            continue
    return [(k, g) for k, g in groups.items() if len({split for split, _, _ in g}) > 1]


def _head_digest(path: Path) -> str:
    with path.open("rb") as fh:
        return content_digest(fh.read(HEAD_BYTES))


def _whole_digest(path: Path) -> str:
    return content_digest(path.read_bytes())


class DigestCache:
    """Digests (of a file's head, or of all of it) by file identity, in one SQLite file that runs
    and processes share; ``DigestCache(None)`` keeps nothing. ``recall`` looks many files up in a
    few queries; ``digest`` gives a recalled digest or computes and remembers it."""

    QUERY_ROWS = 500  # paths per lookup query

    def __init__(self, path: Path | None) -> None:
        self._known: dict[tuple[str, str], str] = {}  # (path, kind) -> digest of the file as it is now
        self._identity: dict[str, str] = {}  # path -> identity, of the files recalled
        self._new: list[tuple[str, str, str, str]] = []  # (path, kind, identity, digest)
        self._db: sqlite3.Connection | None = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(path, timeout=30)
                self._db.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT, kind TEXT, identity TEXT, digest TEXT, "
                                 "PRIMARY KEY (path, kind))")
            except (sqlite3.Error, OSError) as err:
                log.info("file digests are not kept (%s: %s)", path, err)
                self._close()

    def recall(self, files: dict[str, os.stat_result]) -> None:
        """Look up the kept digests of ``files`` (path -> its stat), keeping those still true."""
        if self._db is None:
            return
        for name, st in files.items():
            self._identity[name] = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
        names = list(files)
        try:
            for i in range(0, len(names), self.QUERY_ROWS):
                chunk = names[i:i + self.QUERY_ROWS]
                rows = self._db.execute(f"SELECT path, kind, identity, digest FROM digests WHERE path IN ({','.join('?' * len(chunk))})",
                                        chunk)
                self._known.update(((path, kind), digest) for path, kind, identity, digest in rows
                                   if self._identity.get(path) == identity)
        except sqlite3.Error as err:
            log.info("file digests are not kept (%s)", err)
            self._close()

    def digest(self, path: Path, kind: str, compute: Callable[[Path], str]) -> str:
        """The recalled digest of ``kind`` of this file, else ``compute(path)`` (kept by ``save``)."""
        name = str(path)
        if (name, kind) in self._known:
            return self._known[(name, kind)]
        value = compute(path)
        if name in self._identity:
            self._new.append((name, kind, self._identity[name], value))
        return value

    def save(self) -> None:
        """Keep the digests computed since the cache was opened; close it."""
        if self._db is not None and self._new:
            try:
                with self._db:
                    self._db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?)", self._new)
            except sqlite3.Error as err:
                log.info("file digests were not kept (%s)", err)
        self._new = []
        self._close()

    def _close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None


def digest_cache() -> DigestCache:
    """The cache of this machine's user: ``<cache dir>/digests.sqlite``."""
    return DigestCache(cache_dir() / "digests.sqlite")


def split_overlaps(manifest: SplitManifest, digests: DigestCache | None = None) -> list[str]:
    """One line per file or content found in more than one of labeled / unlabeled / val / test.

    Content is compared by hash of the whole file, but only among files that could match: the
    same size, then the same first bytes, in more than one split. Other files are only stat()ed
    or read in part, no file is read twice, and none whose digest ``digests`` has kept."""
    cache = digests if digests is not None else DigestCache(None)
    members = [(split, rel, manifest.path(rel)) for split in SPLITS for rel, _ in manifest.split(split)]
    by_path: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for split, rel, path in members:
        by_path[os.path.realpath(path)].add((split, rel))
    stats: dict[str, os.stat_result] = {}

    def size(path: Path) -> int:
        st = stats[str(path)] = os.stat(path)
        return st.st_size

    by_hash: dict[str, set[tuple[str, str]]] = defaultdict(set)
    same_sizes = _groups(members, size)
    if digests is not None:
        cache.recall({str(path): stats[str(path)] for _, group in same_sizes for _, _, path in group})
    for size_, same_size in same_sizes:
        for head, same_head in _groups(same_size, lambda p: cache.digest(p, "head", _head_digest)):
            if size_ <= HEAD_BYTES:  # the head was the whole file
                by_hash[head].update((split, rel) for split, rel, _ in same_head)
                continue
            for content, same in _groups(same_head, lambda p: cache.digest(p, "whole", _whole_digest)):
                by_hash[content].update((split, rel) for split, rel, _ in same)
    return overlap_lines(by_path, by_hash)


def overlap_lines(by_path: dict, by_hash: dict) -> list[str]:
    """One line per group (of one file, or of one content) whose (split, path) members span splits."""
    out = []
    for kind, groups in (("is the same file", by_path), ("has the same content", by_hash)):
        for found in groups.values():
            if len({split for split, _ in found}) > 1:
                (s1, p1), (s2, p2) = sorted(found)[:2]
                out.append(f"{s1} {p1} {kind} as {s2} {p2}")
    return out


def check_overlaps(manifest: SplitManifest, policy: str) -> list[str]:
    """Apply ``data.duplicates``: ``warn`` logs the overlaps, ``error`` raises, ``off`` skips the check."""
    if policy == "off":
        return []
    digests = digest_cache()
    try:
        found = split_overlaps(manifest, digests)
    finally:
        digests.save()
    if found:
        message = f"{len(found)} image(s) appear in two splits, e.g. {found[0]}"
        if policy == "error":
            raise ValueError(message + " (data.duplicates=error)")
        log.warning("%s; scores may be optimistic (set data.duplicates=error to refuse)", message)
    manifest.info["overlaps"] = len(found)
    return found
