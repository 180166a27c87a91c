"""Unit tests of facegate.evaluation.metrics against values computed by hand (worked in the comments)."""

from __future__ import annotations

import numpy as np
import pytest

from facegate.evaluation import metrics as m

# Worked example used by several tests. Sorted by score (G = genuine, I = impostor):
#   0.9G 0.8G 0.7I 0.4G 0.3I 0.2I 0.1I
GEN = np.array([0.9, 0.8, 0.4])
IMP = np.array([0.7, 0.3, 0.2, 0.1])


def test_roc_points_by_hand() -> None:
    curve = m.roc(GEN, IMP)
    assert np.isinf(curve.thresholds[0])
    np.testing.assert_allclose(curve.thresholds[1:], [0.9, 0.8, 0.7, 0.4, 0.3, 0.2, 0.1])
    np.testing.assert_allclose(curve.tar, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1, 1])
    np.testing.assert_allclose(curve.fmr, [0, 0, 0, 1 / 4, 1 / 4, 2 / 4, 3 / 4, 1])


def test_roc_keeps_ties_together() -> None:
    curve = m.roc([0.5, 0.5], [0.5, 0.1])
    # One threshold at 0.5 accepts both genuine and one impostor at once; no half-way point exists.
    np.testing.assert_allclose(curve.tar, [0, 1, 1])
    np.testing.assert_allclose(curve.fmr, [0, 0.5, 1])


def test_auc_equals_mann_whitney_by_hand() -> None:
    # Genuine beats impostor in 4 + 4 + 3 = 11 of 12 pairs.
    assert m.auc(m.roc(GEN, IMP)) == pytest.approx(11 / 12)
    # A tie counts one half: pairs (0.5 vs 0.5) = 0.5, others win → (0.5 + 1 + 0.5 + 1) / 4.
    assert m.auc(m.roc([0.5, 0.5], [0.5, 0.1])) == pytest.approx(3 / 4)


def test_tar_at_far_by_hand() -> None:
    op = m.tar_at_far(GEN, IMP, 0.0)
    assert (op.threshold, op.fmr, op.tar) == (pytest.approx(0.8), 0.0, pytest.approx(2 / 3))
    op = m.tar_at_far(GEN, IMP, 0.25)
    assert (op.threshold, op.fmr, op.tar) == (pytest.approx(0.4), 0.25, 1.0)
    # Below 1/4 the best achievable FMR is 0.
    assert m.tar_at_far(GEN, IMP, 0.2).fmr == 0.0


def test_tar_at_far_when_no_genuine_beats_every_impostor() -> None:
    op = m.tar_at_far([0.1], [0.5], 0.0)
    assert op.tar == 0.0 and op.fmr == 0.0
    assert op.threshold > 0.5  # just above the best impostor


def test_eer_by_hand() -> None:
    # FMR - FNMR along the ROC: -1, -2/3, -1/3, -1/12 (t=0.7), +1/4 (t=0.4): crossing a quarter of the way,
    # FMR is 1/4 at both ends, FNMR goes 1/3 → 0 so FNMR = 3/4·1/3 = 1/4; threshold 0.75·0.7 + 0.25·0.4.
    rate, threshold = m.eer(GEN, IMP)
    assert rate == pytest.approx(0.25)
    assert threshold == pytest.approx(0.625)


def test_eer_separable_is_zero() -> None:
    rate, threshold = m.eer([0.9, 0.8], [0.2, 0.1])
    assert rate == 0.0
    assert 0.2 < threshold <= 0.8


def test_rates_at() -> None:
    assert m.rates_at(GEN, IMP, 0.5) == (pytest.approx(0.25), pytest.approx(1 / 3))
    assert m.rates_at(GEN, IMP, 0.4) == (pytest.approx(0.25), 0.0)  # accept means score >= threshold


def test_best_accuracy_threshold_by_hand() -> None:
    scores = np.r_[GEN, IMP]
    same = np.r_[np.ones(3, bool), np.zeros(4, bool)]
    # t between 0.7 and 0.8: 6/7 correct; between 0.4 and 0.7: 5/7; between 0.3 and 0.4: 6/7 — the strictest wins.
    threshold, acc = m.best_accuracy_threshold(scores, same)
    assert threshold == pytest.approx(0.75)
    assert acc == pytest.approx(6 / 7)


def test_kfold_by_hand() -> None:
    # Fold 0: G 0.9 0.65, I 0.5 0.1 (separable at 0.575). Fold 1: G 0.8 0.3, I 0.4 0.2 (3/4 at 0.25 or 0.6).
    scores = np.array([0.9, 0.65, 0.5, 0.1, 0.8, 0.3, 0.4, 0.2])
    same = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    result = m.kfold_accuracy(scores, same, folds)
    # Fold 1's best runs are 0.25 and 0.6; the strictest, 0.6, tested on fold 0 accepts 0.9 and 0.65 only → 4/4.
    # Test fold 1 with t = 0.575 (from fold 0): 0.3 genuine rejected → 3/4.
    np.testing.assert_allclose(result.thresholds, [0.6, 0.575])
    np.testing.assert_allclose(result.accuracies, [1.0, 0.75])
    assert result.mean == pytest.approx(0.875) and result.std == pytest.approx(np.sqrt(2 * 0.125**2))


def test_fold_statistics() -> None:
    result = m.FoldResult(np.array([0.9, 1.0]), np.zeros(2))
    assert result.mean == pytest.approx(0.95)
    assert result.std == pytest.approx(np.sqrt(0.005))  # ((0.05² + 0.05²) / 1) ** 0.5
    assert result.sem == pytest.approx(np.sqrt(0.005) / np.sqrt(2))


