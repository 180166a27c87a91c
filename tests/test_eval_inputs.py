"""pairs.txt parsing, groups CSV, protocol splits, the bias view and bad-input errors of `facegate eval`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facegate.errors import UsageError
from facegate.evaluation import bias, lfw, openset
from facegate.evaluation import metrics as m
from tests.cli_util import assert_user_error, run_cli
from tests.conftest import need_shared

PAIRS_SHA256 = "ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592"  # data/lfw/README.md


def _pairs_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    return path


GOOD = "2\t1\nA\t1\t2\nA\t1\tB\t1\nC\t1\t3\nC\t2\tD\t4\n"


def test_parse_official_pairs_file() -> None:
    path = need_shared("data", "lfw", "pairs.txt")
    from facegate.imaging import file_sha256

    assert file_sha256(path) == PAIRS_SHA256
    pairs = lfw.parse_pairs(path)
    assert len(pairs) == 6000
    assert [sum(p.fold == k for p in pairs) for k in range(10)] == [600] * 10
    assert sum(p.same for p in pairs) == 3000
    assert pairs[0].same and pairs[0].name1 == pairs[0].name2 and pairs[0].fold == 0
    assert not pairs[300].same and pairs[300].fold == 0 and pairs[600].same and pairs[600].fold == 1


def test_parse_small_pairs_file(tmp_path: Path) -> None:
    pairs = lfw.parse_pairs(_pairs_file(tmp_path, GOOD))
    assert pairs == [
        lfw.Pair(0, "A", 1, "A", 2, True), lfw.Pair(0, "A", 1, "B", 1, False),
        lfw.Pair(1, "C", 1, "C", 3, True), lfw.Pair(1, "C", 2, "D", 4, False),
    ]
    assert lfw.image_path(Path("/r"), "C", 3) == Path("/r/C/C_0003.jpg")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", ":1: empty"),
        ("10\n", ":1: header"),
        ("2\tx\n", ":1: pairs per half-fold 'x' is not an integer"),
        ("2\t1\nA\t1\t2\n", "found 1"),
        ("2\t1\nA\t1\tB\t2\nA\t1\tB\t1\nC\t1\t3\nC\t2\tD\t4\n", ":2: expected a matched pair"),
        ("2\t1\nA\t1\t2\nA\t1\t1\nC\t1\t3\nC\t2\tD\t4\n", ":3: expected a mismatched pair"),
        ("2\t1\nA\t1\tz\nA\t1\tB\t1\nC\t1\t3\nC\t2\tD\t4\n", ":2: image number 'z'"),
        ("2\t1\nA\t0\t2\nA\t1\tB\t1\nC\t1\t3\nC\t2\tD\t4\n", ":2: image number '0' must be"),
    ],
)
def test_malformed_pairs_name_file_and_line(tmp_path: Path, text: str, needle: str) -> None:
    path = _pairs_file(tmp_path, text)
    with pytest.raises(UsageError) as info:
        lfw.parse_pairs(path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_missing_pairs_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such pairs file"):
        lfw.parse_pairs(tmp_path / "nope.txt")


def test_pair_files_reports_missing_images(tmp_path: Path) -> None:
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "A_0001.jpg").write_bytes(b"x")
    pairs = [lfw.Pair(0, "A", 1, "A", 2, True)]
    with pytest.raises(UsageError, match=r"1 image\(s\) named in the pairs file are missing.*A_0002.jpg"):
        lfw.pair_files(tmp_path, pairs)


def test_limit_folds_needs_two(tmp_path: Path) -> None:
    (tmp_path / "A").mkdir()
    # Refused before any model is loaded or image embedded (hence no pipeline here).
    with pytest.raises(UsageError, match="--limit-folds 1: the k-fold protocol needs at least 2 folds"):
        lfw.evaluate_lfw(None, tmp_path, _pairs_file(tmp_path, GOOD), limit_folds=1)


def test_resolve_root(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such folder"):
        lfw.resolve_root(tmp_path / "missing")
    with pytest.raises(UsageError, match="no person folders"):
        lfw.resolve_root(tmp_path)
    (tmp_path / "lfw-deepfunneled" / "A").mkdir(parents=True)
    assert lfw.resolve_root(tmp_path) == tmp_path / "lfw-deepfunneled"


def test_openset_split(tmp_path: Path) -> None:
    for name, n in (("Ann", 3), ("Bob", 1), ("Cid", 2), ("Dee", 1)):
        (tmp_path / name).mkdir()
        for i in range(1, n + 1):
            (tmp_path / name / f"{name}_{i:04d}.jpg").write_bytes(b"x")
    people = openset.list_identities(tmp_path)
    split = openset.split_protocol(people)
    assert [n for n, _ in split["gallery"]] == ["Ann", "Cid"]
    assert [(row, n, p.name) for row, n, p in split["mated"]] == [
        (0, "Ann", "Ann_0002.jpg"), (0, "Ann", "Ann_0003.jpg"), (1, "Cid", "Cid_0002.jpg")]
    assert [n for n, _ in split["nonmated"]] == ["Bob", "Dee"]
    with pytest.raises(UsageError, match="found 1 and 1"):
        openset.split_protocol(openset.list_identities(tmp_path, max_identities=2))


def _groups_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "groups.csv"
    path.write_text(text)
    return path


def test_load_groups(tmp_path: Path) -> None:
    groups = bias.load_groups(_groups_csv(tmp_path, "identity,group\nAnn,A-M\n\nZoe , N-Z\n"))
    assert groups == {"Ann": "A-M", "Zoe": "N-Z"}
    for text, needle in (("Ann\n", ":1: expected"), ("Ann,x\nAnn,y\n", ":2: Ann is already in group 'x'"),
                         ("identity,group\n", "no identity,group lines"), ("Ann,,\n", ":1: expected")):
        with pytest.raises(UsageError, match=needle):
            bias.load_groups(_groups_csv(tmp_path, text))
    with pytest.raises(UsageError, match="no such groups file"):
        bias.load_groups(tmp_path / "none.csv")


def test_lfw_by_group_by_hand() -> None:
    # Synthetic groups by first letter (A–M vs N–Z); scores are distances negated, threshold 0.5 (accept ≤ 0.5).
    pairs = [
        lfw.Pair(0, "Ann", 1, "Ann", 2, True),   # d 0.3 → accepted (correct)
        lfw.Pair(0, "Bo", 1, "Bo", 2, True),     # d 0.7 → rejected (false non-match, A–M)
        lfw.Pair(0, "Ann", 1, "Cy", 1, False),   # d 0.4 → accepted (false match, A–M)
        lfw.Pair(0, "Ned", 1, "Ned", 2, True),   # d 0.2 → accepted
        lfw.Pair(0, "Ned", 1, "Zoe", 1, False),  # d 0.9 → rejected
        lfw.Pair(0, "Ann", 1, "Zoe", 1, False),  # cross-group, d 0.45 → accepted
        lfw.Pair(0, "Xu", 1, "Xu", 2, True),     # unassigned
    ]
    scores = -np.array([0.3, 0.7, 0.4, 0.2, 0.9, 0.45, 0.1])
    groups = {"Ann": "A-M", "Bo": "A-M", "Cy": "A-M", "Ned": "N-Z", "Zoe": "N-Z"}
    out = bias.lfw_by_group(pairs, scores, groups, "euclidean", 0.5, 0.6)
    am = out["groups"]["A-M"]
    assert (am["genuine"], am["impostor"]) == (2, 1)
    assert am["at_chosen_threshold"] == {"threshold": 0.5, "fmr": 1.0, "fnmr": 0.5}
    nz = out["groups"]["N-Z"]
    assert nz["at_chosen_threshold"] == {"threshold": 0.5, "fmr": 0.0, "fnmr": 0.0}
    assert out["cross_group"]["impostor"] == 1 and out["cross_group"]["at_chosen_threshold"]["fmr"] == 1.0
    assert out["unassigned_pairs"] == 1


def test_openset_by_group_by_hand() -> None:
    split = {"gallery": [("Ann", None), ("Ned", None)],
             "mated": [(0, "Ann", None), (0, "Ann", None), (1, "Ned", None)],
             "nonmated": [("Bo", None), ("Zoe", None)]}
    searches = m.Searches(mate_scores=-np.array([0.3, 0.7, 0.2]), mate_is_top=np.array([True, True, False]),
                          top_other=-np.array([0.9, 0.9, 0.1]), nonmated_top=-np.array([0.4, 0.8]))
    groups = {"Ann": "A-M", "Bo": "A-M", "Ned": "N-Z", "Zoe": "N-Z"}
    out = bias.openset_by_group(split, searches, groups, "euclidean", 0.6, 0.5)
    am = out["groups"]["A-M"]
    assert am["rank1"] == 1.0 and am["mated"] == 2 and am["nonmated"] == 1
    assert am["at_fpir_0.003_threshold"] == {"threshold": 0.5, "fnir": 0.5, "fpir": 1.0}
    nz = out["groups"]["N-Z"]
    assert nz["rank1"] == 0.0 and nz["at_pack_threshold"] == {"threshold": 0.6, "fnir": 1.0, "fpir": 0.0}


def test_cli_bad_inputs_exit_2(tmp_path: Path) -> None:
    result = run_cli("eval", "lfw", "--root", str(tmp_path / "none"), "--pairs", str(tmp_path / "p.txt"))
    assert_user_error(result, "none: no such folder", code=2)
    (tmp_path / "imgs" / "A").mkdir(parents=True)
    result = run_cli("eval", "lfw", "--root", str(tmp_path / "imgs"), "--pairs", str(tmp_path / "p.txt"))
    assert_user_error(result, "p.txt: no such pairs file", code=2)
    bad = _pairs_file(tmp_path, "2\t1\nA\t1\t2\nA\t1\tB\nC\t1\t3\nC\t2\tD\t4\n")
    result = run_cli("eval", "lfw", "--root", str(tmp_path / "imgs"), "--pairs", str(bad))
    assert_user_error(result, f"{bad}:3: expected a mismatched pair", code=2)
    result = run_cli("eval", "openset", "--root", str(tmp_path / "none"))
    assert_user_error(result, "no such folder", code=2)
    result = run_cli("eval", "lfw", "--help")
    assert result.code == 0 and "Example: facegate eval lfw" in result.stdout
