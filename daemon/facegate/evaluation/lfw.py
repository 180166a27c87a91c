"""LFW View 2 verification: parse ``pairs.txt``, embed the images, run the 10-fold protocol, write a report.

Protocol (Huang et al., "Labeled Faces in the Wild: A Database for Studying Face Recognition in Unconstrained
Environments", UMass TR 07-49, 2007, View 2): ``pairs.txt`` starts with ``<folds>\\t<n>``, then each fold has n
matched lines ``name i j`` followed by n mismatched lines ``name1 i name2 j`` (1-based image numbers, files
``<root>/<name>/<name>_<i:04d>.jpg``). For each fold the threshold of best accuracy on the other folds is tested on
it; the report gives mean ± std (and the standard error σ/√k that the LFW README asks for).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facegate import scoring
from facegate.errors import UsageError
from facegate.evaluation import metrics as m
from facegate.fileio import read_limited

log = logging.getLogger(__name__)

#: Largest pairs file read (bytes): LFW's pairs.txt is 120 KB.
MAX_PAIRS_BYTES = 16 << 20


@dataclass(frozen=True)
class Pair:
    """One pairs.txt comparison: ``fold`` (0-based), two (name, 1-based image number), ``same`` (matched pair)."""

    fold: int
    name1: str
    index1: int
    name2: str
    index2: int
    same: bool


def _int(token: str, path: Path, line_no: int, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise UsageError(f"{path}:{line_no}: {what} {token!r} is not an integer") from None
    if value < 1:
        raise UsageError(f"{path}:{line_no}: {what} {token!r} must be ≥ 1")
    return value


def parse_pairs(path: str | Path) -> list[Pair]:
    """Parse an LFW View 2 ``pairs.txt`` (tabs or spaces). Returns folds × 2n ``Pair`` in file order.

    Raises ``UsageError`` (exit 2) naming the file and line for a missing file, a bad header, a line with the wrong
    number of fields, a non-integer image number, or a matched/mismatched line where the other kind belongs.
    """
    path = Path(path)
    try:
        lines = read_limited(path, MAX_PAIRS_BYTES, "a pairs file").decode("utf-8").splitlines()  # bounded; no FIFO
    except FileNotFoundError:
        raise UsageError(f"{path}: no such pairs file; give LFW's pairs.txt with --pairs") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the pairs file ({exc})") from None
    if not lines or not lines[0].strip():
        raise UsageError(f"{path}:1: empty; expected a header '<folds> <pairs per half-fold>' (e.g. '10\t300')")
    header = lines[0].split()
    if len(header) != 2:
        raise UsageError(f"{path}:1: header {lines[0]!r} must be two integers '<folds> <n>' (e.g. '10\t300')")
    folds = _int(header[0], path, 1, "fold count")
    n = _int(header[1], path, 1, "pairs per half-fold")
    body = [(i + 2, line) for i, line in enumerate(lines[1:]) if line.strip()]
    if len(body) != folds * 2 * n:
        raise UsageError(
            f"{path}: header says {folds} folds × (2 × {n}) = {folds * 2 * n} pair lines, found {len(body)}"
        )
    pairs = []
    for k, (line_no, line) in enumerate(body):
        fold, pos = divmod(k, 2 * n)
        fields = line.split()
        if pos < n:
            if len(fields) != 3:
                raise UsageError(
                    f"{path}:{line_no}: expected a matched pair 'name i j' (line {pos + 1} of fold {fold + 1}), "
                    f"got {len(fields)} fields: {line.strip()!r}"
                )
            name, i, j = fields
            pairs.append(Pair(fold, name, _int(i, path, line_no, "image number"), name,
                              _int(j, path, line_no, "image number"), True))
        else:
            if len(fields) != 4:
                raise UsageError(
                    f"{path}:{line_no}: expected a mismatched pair 'name1 i name2 j' (line {pos + 1} of fold "
                    f"{fold + 1}), got {len(fields)} fields: {line.strip()!r}"
                )
            a, i, b, j = fields
            pairs.append(Pair(fold, a, _int(i, path, line_no, "image number"), b,
                              _int(j, path, line_no, "image number"), False))
    return pairs


def resolve_root(root: str | Path) -> Path:
    """The folder holding ``<Name>/<Name>_NNNN.jpg``: ``root`` itself or its ``lfw-deepfunneled``/``lfw`` child.

    Raises ``UsageError`` when it does not exist or holds no person folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder; give the LFW image folder with --root")
    for child in ("lfw-deepfunneled", "lfw"):
        if (root / child).is_dir():
            return root / child
    if not any(p.is_dir() for p in root.iterdir()):
        raise UsageError(f"{root}: holds no person folders (<Name>/<Name>_0001.jpg); check --root")
    return root


