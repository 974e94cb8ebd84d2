"""Images that sit in two splits at once: the same file (by resolved path) or the same content
(by hash of the bytes). A test image that is also a training image inflates every score."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .decode import content_digest
from .manifest import SPLITS, SplitManifest

__all__ = ["check_overlaps", "overlap_lines", "split_overlaps"]

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


def split_overlaps(manifest: SplitManifest) -> list[str]:
    """One line per file or content found in more than one of labeled / unlabeled / val / test.

    Content is compared by hash of the whole file, but only among files that could match: the
    same size, then the same first bytes, in more than one split. Other files are only stat()ed
    or read in part, and no file is read twice."""
    members = [(split, rel, manifest.path(rel)) for split in SPLITS for rel, _ in manifest.split(split)]
    by_path: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for split, rel, path in members:
        by_path[os.path.realpath(path)].add((split, rel))
    by_hash: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for size, same_size in _groups(members, lambda p: p.stat().st_size):
        for head, same_head in _groups(same_size, _head_digest):
            if size <= HEAD_BYTES:  # the head was the whole file
                by_hash[head].update((split, rel) for split, rel, _ in same_head)
                continue
            for content, same in _groups(same_head, lambda p: content_digest(p.read_bytes())):
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
    found = split_overlaps(manifest)
    if found:
        message = f"{len(found)} image(s) appear in two splits, e.g. {found[0]}"
        if policy == "error":
            raise ValueError(message + " (data.duplicates=error)")
        log.warning("%s; scores may be optimistic (set data.duplicates=error to refuse)", message)
    manifest.info["overlaps"] = len(found)
    return found
