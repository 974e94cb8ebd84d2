"""The ``dho`` command line: :mod:`.app` is its grammar and error reporting, :mod:`.commands` the work."""

from __future__ import annotations

from .app import main

__all__ = ["main"]
