"""Open-set 1:N identification on an LFW-style folder (``<root>/<Name>/<Name>_NNNN.jpg``).

Protocol (issue 4, after NIST FRVT 1:N, NISTIR 8271): every identity with ≥ 2 images enrols its first image (by
file name) as its one gallery template; its other images are **mated** probes; every identity with exactly one
image is a **non-mated** probe (it is not in the gallery). Search is exhaustive (exact) numpy brute force — the
gallery is ~1,700 templates. Reported: rank-1 (closed-set, mated probes), FNIR at FPIR 0.3 % and 1 % with the
thresholds giving them, the wrong-identity rate at those thresholds, the rates at the pack's threshold, a DET plot,
and an all-pairs 1:1 FMR/FNMR table over every image (≈ 37 M impostor comparisons on ../shared LFW), which
measures FMR far below what the 3,000 impostor pairs of View 2 can.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from facegate import scoring
from facegate.errors import UsageError
from facegate.evaluation import metrics as m
from facegate.evaluation.lfw import resolve_root

log = logging.getLogger(__name__)

#: FPIR targets reported (0.3 % is the issue's target; 1 % the usual companion).
FPIR_TARGETS = (0.003, 0.01)
#: FMR targets of the all-pairs 1:1 table.
FMR_TARGETS = (1e-3, 1e-4, 1e-5)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def list_identities(root: Path, max_identities: int | None = None) -> dict[str, list[Path]]:
    """Name → sorted image files, for the first ``max_identities`` names in byte order (all when None).

    Raises ``UsageError`` when the folder holds no images.
    """
    people = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if files:
            people[folder.name] = files
    if not people:
        raise UsageError(f"{root}: no <Name>/<image>.jpg files found; check --root")
    names = sorted(people)[: max_identities if max_identities is not None else None]
    return {n: people[n] for n in names}


def split_protocol(people: dict[str, list[Path]]) -> dict:
    """Gallery, mated and non-mated probe lists from ``people`` (see module docstring).

    Returns ``{"gallery": [(name, path)], "mated": [(gallery row, name, path)], "nonmated": [(name, path)]}``.
    Raises ``UsageError`` when fewer than 2 identities have ≥ 2 images or none has exactly one.
    """
    gallery, mated, nonmated = [], [], []
    for name, files in people.items():
        if len(files) >= 2:
            row = len(gallery)
            gallery.append((name, files[0]))
            mated.extend((row, name, f) for f in files[1:])
        else:
            nonmated.append((name, files[0]))
    if len(gallery) < 2 or not nonmated:
        raise UsageError(
            f"open-set needs ≥ 2 identities with ≥ 2 images and ≥ 1 with a single image; found {len(gallery)} and "
            f"{len(nonmated)} (raise --max-identities)"
        )
    return {"gallery": gallery, "mated": mated, "nonmated": nonmated}


def openset_report(searches: m.Searches, metric: str, pack_threshold: float | None) -> dict:
    """Rank-1, FNIR at the FPIR targets (thresholds in native units) and the rates at the pack threshold."""
    native = (lambda t: round(scoring.from_higher_better(t, metric), 6))  # noqa: E731
    report = {
        "searches": {"mated": int(searches.mate_scores.size), "nonmated": int(searches.nonmated_top.size)},
        "rank1": m.rank1(searches),
        "fnir_at_fpir": {},
    }
    for target in FPIR_TARGETS:
        point = m.fnir_at_fpir(searches, target)
        report["fnir_at_fpir"][f"{target:g}"] = {
            "fnir": point.fnir, "fpir": point.fpir, "threshold": native(point.threshold),
            "wrong_identity_rate": m.misidentification_rate(searches, point.threshold),
        }
    if pack_threshold is not None:
        t = scoring.to_higher_better(pack_threshold, metric)
        fnir, fpir = m.fnir_fpir_at(searches, t)
        report["pack_threshold"] = {"value": pack_threshold, "fnir": fnir, "fpir": fpir,
                                    "wrong_identity_rate": m.misidentification_rate(searches, t)}
    return report


def all_pairs_report(emb: np.ndarray, labels: np.ndarray, rule: m.Rule, extra_native: list[float]) -> dict:
    """1:1 FMR/FNMR over every pair of images: thresholds at ``FMR_TARGETS`` and rates at ``extra_native``.
    ``rule``: a metric name or the pack's ``Scorer`` (``metrics.Rule``)."""
    metric = rule.metric if isinstance(rule, scoring.Scorer) else rule
    native = (lambda t: round(scoring.from_higher_better(t, metric), 6))  # noqa: E731
    extra = tuple(scoring.to_higher_better(t, metric) for t in extra_native)
    result = m.all_pairs(emb, labels, rule, fars=FMR_TARGETS, thresholds=extra)
    report = {"genuine": int(result.genuine.size), "impostor": result.impostor_count, "at_fmr": {}, "at_threshold": []}
    for far in FMR_TARGETS:
        if far * result.impostor_count < 1:
            continue  # not measurable with this many impostor comparisons
        op = result.at_fmr(far)
        report["at_fmr"][f"{far:g}"] = {"threshold": native(op.threshold), "fmr": op.fmr, "fnmr": op.fnmr}
    for t_native, t in zip(extra_native, extra, strict=True):
        fmr, fnmr = result.rates_at(t)
        report["at_threshold"].append({"threshold": t_native, "fmr": fmr, "fnmr": fnmr})
    return report


