"""The gallery: enrolled identities and their templates (SQLite) with a derived hnswlib index for 1:N search.

``Gallery`` (core.py) is the entry point; ``store.py`` holds the records, ``binding.py`` the pack a gallery is bound
to, ``index.py`` the one owner of the hnswlib index (exact search up to a size, ``template_matrix.py``), ``exact.py``
the exact search of fused packs' galleries, ``enrol.py`` the quality gates and image enrolment, ``exchange.py`` the
export format and its bounded reader, ``location.py`` the default folder.

The names below are imported on first use (PEP 562), so that ``facegate.gallery.location`` — which config checks
need — does not load hnswlib and SQLite code with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from facegate.gallery.core import Gallery
    from facegate.gallery.store import Identity, PackBinding

__all__ = ["Gallery", "Identity", "PackBinding"]
_WHERE = {"Gallery": "core", "Identity": "store", "PackBinding": "store"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"facegate.gallery.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'facegate.gallery' has no attribute {name!r}")
