"""README's security table: for a pack, each gallery size × false-accept goal → the threshold the daemon derives
(``Scorer.resolve`` with the pack's calibration and the default 3-of-5 vote) → the FNMR its calibration measured
there on each data set (single photos, no vote), or "refused" with the largest gallery the goal allows.

    PYTHONPATH=daemon python3 bench/security_table.py --pack default [--k 3 --n 5]

Reads only the shipped calibration file (no images, no models); prints a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import sys

from facegate.errors import FalseAcceptGoalError
from facegate.packs.manifest import load_manifest, pack_calibration
from facegate.scoring import Scorer

GALLERIES = (1, 10, 100, 1000, 10_000)
GOALS = (1e-3, 1e-4, 1e-5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="default")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--n", type=int, default=5)
    args = ap.parse_args()
    manifest = load_manifest(args.pack)
    cal = pack_calibration(manifest)
    if cal is None:
        sys.exit(f"pack {args.pack!r} has no calibration")
    names = [d.name for d in cal.datasets]
    print(f"pack `{args.pack}`, vote {args.k} of {args.n}; calibration {cal.sha256[:12]}… ({cal.created}), "
          f"floor {cal.floor:.2g}\n")
    print("| templates | goal per attempt | threshold | per-comparison FMR (from) | "
          + " | ".join(f"FNMR {n}" for n in names) + " |")
    print("|---|---|---|---|" + "---|" * len(names))
    for templates in GALLERIES:
        for goal in GOALS:
            try:
                s = Scorer.resolve(manifest, false_accept_rate=goal, calibration=cal, templates=templates,
                                   vote=(args.k, args.n))
            except FalseAcceptGoalError as exc:
                most = str(exc).split("at most ")[1].split()[0]
                print(f"| {templates:,} | {goal:g} | refused (at most {int(most):,} templates) | | "
                      + " | ".join("" for _ in names) + " |")
                continue
            b = s.basis
            fnmr = " | ".join(f"{100 * b.fnmr[n]:.1f} %" for n in names)
            print(f"| {templates:,} | {goal:g} | {s.threshold:.4g} | {b.fmr:.2g} ({b.fmr_dataset}) | {fnmr} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
