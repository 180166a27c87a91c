"""The gallery: enrolled identities and their templates (SQLite) with a derived hnswlib index for 1:N search.

``Gallery`` (core.py) is the entry point; ``store.py`` holds the records, ``index.py`` the one owner of the hnswlib
index, ``enrol.py`` the quality gates and image enrolment.
"""

from facegate.gallery.core import Gallery
from facegate.gallery.store import Identity, PackBinding

__all__ = ["Gallery", "Identity", "PackBinding"]
