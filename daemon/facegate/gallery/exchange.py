"""The gallery's export file format (JSON lines) and its bounded, validating reader.

An export is UTF-8 JSON lines: a header ``{"format": "facegate-gallery", "version": 1, "pack", "dim", "metric"}``,
then one object per identity ``{"name", "groups", "templates": [{"embedding": [floats], "image_sha256",
"quality"}]}`` (``Gallery.export`` writes it, ``Gallery.import_file`` reads it through ``read_export``).

An import file is untrusted input. It is opened only when it is a regular file (``fileio.open_regular``: a device
such as ``/dev/zero`` or a FIFO is refused before reading, without blocking) and read one line at a time with
stated limits, so nothing the file holds can exhaust memory or hang the command:

* ``MAX_IMPORT_BYTES`` (2 GiB) in all: ≈ 700,000 templates of 128 floats as text; they are held as float32
  (a fifth of their text size) until the one transaction that stores them;
* ``MAX_LINE_BYTES`` (16 MiB) per line: one identity with ≈ 5,000 templates of 128 floats (1,400 of 512);
* ``MAX_QUALITY_BYTES`` (64 KiB) per template's quality record (a display-only dict of a few numbers).

``parse_header`` and ``parse_identity_line`` never raise anything but ``GalleryError`` naming ``FILE:LINE``,
whatever the bytes (fuzzed in tests/test_faults_inputs.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from facegate.errors import GalleryError
from facegate.fileio import InputRefusedError, open_regular, read_lines_limited
from facegate.gallery.store import PackBinding
from facegate.gallery.validate import groups_problem, name_problem

EXPORT_FORMAT = "facegate-gallery"
EXPORT_VERSION = 1
#: Largest import file (bytes), see the module docstring.
MAX_IMPORT_BYTES = 2 << 30
#: Longest line of an import file (bytes), see the module docstring.
MAX_LINE_BYTES = 16 << 20
#: Largest quality record of one template, as JSON (bytes).
MAX_QUALITY_BYTES = 64 << 10
#: Largest embedding size a header may declare (the known packs use 128 and 512).
MAX_DIM = 4096
#: A template whose norm is below this is all zeros in practice (dlib and MobileFaceNet embeddings have norms near 1
#: and 10 to 30): not a face, refused on enrolment (``Gallery.enrol``) and import.
MIN_TEMPLATE_NORM = 1e-6
_HINT = "give a file written by `facegate gallery export`"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def parse_header(path: str | Path, line: bytes) -> PackBinding | None:
    """The pack of an export's first line, or None for the export of an empty, unbound gallery. Raises
    ``GalleryError`` naming the file when the line is not an export header or names no valid pack."""
    try:
        header = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        header = None
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise GalleryError(f"{path}: not a facegate gallery export (first line must be its header); {_HINT}")
    if header.get("pack") is None:
        return None
    pack, dim, metric = header.get("pack"), header.get("dim"), header.get("metric")
    if not (isinstance(pack, str) and 0 < len(pack) <= 4096 and isinstance(metric, str)
            and type(dim) is int and 0 < dim <= MAX_DIM):
        raise GalleryError(f"{path}: export header has no valid pack (pack {_short(pack)}, dim {_short(dim)}, "
                           f"metric {_short(metric)}); {_HINT}")
    return PackBinding(pack, dim, metric)  # raises GalleryError for an unknown metric


def _embedding(value: object, dim: int) -> np.ndarray:
    if not isinstance(value, list) or len(value) != dim:
        raise TypeError(f"an embedding is not a list of {dim} numbers")
    if not all(type(v) in (int, float) for v in value):
        raise TypeError("an embedding holds something other than numbers")
    return np.array([float(v) if type(v) is float or abs(v) < 1 << 1023 else math.inf for v in value], np.float64)


def _quality(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("a template's quality is not a JSON object")
    if len(json.dumps(value)) > MAX_QUALITY_BYTES:
        raise ValueError(f"a template's quality record is longer than {MAX_QUALITY_BYTES:,} bytes")
    return value


def parse_identity_line(path: str | Path, lineno: int, line: bytes, pack: PackBinding) -> dict[str, Any]:
    """One identity line of an export → ``{"name", "embeddings" (N×dim float32), "groups", "image_sha256",
    "quality"}``, validated: a JSON object with a valid name and groups (``gallery.validate``) and templates whose
    embeddings have exactly ``pack.dim`` finite numbers within float32 range, not all zero, whose sha256 is 64
    lower-case hex digits or null, and whose quality is a JSON object. Raises ``GalleryError`` naming
    ``FILE:LINE``; never anything else."""
    where = f"{path}:{lineno}"
    try:
        row = json.loads(line.decode("utf-8"))
        if not isinstance(row, dict):
            raise TypeError("the line is not a JSON object")
        templates = row["templates"]
        if not isinstance(templates, list) or not all(isinstance(t, dict) for t in templates):
            raise TypeError("'templates' is not a list of objects")
        emb = np.array([_embedding(t.get("embedding"), pack.dim) for t in templates], np.float64).reshape(
            -1, pack.dim)
        shas = [t.get("image_sha256") for t in templates]
        quals = [_quality(t.get("quality", {})) for t in templates]
        name, groups = row["name"], row.get("groups", [])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        # ValueError covers bad UTF-8 and bad JSON; RecursionError deeply nested JSON
        reason = "nested too deeply" if isinstance(exc, RecursionError) else _short(exc) if isinstance(
            exc, KeyError) else str(exc)[:200]
        raise GalleryError(f"{where}: malformed identity record ({reason}); nothing was imported") from None
    problem = (f"identity name is a JSON {type(name).__name__}, not a string" if not isinstance(name, str)
               else name_problem(name)) or (
        f"groups is a JSON {type(groups).__name__}, not a list" if not isinstance(groups, list)
        else groups_problem(groups))
    if problem:
        raise GalleryError(f"{where}: {problem[:300]}; nothing was imported")
    if not np.isfinite(emb).all() or (np.abs(emb) > np.finfo(np.float32).max).any():
        raise GalleryError(f"{where}: identity {name.strip()!r} has an embedding with NaN, infinity or a value out "
                           "of float32 range; nothing was imported")
    if len(emb) and (np.linalg.norm(emb, axis=1) < MIN_TEMPLATE_NORM).any():  # as Gallery.enrol refuses
        raise GalleryError(f"{where}: identity {name.strip()!r} has an all-zero embedding, which is not a template "
                           "of a face; nothing was imported")
    for sha in shas:
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64
                                    and all(c in "0123456789abcdef" for c in sha)):
            raise GalleryError(f"{where}: image_sha256 {_short(sha)} is not 64 lower-case hex digits; nothing was "
                               "imported")
    return {"name": name.strip(), "embeddings": emb.astype(np.float32), "groups": list(groups),
            "image_sha256": shas, "quality": quals}


def read_export(path: str | Path, accept: Callable[[PackBinding], None]
                ) -> tuple[PackBinding | None, list[dict[str, Any]]]:
    """Read and validate a whole export file, incrementally and within the module's limits: (pack or None for an
    empty export, the identity records of ``parse_identity_line``). ``accept(pack)`` is called right after the
    header, before any identity line is read (the caller refuses a pack of another gallery there). Raises
    ``GalleryError`` naming the file (and line): missing, not a regular file, too large, not an export, any bad
    record."""
    path = Path(path)
    try:
        with open_regular(path) as handle:
            lines = read_lines_limited(handle, path, max_line=MAX_LINE_BYTES, max_total=MAX_IMPORT_BYTES,
                                       what="an import file")
            first = next(lines, None)
            pack = parse_header(path, first[1] if first else b"")
            if pack is None:
                return None, []
            accept(pack)
            return pack, [parse_identity_line(path, number, line, pack) for number, line in lines if line.strip()]
    except FileNotFoundError:
        raise GalleryError(f"{path}: no such file; {_HINT}") from None
    except InputRefusedError as exc:
        raise GalleryError(f"{path}: {exc}; nothing was imported; {_HINT}") from None
    except OSError as exc:
        raise GalleryError(f"{path}: cannot read the import file ({exc.strerror or exc}); nothing was imported") \
            from None
