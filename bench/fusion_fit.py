"""Fit and evaluate the fusion of the built-in pack (dlib ResNet + MobileFaceNet), beside each model alone.

    PYTHONPATH=daemon python3 bench/fusion_fit.py --lfw ../shared/data/lfw --enroll ../shared/data/enroll_examples \
        --out bench-out/fusion

Embeds every LFW image (8,607) and the labelled enroll_examples faces once with the ``default`` pack (its template
holds both models' embeddings side by side; the embedding cache of ``facegate eval`` is reused), then for each rule —
``dlib`` alone, ``mobilefacenet`` alone, ``zscore`` (the issue's baseline), ``platt`` (each model's own logistic
score → LLR map, summed: what the pack ships) and ``joint`` (one logistic regression on both scores) — measures,
with every figure **cross-fitted** over LFW View 2's ten person-disjoint folds (``evaluation/fusion.py``: a
comparison between identities of folds a and b is scored by maps fitted without folds a and b):

* LFW View 2 10-fold accuracy (for test fold k: maps fitted on the other nine, threshold of best accuracy on them);
* TAR at FAR 1e-3 / 1e-2 over the 6,000 View 2 pairs;
* all-pairs FNMR at FMR 1e-3 … 1e-6 over the 7,701 View 2 images (≈ 29.6 M impostor comparisons);
* open-set 1:N (``facegate eval openset``'s protocol on all 8,607 images): rank-1, FNIR at FPIR 0.3 % and 1 %;
  both with LFW's labels as published and with ``evaluation/lfw_labels.py``'s corrections (a dozen people filed
  under two names, which are most of the impostors above FMR 1e-6 and most of the false positives at FPIR 0.3 %);
* on enroll_examples (maps fitted on all of View 2; nothing of this set in any fit): all-pairs FMR/FNMR at LFW's
  FMR-1e-5 threshold, the highest impostor score and who gave it, and the bald-men collage's highest impostor.

The plain rules use the dlib descriptor beside MobileFaceNet without flip (= the ``dlib`` and
``retinaface-mobilefacenet`` packs' embeddings, from a copy of the default pack with ``flip: false``); the ``+flip``
rules use the default pack's own templates.

Writes ``fusion_report.json`` to ``--out`` and prints the ``llr`` blocks for models/default.yaml (fitted on all
6,000 View 2 pairs). Takes ~20 min on 2 cores the first time (embedding), ~3 min with the cache.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from facegate import scoring
from facegate.evaluation import fusion as fz
from facegate.evaluation import metrics as m
from facegate.evaluation.embeddings_cache import EmbeddingCache, default_cache_path, embed_files
from facegate.evaluation.enroll_set import load_enroll_examples
from facegate.evaluation.lfw import image_path, parse_pairs, resolve_root
from facegate.evaluation.lfw_labels import lfw_identity
from facegate.evaluation.openset import list_identities, split_protocol
from facegate.pipeline import FacePipeline

#: (name, embedding set, rule): "plain" = dlib + MobileFaceNet without flip (the dlib and
#: retinaface-mobilefacenet packs' embeddings), "pack" = the default pack's (MobileFaceNet with flip).
RULES = (
    ("dlib", "plain", "single0"), ("mobilefacenet", "plain", "single1"), ("zscore", "plain", "zscore"),
    ("platt", "plain", "platt"), ("joint", "plain", "joint"), ("tail", "plain", "tail"),
    ("mobilefacenet+flip", "pack", "single1"), ("platt+flip", "pack", "platt"),
    ("tail+flip (default pack)", "pack", "tail"),
)
FMRS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)


def _single(which: int, metric: str) -> tuple[fz.FoldTables, fz.FusionModel]:
    """One model alone in the tables' shape: −distance or the cosine."""
    slopes = np.zeros(2)
    slopes[which] = -1.0 if metric == "euclidean" else 1.0
    model = fz.FusionModel(f"single{which}", 0.0, tuple(slopes))
    return fz.FoldTables(np.zeros((10, 10)), np.broadcast_to(slopes, (10, 10, 2)).copy()), model