def image_path(root: Path, name: str, index: int) -> Path:
    """``<root>/<name>/<name>_<index:04d>.jpg`` (LFW's file naming)."""
    return root / name / f"{name}_{index:04d}.jpg"


def pair_files(root: Path, pairs: list[Pair]) -> tuple[list[Path], np.ndarray]:
    """Distinct image files the pairs reference (sorted) and a P×2 int index array into that list.

    Raises ``UsageError`` listing (up to 5 of) the missing files.
    """
    refs = [(image_path(root, p.name1, p.index1), image_path(root, p.name2, p.index2)) for p in pairs]
    files = sorted({f for ab in refs for f in ab})
    missing = [f for f in files if not f.is_file()]
    if missing:
        shown = ", ".join(str(f) for f in missing[:5])
        raise UsageError(f"{len(missing)} image(s) named in the pairs file are missing under {root}: {shown}")
    where = {f: i for i, f in enumerate(files)}
    return files, np.array([[where[a], where[b]] for a, b in refs], dtype=np.int64).reshape(-1, 2)


def verification_report(
    scores: np.ndarray, same: np.ndarray, folds: np.ndarray, metric: str, pack_threshold: float | None,
) -> dict:
    """All verification numbers for labelled comparison scores (higher = more similar).

    Thresholds in the report are in the metric's native units (a Euclidean distance: accept when ≤; a cosine
    similarity: accept when ≥). Keys: accuracy (mean, std, sem, per fold), tar_at_far (1e-3, 1e-2), eer, auc,
    threshold (best accuracy on all pairs, with the FMR/FNMR it gives), pack_threshold (FMR/FNMR at the pack's
    operating point), counts.
    """
    genuine, impostor = scores[same], scores[~same]
    result = m.kfold_accuracy(scores, same, folds)
    curve = m.roc(genuine, impostor)
    eer_rate, eer_t = m.eer(genuine, impostor)
    best_t, best_acc = m.best_accuracy_threshold(scores, same)
    fmr, fnmr = m.rates_at(genuine, impostor, best_t)
    native = (lambda t: round(scoring.from_higher_better(t, metric), 6))  # noqa: E731
    report = {
        "pairs": {"genuine": int(genuine.size), "impostor": int(impostor.size), "folds": int(np.unique(folds).size)},
        "accuracy": {
            "mean": result.mean, "std": result.std, "sem": result.sem,
            "per_fold": [round(a, 6) for a in result.accuracies],
            "fold_thresholds": [native(t) for t in result.thresholds],
        },
        "tar_at_far": {},
        "eer": {"rate": eer_rate, "threshold": native(eer_t)},
        "auc": m.auc(curve),
        "threshold": {
            "value": native(best_t),
            "rule": "best accuracy on all pairs (in-sample; fold_thresholds are the out-of-sample ones)",
            "accuracy": best_acc, "fmr": fmr, "fnmr": fnmr,
        },
    }
    for far in (1e-3, 1e-2):
        op = m.tar_at_far(genuine, impostor, far)
        report["tar_at_far"][f"{far:g}"] = {"tar": op.tar, "fmr": op.fmr, "threshold": native(op.threshold)}
    if pack_threshold is not None:
        t = scoring.to_higher_better(pack_threshold, metric)
        fmr, fnmr = m.rates_at(genuine, impostor, t)
        report["pack_threshold"] = {"value": pack_threshold, "fmr": fmr, "fnmr": fnmr,
                                    "accuracy": float(np.mean((scores >= t) == same))}
    return report


