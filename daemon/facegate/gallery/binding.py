"""A gallery's pack binding (pack name, embedding size, metric): templates of different packs cannot be compared,
and the message that says so — with the one rename facegate knows (the old built-in pack, now ``dlib``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facegate.errors import GalleryError


@dataclass(frozen=True)
class PackBinding:
    """The model pack a gallery is bound to: templates from another pack are not comparable."""

    name: str
    dim: int
    metric: str  # "euclidean" | "cosine" | "fused"

    def __post_init__(self) -> None:
        if self.metric not in ("euclidean", "cosine", "fused"):
            raise GalleryError(f"pack {self.name!r}: metric {self.metric!r} is not 'euclidean', 'cosine' or 'fused'")
        if self.dim <= 0:
            raise GalleryError(f"pack {self.name!r}: embedding size {self.dim} must be positive")

    def describe(self) -> str:
        return f"{self.name} ({self.dim}-d, {self.metric})"


#: What galleries enrolled with facegate ≤ 0.1's built-in pack are bound to: that pack is now called ``dlib`` and makes
#: the same templates (models/dlib.yaml), so such a gallery is renamed to it when opened with the dlib pack.
LEGACY_DEFAULT = PackBinding("default", 128, "euclidean")
LEGACY_RENAMED = PackBinding("dlib", 128, "euclidean")


def mismatch_message(folder: Path, bound: PackBinding, wanted: PackBinding) -> str:
    """Why a gallery bound to ``bound`` cannot be used with ``wanted``, and what to do."""
    if bound == LEGACY_DEFAULT and wanted.name == "default":
        return (f"{folder}: this gallery was enrolled with facegate's previous built-in pack (the dlib ResNet, "
                f"{bound.dim}-d, {bound.metric}), which is now called 'dlib'; the new 'default' pack fuses dlib and "
                f"MobileFaceNet ({wanted.describe()}) and cannot compare with these templates. Either keep this "
                "gallery with the dlib pack (`pack: dlib` in the config, `--pack dlib` on the command line: it makes "
                "the same templates), or re-enrol everyone with the default pack into a new --gallery folder")
    if bound.name == wanted.name:
        return (f"{folder}: this gallery holds templates of pack {bound.describe()}, but pack {wanted.name!r} now "
                f"makes {wanted.describe()} templates (the pack changed); re-enrol everyone into a new --gallery "
                "folder, or use the pack version the gallery was enrolled with")
    return (f"{folder}: this gallery holds templates of pack {bound.describe()}, not {wanted.describe()}; "
            "templates of different packs cannot be compared — use another --gallery folder or the same pack")


def manifest_binding(manifest: Any) -> PackBinding:
    """The binding a pack's manifest (``packs.manifest``) gives its templates, without loading its models."""
    return PackBinding(manifest.name, manifest.recogniser.embedding_size, manifest.recogniser.metric)


def binding_problem(folder: Path, bound: PackBinding | None, wanted: PackBinding) -> str | None:
    """Why a gallery bound to ``bound`` cannot be searched with pack ``wanted`` (``mismatch_message``), or None when
    it can: unbound, the same binding, or a gallery of the old built-in pack opened with ``dlib`` (``Store.bind``
    renames it: the same templates)."""
    if bound is None or bound == wanted or (bound == LEGACY_DEFAULT and wanted == LEGACY_RENAMED):
        return None
    return mismatch_message(folder, bound, wanted)