def view2(tables: fz.FoldTables, parts: list[np.ndarray], same: np.ndarray, folds: np.ndarray) -> dict:
    """Nested 10-fold accuracy and pooled cross-fitted TAR@FAR on the View 2 pairs."""
    accs, pooled = [], np.zeros(len(same))
    for k in range(10):
        scores = tables.score([p[:, None] for p in parts], np.full(len(same), k), np.array([k]))[:, 0]
        test = folds == k
        t, _ = m.best_accuracy_threshold(scores[~test], same[~test])
        accs.append(float(np.mean((scores[test] >= t) == same[test])))
        pooled[test] = scores[test]
    accs = np.array(accs)
    out = {"accuracy": {"mean": float(accs.mean()), "sem": float(accs.std(ddof=1) / np.sqrt(10)),
                        "per_fold": [round(a, 4) for a in accs]}}
    for far in (1e-3, 1e-2):
        op = m.tar_at_far(pooled[same], pooled[~same], far)
        out[f"tar_at_far_{far:g}"] = {"tar": op.tar, "fmr": op.fmr}
    out["eer"] = m.eer(pooled[same], pooled[~same])[0]
    return out


def all_pairs(tables: fz.FoldTables, emb: np.ndarray, labels: np.ndarray, folds: np.ndarray,
              fusion: scoring.Fusion) -> dict:
    genuine, top, impostors = fz.crossfit_all_pairs(emb, labels, folds, fusion, tables, keep_fmr=max(FMRS))
    out: dict = {"images": int(len(emb)), "genuine": int(genuine.size), "impostor": impostors}
    res = m.AllPairs(genuine, impostors, top, {})
    for fmr in FMRS:
        op = res.at_fmr(fmr)
        out[f"fnmr_at_fmr_{fmr:g}"] = {"fnmr": op.fnmr, "fmr": op.fmr}
    return out


def openset(tables: fz.FoldTables, emb: np.ndarray, split: dict, idx: dict, fold_of: dict,
            fusion: scoring.Fusion) -> dict:
    """``facegate eval openset``'s protocol with cross-fitted scores (``fold_of``: image path → fold)."""
    g_rows = np.array([idx[p] for _, p in split["gallery"]])
    g_folds = np.array([fold_of[p] for _, p in split["gallery"]])
    mated = np.array([idx[p] for _, _, p in split["mated"]])
    mated_folds = np.array([fold_of[p] for _, _, p in split["mated"]])
    mate_ids = np.array([r for r, _, _ in split["mated"]])
    non = np.array([idx[p] for _, p in split["nonmated"]])
    non_folds = np.array([fold_of[p] for _, p in split["nonmated"]])
    mate, top, other, nm = [], [], [], []
    for start in range(0, len(mated), 1024):
        sl = slice(start, start + 1024)
        sm = tables.score(fusion.part_scores(emb[mated[sl]], emb[g_rows], np.float64), mated_folds[sl], g_folds)
        rows = np.arange(len(sm))
        own = sm[rows, mate_ids[sl]].copy()
        sm[rows, mate_ids[sl]] = -np.inf
        best_other = sm.max(1)
        mate.append(own)
        other.append(best_other)
        top.append(own > best_other)
    for start in range(0, len(non), 1024):
        sl = slice(start, start + 1024)
        nm.append(tables.score(fusion.part_scores(emb[non[sl]], emb[g_rows], np.float64), non_folds[sl],
                               g_folds).max(1))
    s = m.Searches(np.concatenate(mate), np.concatenate(top), np.concatenate(other), np.concatenate(nm))
    out = {"gallery": int(len(g_rows)), "mated": int(len(mated)), "nonmated": int(len(non)), "rank1": m.rank1(s)}
    for fpir in (0.003, 0.01):
        p = m.fnir_at_fpir(s, fpir)
        out[f"fnir_at_fpir_{fpir:g}"] = {"fnir": p.fnir, "fpir": p.fpir,
                                         "wrong_identity_rate": m.misidentification_rate(s, p.threshold)}
    return out