def evaluate_lfw(
    pipeline, root: str | Path, pairs_path: str | Path, cache=None, limit_folds: int | None = None,
    max_pairs_per_fold: int | None = None, out_dir: str | Path | None = None, groups_csv: str | Path | None = None,
    progress: bool = True, batch: int = 32, plot: bool = True, jitters: int = 0,
) -> dict:
    """Run LFW View 2 verification with ``pipeline`` (a ``FacePipeline``) and return the JSON report (a dict).

    ``limit_folds`` keeps the first k folds; ``max_pairs_per_fold`` keeps the first n matched and first n
    mismatched pairs of each fold (for quick runs and tests). With ``out_dir`` the report is written to
    ``lfw_report.json`` and (``plot``) the ROC to ``lfw_roc.png`` there. ``groups_csv`` adds the bias view
    (``facegate.evaluation.bias``). ``jitters`` ≥ 2 embeds every image as the mean of that many jittered copies
    (``facegate.packs.jitter``). Raises ``UsageError`` for bad paths or pairs files.
    """
    from facegate.evaluation.embeddings_cache import embed_files
    from facegate.packs.jitter import describe, effective_count

    root = resolve_root(root)
    pairs = parse_pairs(pairs_path)
    if limit_folds is not None:
        if limit_folds < 2:
            raise UsageError(f"--limit-folds {limit_folds}: the k-fold protocol needs at least 2 folds")
        pairs = [p for p in pairs if p.fold < limit_folds]
    if max_pairs_per_fold is not None:
        kept, seen = [], {}
        for p in pairs:
            key = (p.fold, p.same)
            seen[key] = seen.get(key, 0) + 1
            if seen[key] <= max_pairs_per_fold:
                kept.append(p)
        pairs = kept
    files, index = pair_files(root, pairs)
    scorer = pipeline.scorer  # the pack's metric and operating point (facegate/scoring.py)
    embedded = embed_files(pipeline, files, cache=cache, batch=batch, progress=progress, jitters=jitters)
    emb = embedded.embeddings
    scores = m.pair_scores(emb[index[:, 0]], emb[index[:, 1]], scorer)
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    report = {
        "protocol": _protocol_name(int(folds.max()) + 1 if len(folds) else 0, max_pairs_per_fold),
        "pack": pipeline.manifest.name,
        "metric": scorer.metric,
        "threshold_units": "euclidean distance, accept when <=" if scorer.lower_is_better
        else "fused log-likelihood ratio, accept when >=" if scorer.fusion is not None
        else "cosine similarity, accept when >=",
        "root": str(root),
        "pairs_file": str(pairs_path),
        "images": embedded.summary(),
        "embedding": describe(effective_count(jitters)),
    }
    report.update(verification_report(scores, same, folds, scorer.metric, scorer.threshold))
    if groups_csv is not None:
        from facegate.evaluation.bias import lfw_by_group, load_groups

        groups = load_groups(groups_csv)
        report["by_group"] = lfw_by_group(pairs, scores, groups, scorer.metric,
                                          report["threshold"]["value"], scorer.threshold)
    if out_dir is not None:
        from facegate.evaluation.plots import roc_plot, write_report

        out = Path(out_dir)
        try:
            if plot:
                curve = m.roc(scores[same], scores[~same])
                marks = {f"TAR@FAR {k}": (v["fmr"], v["tar"]) for k, v in report["tar_at_far"].items()}
                title = (f"LFW View 2 ROC, pack {pipeline.manifest.name} "
                         f"(accuracy {report['accuracy']['mean'] * 100:.2f} %)")
                report["plot"] = str(roc_plot(curve, out / "lfw_roc.png", title=title, marks=marks))
            report["report_file"] = str(write_report(report, out / "lfw_report.json"))
        except OSError as exc:  # a full disk: the report is still printed on stdout by the command
            report["output_error"] = (f"{out}: cannot write the report files ({exc.strerror or exc}); the report is "
                                      "on stdout only")
    log.info("event=lfw_done pairs=%d accuracy=%.4f", len(pairs), report["accuracy"]["mean"])
    return report


def _protocol_name(fold_count: int, max_pairs_per_fold: int | None) -> str:
    """The protocol actually run: the full View 2 (10 folds) or the subset that ``--limit-folds`` /
    ``--max-pairs-per-fold`` asked for, so a quick subset is never reported as the standard figure."""
    text = (f"LFW View 2 ({fold_count}-fold, threshold of best accuracy on {fold_count - 1} folds tested on the "
            "remaining one)")
    if fold_count != 10 or max_pairs_per_fold is not None:
        text += " — a SUBSET of the standard 10-fold protocol"
        if max_pairs_per_fold is not None:
            text += f", at most {max_pairs_per_fold} matched and {max_pairs_per_fold} mismatched pairs per fold"
    return text
