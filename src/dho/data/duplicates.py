"""Images that sit in two splits at once: the same file (by resolved path) or the same content
(by hash of the bytes). A test image that is also a training image inflates every score."""

from __future__ import annotations

import logging
import os
from collections import defaultdict

from .decode import content_digest
from .splits import SPLITS, SplitManifest

__all__ = ["check_overlaps", "split_overlaps"]

log = logging.getLogger(__name__)


def split_overlaps(manifest: SplitManifest) -> list[str]:
    """One line per file or content found in more than one of labeled / unlabeled / val / test."""
    by_path: dict[str, set[tuple[str, str]]] = defaultdict(set)
    by_hash: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for split in SPLITS:
        for rel, _ in manifest.split(split):
            path = manifest.path(rel)
            by_path[os.path.realpath(path)].add((split, rel))
            try:
                by_hash[content_digest(path.read_bytes())].add((split, rel))
            except OSError:  # unreadable files are the decoder's to report
                continue
    out = []
    for kind, groups in (("is the same file", by_path), ("has the same content", by_hash)):
        for members in groups.values():
            if len({split for split, _ in members}) > 1:
                (s1, p1), (s2, p2) = sorted(members)[:2]
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
