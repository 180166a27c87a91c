"""Where the gallery lives when no ``--gallery`` / ``gallery.path`` is given (shared by the CLI and the daemon)."""

from __future__ import annotations

import os
from pathlib import Path


def default_gallery_path() -> Path:
    """``$FACEGATE_GALLERY``, else ``$XDG_DATA_HOME/facegate/gallery`` (``~/.local/share/facegate/gallery``)."""
    if os.environ.get("FACEGATE_GALLERY"):
        return Path(os.environ["FACEGATE_GALLERY"])
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "facegate" / "gallery"