def enroll(model: fz.FusionModel, faces, fusion: scoring.Fusion, lfw_threshold: float, lfw_top: np.ndarray,
           lfw_impostors: int) -> dict:
    """All pairs of the enroll_examples faces scored by the final model; rates at LFW's FMR-1e-5 threshold, and how
    rare the set's highest impostor score is among LFW's impostors (its LFW FMR; LFW's own highest scores given)."""
    n = len(faces.identities)
    sm = model.score(fusion.part_scores(faces.embeddings, faces.embeddings, np.float64))
    upper = np.triu(np.ones((n, n), bool), 1)
    same = faces.identities[:, None] == faces.identities[None, :]
    gen = sm[upper & same & ~faces.same_photo(np.arange(n), np.arange(n))]
    imp_mask = upper & ~same
    imp = sm[imp_mask]
    i, j = np.unravel_index(np.flatnonzero(imp_mask)[int(np.argmax(imp))], sm.shape)
    bald = np.array([str(f).endswith("bald_guys.jpg") for f in faces.files])
    bald_imp = sm[imp_mask & bald[:, None] & bald[None, :]]
    fmr, fnmr = m.rates_at(gen, imp, lfw_threshold)
    return {
        "genuine": int(gen.size), "impostor": int(imp.size), "eer": m.eer(gen, imp)[0],
        "at_lfw_fmr_1e-5_threshold": {"fmr": fmr, "fnmr": fnmr},
        "fnmr_at_fmr_1e-3": m.tar_at_far(gen, imp, 1e-3).fnmr,
        "highest_impostor": {"margin_to_lfw_threshold": float(imp.max() - lfw_threshold),
                             "pair": [f"{faces.identities[i]} ({faces.files[i]})",
                                      f"{faces.identities[j]} ({faces.files[j]})"]},
        "highest_impostor_lfw_fmr": _lfw_fmr(float(imp.max()), lfw_top, lfw_impostors),
        "bald_collage_highest_impostor_margin": float(bald_imp.max() - lfw_threshold),
        "bald_collage_highest_impostor_lfw_fmr": _lfw_fmr(float(bald_imp.max()), lfw_top, lfw_impostors),
        "lowest_genuine_margin": float(gen.min() - lfw_threshold),
    }


def _pipeline(flip: bool, threads: int | None) -> FacePipeline:
    """The default pack, or (``flip`` False) the same pack with MobileFaceNet's flip off: its template is the dlib
    pack's descriptor beside the retinaface-mobilefacenet pack's embedding (same detector settings and bytes, so the
    embedding cache shares the detections)."""
    from facegate.packs.cache import ensure_prepared
    from facegate.packs.manifest import load_manifest

    manifest = load_manifest("default")
    if not flip:
        rec = manifest.recogniser
        parts = [rec.parts[0], rec.parts[1].model_copy(update={"flip": False})]
        manifest = manifest.model_copy(update={"name": "default-noflip",
                                               "recogniser": rec.model_copy(update={"parts": parts})})
    return FacePipeline(ensure_prepared(manifest), threads=threads, with_liveness=False)


def _embed(pipeline: FacePipeline, files: list[Path], cache_path: Path | None) -> np.ndarray:
    cache = EmbeddingCache(cache_path or default_cache_path())
    try:
        return embed_files(pipeline, files, cache=cache).embeddings
    finally:
        cache.close()


