"""Where run-time caches live: outside the bundle, which is a read-only deployable artifact.

Each graph's cache is keyed by the graph file's sha256, so a changed graph never meets a
stale cache and two bundles holding the same graph share one.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "PSP_DEPLOY_CACHE_DIR"


def cache_root(explicit: str | Path | None = None) -> Path:
    """``explicit`` (--cache-dir), else $PSP_DEPLOY_CACHE_DIR, else the user's cache folder."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "psp-deploy"


def graph_cache(backend: str, sha256: str, root: str | Path | None = None) -> Path:
    """The cache folder of one graph file for one backend."""
    return cache_root(root) / backend / sha256
