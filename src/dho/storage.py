"""Where dho keeps what it derives and can rebuild: unpacked datasets, text embeddings."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """``$DHO_CACHE_DIR``, else ``$XDG_CACHE_HOME/dho``, else ``~/.cache/dho``."""
    if os.environ.get("DHO_CACHE_DIR"):
        return Path(os.environ["DHO_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dho"
