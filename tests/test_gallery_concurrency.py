"""Gallery under concurrent use, and a writer killed with SIGKILL mid-enrolment."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

from facegate.gallery import Gallery, PackBinding
from facegate.gallery.index import META_NAME

PACK = PackBinding("default", 128, "euclidean")


def _exact(snapshot: dict[str, np.ndarray], probe: np.ndarray, k: int) -> list[tuple[str, float]]:
    """Top-k identities by best template, exact Euclidean distances in float64."""
    best = {name: float(np.sqrt(((t.astype(np.float64) - probe) ** 2).sum(1)).min()) for name, t in snapshot.items()}
    return sorted(best.items(), key=lambda kv: kv[1])[:k]


def test_searches_during_enrolment_and_removal_are_always_consistent(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n_start, n_new, per_id, k = 40, 60, 3, 3
    centres = rng.normal(0, 0.1, (n_start + n_new, 128)).astype(np.float32)
    templates = centres[:, None] + rng.normal(0, 0.02, (n_start + n_new, per_id, 128)).astype(np.float32)
    gallery = Gallery(tmp_path / "g")
    state: dict[str, np.ndarray] = {}
    for i in range(n_start):
        gallery.enrol(f"id{i}", templates[i], PACK)
        state[f"id{i}"] = templates[i]
    snapshots = {gallery.version: dict(state)}
    done = threading.Event()
    answers: list[tuple[int, int, list]] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for j in range(n_new):
                i = n_start + j
                gallery.enrol(f"id{i}", templates[i], PACK)
                state[f"id{i}"] = templates[i]
                snapshots[gallery.version] = dict(state)
                if j % 2:
                    victim = sorted(state)[int(rng.integers(len(state)))]
                    gallery.remove(victim)
                    del state[victim]
                    snapshots[gallery.version] = dict(state)
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)
        finally:
            done.set()

    def searcher(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            while not done.is_set():
                which = int(local.integers(len(centres)))
                probe = centres[which] + local.normal(0, 0.02, 128).astype(np.float32)
                result, version = gallery.search_versioned(probe[None], k=k)
                answers.append((which, version, [(m.name, m.score) for m in result[0]], probe))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=searcher, args=(s,)) for s in range(3)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(answers) > 100, f"only {len(answers)} searches ran concurrently with the writer"
    versions = {v for _, v, _, _ in answers}
    assert len(versions) > 5, "searches did not interleave with the writer"
    for _which, version, found, probe in answers:
        snapshot = snapshots[version]
        exact = _exact(snapshot, probe.astype(np.float64), len(snapshot))
        true_best = dict(exact)
        # The i-th answer's score is the exact i-th best identity score, and it is that identity's own best
        # template (a float32 near-tie may swap two identities whose scores agree to 1e-7; both are right).
        assert len(found) == k
        for (name, score), (_, exact_score) in zip(found, exact, strict=False):
            assert name in snapshot, f"version {version}: {name} was not enrolled at that point"
            assert abs(score - exact_score) < 1e-5, (version, found, exact[:k])
            assert abs(score - true_best[name]) < 1e-5, (version, found, exact[:k])
    gallery.close()


CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from facegate.gallery import Gallery, PackBinding
    folder, seed = sys.argv[1], int(sys.argv[2])
    pack = PackBinding("default", 128, "euclidean")
    rng = np.random.default_rng(seed)
    g = Gallery(folder)
    i = 0
    while True:
        name = f"w{seed}-{i}"
        centre = rng.normal(0, 0.1, (1, 128)).astype(np.float32)
        g.enrol(name, centre + rng.normal(0, 0.02, (3, 128)).astype(np.float32), pack)
        if i % 4 == 3:
            g.remove(f"w{seed}-{i - 1}")
            print("removed", f"w{seed}-{i - 1}", flush=True)
        g.save()  # the index write: kills land inside it often
        print("enrolled", name, flush=True)
        i += 1
    """
)


def _check_consistent(folder: Path, acknowledged: set[str], removed: set[str], in_flight: set[str]) -> None:
    """The database is intact, every acknowledged change is there (``in_flight``: a removal that may have committed
    just before the kill, unacknowledged), and the index answers exactly what the database holds."""
    db = sqlite3.connect(folder / "gallery.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with Gallery(folder) as g:
        names = {i.name for i in g.identities()}
        assert acknowledged - removed - in_flight <= names, "a committed enrolment was lost"
        assert not (removed & names), "a committed removal came back"
        id_names = {i.id: i.name for i in g.identities()}
        n_templates = 0
        for tids, iids, vecs in g.store.embeddings():
            n_templates += len(tids)
            for iid, row in zip(iids, g.search(vecs, k=1), strict=True):
                assert row and row[0].name == id_names[int(iid)] and row[0].score < 1e-3
        assert g._index is not None and g._index.count == n_templates


def test_sigkilled_writer_never_leaves_a_corrupt_gallery(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    rng = np.random.default_rng(11)
    with Gallery(folder) as g:  # a few thousand templates so that each index save takes a while
        for i in range(300):
            g.enrol(f"base{i}", rng.normal(0, 0.1, (5, 128)).astype(np.float32), PACK)
    acknowledged: set[str] = set()
    removed: set[str] = set()
    in_flight: set[str] = set()
    for round_no, lines_before_kill in enumerate((3, 8, 13, 21)):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(round_no)], stdout=subprocess.PIPE,
                                text=True, env=dict(os.environ))
        assert proc.stdout is not None
        for _ in range(lines_before_kill):
            line = proc.stdout.readline()
            assert line, "the writer died on its own"
            verb, name = line.split()
            (acknowledged if verb == "enrolled" else removed).add(name)
        time.sleep(float(rng.uniform(0, 0.03)))  # land anywhere in the next enrol/save
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # Lines written before the kill are acknowledged too.
        for line in proc.stdout.read().splitlines():
            verb, name = line.split()
            (acknowledged if verb == "enrolled" else removed).add(name)
        assert (folder / META_NAME).is_file()
        # The child removes w-(i-1) (i % 4 == 3) after enrolling w-i, before acknowledging either.
        last = max((int(n.split("-")[1]) for n in acknowledged if n.startswith(f"w{round_no}-")), default=-1)
        if last % 4 == 2:
            in_flight.add(f"w{round_no}-{last}")
        _check_consistent(folder, acknowledged, removed, in_flight)