def evaluate_openset(
    pipeline, root: str | Path, cache=None, max_identities: int | None = None, out_dir: str | Path | None = None,
    groups_csv: str | Path | None = None, progress: bool = True, batch: int = 32, plot: bool = True,
    extra_thresholds: list[float] | None = None, jitters: int = 0,
) -> dict:
    """Run the open-set protocol with ``pipeline`` (a ``FacePipeline``) and return the JSON report (a dict).

    With ``out_dir``: ``openset_report.json`` and (``plot``) ``openset_det.png`` there. ``extra_thresholds``
    (native units) are added to the all-pairs table beside the pack's own. ``jitters`` ≥ 2 embeds every image
    as the mean of that many jittered copies (``facegate.packs.jitter``). Raises ``UsageError`` for a bad root.
    """
    from facegate.evaluation.embeddings_cache import embed_files
    from facegate.packs.jitter import describe, effective_count

    root = resolve_root(root)
    people = list_identities(root, max_identities)
    split = split_protocol(people)
    files = [p for _, p in split["gallery"]] + [p for _, _, p in split["mated"]] + [p for _, p in split["nonmated"]]
    scorer = pipeline.scorer  # the pack's metric and operating point (facegate/scoring.py)
    embedded = embed_files(pipeline, files, cache=cache, batch=batch, progress=progress, jitters=jitters)
    emb = embedded.embeddings
    g, k = len(split["gallery"]), len(split["mated"])
    mated_ids = np.array([row for row, _, _ in split["mated"]], dtype=np.int64)
    searches = m.search(emb[g : g + k], mated_ids, emb[g + k :], emb[:g], scorer)
    report = {
        "protocol": "open-set 1:N on LFW: first image of each identity with >= 2 images enrolled; mated probes = "
                    "their other images; non-mated probes = single-image identities; exhaustive search; "
                    "FNIR counts a miss unless the mate is rank 1 with score past the threshold",
        "pack": pipeline.manifest.name,
        "metric": scorer.metric,
        "root": str(root),
        "identities": {"gallery": g, "nonmated": len(split["nonmated"])},
        "images": embedded.summary(),
        "embedding": describe(effective_count(jitters)),
    }
    report.update(openset_report(searches, scorer.metric, scorer.threshold))
    labels = np.array([n for n, _ in split["gallery"]] + [n for _, n, _ in split["mated"]]
                      + [n for n, _ in split["nonmated"]])
    extra = sorted({float(scorer.threshold), *(extra_thresholds or [])})
    report["all_pairs_1to1"] = all_pairs_report(emb, labels, scorer, extra)
    if groups_csv is not None:
        from facegate.evaluation.bias import load_groups, openset_by_group

        groups = load_groups(groups_csv)
        report["by_group"] = openset_by_group(split, searches, groups, scorer.metric, scorer.threshold,
                                              report["fnir_at_fpir"]["0.003"]["threshold"])
    if out_dir is not None:
        from facegate.evaluation.plots import det_plot, write_report

        out = Path(out_dir)
        try:
            if plot:
                _, fpir, fnir = m.det_points(searches)
                marks = {f"FPIR {float(t) * 100:g} %": (v["fpir"], v["fnir"])
                         for t, v in report["fnir_at_fpir"].items()}
                report["plot"] = str(det_plot(fpir, fnir, out / "openset_det.png",
                                              f"Open-set 1:N on LFW, pack {pipeline.manifest.name} "
                                              f"(gallery {g}, rank-1 {report['rank1'] * 100:.2f} %)", marks))
            report["report_file"] = str(write_report(report, out / "openset_report.json"))
        except OSError as exc:  # a full disk: the report is still printed on stdout by the command
            report["output_error"] = (f"{out}: cannot write the report files ({exc.strerror or exc}); the report is "
                                      "on stdout only")
    log.info("event=openset_done gallery=%d mated=%d nonmated=%d rank1=%.4f", g, k, len(split["nonmated"]),
             report["rank1"])
    return report
