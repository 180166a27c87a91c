"""ROC and DET plots (PNG, matplotlib Agg backend) and the JSON report writer.

matplotlib is the ``eval`` extra (``pip install 'facegate[eval]'``); it is imported only when a plot is drawn, and
its absence is a ``UsageError`` that says how to install it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from facegate.errors import UsageError
from facegate.evaluation.metrics import Roc


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UsageError(
            "plots need matplotlib, which is not installed: pip install 'facegate[eval]' (or pass --no-plot)"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _ensure_dir(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{path.parent}: cannot create the output folder ({exc.strerror}); check --out") from None


def write_report(report: dict, path: str | Path) -> Path:
    """Write ``report`` as indented UTF-8 JSON to ``path`` (folders created). Returns the path."""
    path = Path(path)
    _ensure_dir(path)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def roc_plot(curve: Roc, path: str | Path, title: str, marks: dict[str, tuple[float, float]] | None = None) -> Path:
    """Save the ROC (TAR against FMR, log-x) as a PNG; ``marks`` label points (fmr, tar). Returns the path.

    FMR = 0 points cannot be drawn on a log axis; they are clipped to half the smallest non-zero FMR.
    """
    plt = _pyplot()
    path = Path(path)
    _ensure_dir(path)
    fmr = np.asarray(curve.fmr, dtype=np.float64)
    floor = fmr[fmr > 0].min() / 2 if np.any(fmr > 0) else 1e-6
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    ax.step(np.maximum(fmr, floor), curve.tar, where="post", lw=1.5)
    for label, (x, y) in (marks or {}).items():
        ax.plot([max(x, floor)], [y], "o", ms=5)
        ax.annotate(label, (max(x, floor), y), textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("FMR (false match rate)")
    ax.set_ylabel("TAR (1 − FNMR)")
    return _save(plt, fig, ax, title, path)


def det_plot(
    fpir: np.ndarray, fnir: np.ndarray, path: str | Path, title: str,
    marks: dict[str, tuple[float, float]] | None = None,
) -> Path:
    """Save an open-set DET curve (FNIR against FPIR, both log) as a PNG; ``marks`` label (fpir, fnir) points."""
    plt = _pyplot()
    path = Path(path)
    _ensure_dir(path)
    x = np.asarray(fpir, dtype=np.float64)
    y = np.asarray(fnir, dtype=np.float64)
    floor = x[x > 0].min() / 2 if np.any(x > 0) else 1e-6
    yfloor = y[y > 0].min() / 2 if np.any(y > 0) else 1e-6
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    ax.step(np.maximum(x, floor), np.maximum(y, yfloor), where="post", lw=1.5)
    for label, (px, py) in (marks or {}).items():
        ax.plot([max(px, floor)], [max(py, yfloor)], "o", ms=5)
        ax.annotate(label, (max(px, floor), max(py, yfloor)), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FPIR (non-mated searches returning a candidate)")
    ax.set_ylabel("FNIR (mate not rank 1 within the threshold)")
    return _save(plt, fig, ax, title, path)


def _save(plt, fig, ax, title: str, path: Path) -> Path:
    """Title, log grid and layout shared by every plot; writes the PNG and frees the figure."""
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