def test_kfold_needs_two_folds() -> None:
    with pytest.raises(ValueError, match="two folds"):
        m.kfold_accuracy([0.1, 0.2], [True, False], [0, 0])


def test_pair_scores_and_matrix_agree() -> None:
    a = np.array([[0.0, 0.0], [3.0, 4.0]])
    b = np.array([[3.0, 4.0], [3.0, 4.0]])
    np.testing.assert_allclose(m.pair_scores(a, b, "euclidean"), [-5.0, 0.0])
    np.testing.assert_allclose(m.score_matrix(a, b, "euclidean"), [[-5, -5], [0, 0]], atol=1e-12)
    c = np.array([[1.0, 0.0], [0.0, 2.0]])
    d = np.array([[2.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(m.pair_scores(c, d, "cosine"), [1.0, np.sqrt(0.5)])
    np.testing.assert_allclose(m.score_matrix(c, d, "cosine"), [[1.0, np.sqrt(0.5)], [0.0, np.sqrt(0.5)]])
    with pytest.raises(ValueError, match="unknown metric"):
        m.pair_scores(a, b, "manhattan")
    with pytest.raises(ValueError, match="unknown metric"):
        m.score_matrix(a, b, "distance")


def test_empty_or_nan_scores_refused() -> None:
    with pytest.raises(ValueError, match="no scores"):
        m.roc([], [0.1])
    with pytest.raises(ValueError, match="finite"):
        m.roc([np.nan], [0.1])


# Open-set worked example (Euclidean, 2-D): gallery g0 (0,0), g1 (10,0), g2 (0,10).
GALLERY = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
MATED = np.array([[1.0, 0.0], [6.0, 0.0], [0.0, 8.0]])  # mates g0, g0, g2
MATED_IDS = np.array([0, 0, 2])
NONMATED = np.array([[5.0, 5.0], [20.0, 20.0]])  # best distances √50 and √500


def _searches() -> m.Searches:
    return m.search(MATED, MATED_IDS, NONMATED, GALLERY, "euclidean")


def test_search_by_hand() -> None:
    s = _searches()
    np.testing.assert_allclose(s.mate_scores, [-1.0, -6.0, -2.0])
    np.testing.assert_array_equal(s.mate_is_top, [True, False, True])  # (6,0) is nearer g1 (4) than g0 (6)
    np.testing.assert_allclose(s.top_other, [-9.0, -4.0, -8.0])
    np.testing.assert_allclose(s.nonmated_top, [-np.sqrt(50), -np.sqrt(500)])
    assert m.rank1(s) == pytest.approx(2 / 3)


def test_fnir_fpir_and_misidentification_by_hand() -> None:
    s = _searches()
    assert m.fnir_fpir_at(s, -3.0) == (pytest.approx(1 / 3), 0.0)  # distance ≤ 3: both rank-1 mates pass
    assert m.fnir_fpir_at(s, -1.5) == (pytest.approx(2 / 3), 0.0)
    assert m.fnir_fpir_at(s, -8.0) == (pytest.approx(1 / 3), 0.5)
    assert m.misidentification_rate(s, -5.0) == pytest.approx(1 / 3)  # (6,0) opens g1's door at distance 4
    assert m.misidentification_rate(s, -3.0) == 0.0


def test_fnir_at_fpir_by_hand() -> None:
    s = _searches()
    point = m.fnir_at_fpir(s, 0.5)  # one of two non-mated searches may pass: T just above −√500
    assert point.fpir == 0.5 and point.fnir == pytest.approx(1 / 3)
    assert -np.sqrt(500) < point.threshold < -np.sqrt(50)
    point = m.fnir_at_fpir(s, 0.0)  # none may pass: T just above −√50
    assert point.fpir == 0.0 and point.fnir == pytest.approx(1 / 3)
    assert point.threshold == pytest.approx(-np.sqrt(50)) and point.threshold > -np.sqrt(50)


def test_det_points_by_hand() -> None:
    thresholds, fpir, fnir = m.det_points(_searches())
    # Candidates descending: −1, −2, −6, −√50, −√500.
    np.testing.assert_allclose(thresholds, [-1, -2, -6, -np.sqrt(50), -np.sqrt(500)])
    np.testing.assert_allclose(fpir, [0, 0, 0, 0.5, 1.0])
    np.testing.assert_allclose(fnir, [2 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3])


def test_all_pairs_by_hand() -> None:
    # 1-D embeddings, Euclidean: identity a at 0 and 1, identity b at 3, identity c at 10.
    emb = np.array([[0.0], [1.0], [3.0], [10.0]])
    labels = np.array(["a", "a", "b", "c"])
    result = m.all_pairs(emb, labels, "euclidean", fars=(0.5,), thresholds=(-2.5, -9.5), chunk=3)
    np.testing.assert_allclose(result.genuine, [-1.0])
    # Impostor distances: 0–3, 0–10, 1–3, 1–10, 3–10 → 3, 10, 2, 9, 7.
    assert result.impostor_count == 5
    np.testing.assert_allclose(result.impostor_top, [-2, -3, -7])  # ⌊0.5·5⌋ + 1 = 3 kept
    assert result.impostor_at == {-2.5: 1, -9.5: 4}
    assert result.rates_at(-2.5) == (pytest.approx(0.2), 0.0)
    op = result.at_fmr(0.5)  # two of five may pass: T just above −7
    assert op.fmr == pytest.approx(0.4) and op.tar == 1.0 and -7 < op.threshold < -3
    op = result.at_fmr(0.0)  # none may pass: T just above −2, the genuine −1 still passes
    assert op.fmr == 0.0 and op.tar == 1.0
    with pytest.raises(ValueError, match="impostor scores kept"):
        result.at_fmr(0.9)