def _lfw_fmr(score: float, top: np.ndarray, impostors: int) -> float | str:
    """Share of LFW's impostor comparisons scoring ≥ ``score`` (``top``: the highest ones kept, descending)."""
    count = int(np.sum(top >= score))
    return f"> {len(top) / impostors:.2g}" if count >= len(top) else count / impostors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=Path, required=True)
    ap.add_argument("--enroll", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("bench-out/fusion"))
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    t0 = time.time()
    root = resolve_root(args.lfw)
    people = list_identities(root)
    split = split_protocol(people)
    files = [p for ps in people.values() for p in ps]
    idx = {p: i for i, p in enumerate(files)}
    # The pack's templates (dlib + MobileFaceNet with flip) and the single packs' (no flip), on the same detections.
    pack, plain = _pipeline(True, args.threads), _pipeline(False, args.threads)
    sets = {"pack": _embed(pack, files, args.cache), "plain": _embed(plain, files, args.cache)}
    assert np.array_equal(sets["plain"][:, :128], sets["pack"][:, :128]), "both must hold the same dlib descriptor"
    pack_emb = sets["pack"]
    fusion = pack.scorer.fusion
    pairs = parse_pairs(args.lfw / "pairs.txt")
    view2_fold = {}
    for p in pairs:
        view2_fold[p.name1] = view2_fold[p.name2] = p.fold
    fold_of = {f: fz.identity_fold(f.parent.name, view2_fold) for f in files}  # by the folder LFW filed it in
    cleaned: dict[str, list[Path]] = {}
    for f in files:
        cleaned.setdefault(lfw_identity(f), []).append(f)
    splits = {"lfw_labels": split, "cleaned_labels": split_protocol(dict(sorted(cleaned.items())))}
    a = np.array([idx[image_path(root, p.name1, p.index1)] for p in pairs])
    b = np.array([idx[image_path(root, p.name2, p.index2)] for p in pairs])
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    v2_files = sorted({image_path(root, p.name1, p.index1) for p in pairs}
                      | {image_path(root, p.name2, p.index2) for p in pairs})
    v2_rows = np.array([idx[f] for f in v2_files])
    v2_labels = {"lfw_labels": np.array([f.parent.name for f in v2_files]),
                 "cleaned_labels": np.array([lfw_identity(f) for f in v2_files])}
    v2_folds = np.array([fold_of[f] for f in v2_files])
    faces = {"pack": load_enroll_examples(pack, args.enroll), "plain": load_enroll_examples(plain, args.enroll)}
    assert list(faces["plain"].files) == list(faces["pack"].files), "both must pick the same faces"
    report: dict = {"lfw_images": len(files), "enroll_examples": faces["pack"].summary(), "rules": {},
                    "protocol": __doc__}
    grids: dict[str, fz.RatioGrid] = {}
    for name, which, rule in RULES:
        t = time.time()
        emb = sets[which]
        parts = [scoring.compare_pairs(x, y, part.metric, np.float64)
                 for part, x, y in zip(fusion.parts, fusion.split(emb[a]), fusion.split(emb[b]), strict=True)]
        if rule.startswith("single"):
            k = int(rule[-1])
            tables, final = _single(k, fusion.parts[k].metric)
        elif rule == "tail":
            if which not in grids:  # fitted on the corrected labels (evaluation/lfw_labels.py)
                grids[which] = fz.RatioGrid(emb[v2_rows], v2_labels["cleaned_labels"], v2_folds, fusion)
            tables = fz.tail_tables(grids[which], parts, same, folds)
            final = fz.fit_tail(grids[which], parts, same, folds, set())
        else:
            tables = fz.fold_tables(rule, parts, same, folds)
            final = fz.fit(rule, parts, same)
        entry: dict = {"embeddings": which, "view2": view2(tables, parts, same, folds)}
        for labels in ("lfw_labels", "cleaned_labels"):
            entry[f"all_pairs_view2_images_{labels}"] = all_pairs(tables, emb[v2_rows], v2_labels[labels],
                                                                   v2_folds, fusion)
            entry[f"openset_{labels}"] = openset(tables, emb, splits[labels], idx, fold_of, fusion)
        final_tables = fz.FoldTables(np.full((10, 10), final.intercept),
                                     np.broadcast_to(np.asarray(final.slopes), (10, 10, 2)).copy())
        _, top, impostors = fz.crossfit_all_pairs(emb[v2_rows], v2_labels["cleaned_labels"], v2_folds, fusion,
                                                  final_tables, keep_fmr=1e-3)
        lfw_t = m.AllPairs(np.zeros(1), impostors, top, {}).at_fmr(1e-5).threshold
        entry["final_model"] = {"intercept": final.intercept, "slopes": list(final.slopes),
                                "parts": [list(p) for p in final.parts], "lfw_all_pairs_fmr_1e-5_threshold": lfw_t}
        if rule == "tail":
            entry["final_model"]["ratio"] = grids[which].best_ratio(set())
            entry["crossfit_ratios"] = sorted({float(r) for r in np.round(
                np.abs(tables.slopes[:, :, 0] / tables.slopes[:, :, 1]), 3).ravel()})
        entry["enroll_examples"] = enroll(final, faces[which], fusion, lfw_t, top, impostors)
        report["rules"][name] = entry
        print(f"{name}: {json.dumps(entry, default=float)[:1500]}  ({time.time() - t:.0f} s)", file=sys.stderr)
    final = fz.fit_tail(grids["pack"], [scoring.compare_pairs(x, y, part.metric, np.float64) for part, x, y in zip(
        fusion.parts, fusion.split(pack_emb[a]), fusion.split(pack_emb[b]), strict=True)], same, folds, set())
    report["manifest_llr"] = [
        {"intercept": round(i, 6), "slope": round(s, 6),
         "source": f"bench/fusion_fit.py tail rule: weight ratio {grids['pack'].best_ratio(set())} (best TAR at "
                   "FMR 1e-5, all pairs of the 7,701 LFW View 2 images), Platt-scaled on the 6,000 View 2 pairs; "
                   f"{name}"}
        for (i, s), name in zip(final.parts, ("dlib distance", "MobileFaceNet cosine (flip)"), strict=True)]
    report["seconds"] = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion_report.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(json.dumps(report["manifest_llr"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
