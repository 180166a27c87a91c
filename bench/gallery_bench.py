"""Gallery search benchmark: hnswlib against exact numpy brute force, in the same run.

For each gallery size (templates of 128-d float32) it reports:

* build time (s, with the number of build threads), index size (bytes of the saved hnswlib file), resident memory
  added by the index and the process's peak RSS (VmHWM, MiB);
* for each query-time ``ef``: template recall@1 (hnswlib's nearest template == the exact nearest template),
  identity recall@1 (same identity as the exact nearest template), and single-thread latency per query
  (p50/p99, ms, one query per call, ``num_threads=1``);
* numpy brute force latency on the same queries (one query per call, BLAS limited to one thread).

Latency is given twice: wall clock (``perf_counter``) and the calling thread's CPU time (``thread_time``). On a
shared machine the wall-clock p99 mostly measures the scheduler (a query preempted for a 4-10 ms time slice);
the CPU time is what the query costs on an idle core.

Data (``--data synthetic``, the worst case of ../shared/notes/peers.md): isotropic Gaussian identity centres in
128-d (σ = 0.1 per dimension), 5 templates per identity (σ = 0.02 around the centre), queries = a random
identity's centre plus the same template noise. Squared L2 space as in the built-in dlib pack.

Real embeddings (``--real lfw``: the 8,607 LFW images of ../shared/data/lfw through the built-in pack, via the
evaluation embedding cache; or ``--real FILE.npz`` with ``embeddings`` N×D float32 and ``labels`` N): the first
image of each person with ≥ 2 images is held out as a query, the rest is the gallery.

Crossover (``--crossover``): facegate's own ``GalleryIndex`` (``daemon/facegate/gallery/index.py``), grown through
``--sizes`` one batch at a time with its default graph parameters; at each size the same queries are searched (one
probe per call, k = 5 as the daemon asks) by its exact path (brute force over every live template) and by its
approximate path (hnswlib fetching ``RERANK_FACTOR`` × the templates needed, re-scored exactly), switched by
setting ``exact_max`` on the one index. Reports CPU/wall p50/p99 per path and, for the approximate path, how
often its best template differs from the exact one, for fresh queries and for self-queries (every query is an
enrolled template: it must come back as its own best match). The crossover is the size where the two latency
curves cross; ``EXACT_SEARCH_MAX_TEMPLATES`` is chosen from this table (README, "1:N search benchmark").

Run (long: 1M with M=48 builds for many minutes on 2 cores)::

    python bench/gallery_bench.py --crossover --sizes 1k,2k,5k,10k,20k,50k,100k,200k --json crossover.json

    python bench/gallery_bench.py --sizes 10k,100k --M 48 --ef-construction 400 --ef 32,64,96,128
    nohup python bench/gallery_bench.py --sizes 1M --json bench/gallery_1M.json > bench/gallery_1M.log 2>&1 &
"""

from __future__ import annotations

import os

# Brute force must be single-threaded to compare like with like; set before numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import hnswlib  # noqa: E402
import numpy as np  # noqa: E402

TEMPLATES_PER_IDENTITY = 5
CENTRE_SIGMA = 0.1
TEMPLATE_SIGMA = 0.02


def parse_size(text: str) -> int:
    text = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if text[-1] in "km" else text) * mult)


def proc_status_mib(field: str) -> float:
    """VmRSS / VmHWM of this process from /proc (MiB); NaN where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def synthetic(n: int, dim: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clustered vectors: returns (data n×dim f32, data identity n, queries q×dim f32, query identity q)."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // TEMPLATES_PER_IDENTITY)
    centres = rng.normal(0, CENTRE_SIGMA, (n_ids, dim)).astype(np.float32)
    ids = np.repeat(np.arange(n_ids), TEMPLATES_PER_IDENTITY)[:n]
    data = centres[ids] + rng.normal(0, TEMPLATE_SIGMA, (n, dim)).astype(np.float32)
    q_ids = rng.integers(0, n_ids, n_queries)
    queries = centres[q_ids] + rng.normal(0, TEMPLATE_SIGMA, (n_queries, dim)).astype(np.float32)
    return data, ids, queries.astype(np.float32), q_ids


def exact_nearest(data: np.ndarray, queries: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Exact nearest template (index) per query: float32 matmul shortlist of 16, re-ranked in float64."""
    norms = np.einsum("ij,ij->i", data, data)
    out = np.empty(len(queries), np.int64)
    for s in range(0, len(queries), chunk):
        q = queries[s : s + chunk]
        d = norms[None, :] - 2.0 * (q @ data.T)
        short = np.argpartition(d, min(16, data.shape[0] - 1), axis=1)[:, :16]
        exact = ((data[short].astype(np.float64) - q[:, None, :].astype(np.float64)) ** 2).sum(-1)
        out[s : s + chunk] = short[np.arange(len(q)), exact.argmin(1)]
    return out


def brute_force_latency(data: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query brute force as a library would do it (norms precomputed).

    Returns (wall ms per query, thread CPU ms per query, answers)."""
    norms = np.einsum("ij,ij->i", data, data)
    times = np.empty(len(queries))
    cpu = np.empty(len(queries))
    answers = np.empty(len(queries), np.int64)
    for i, q in enumerate(queries):
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        answers[i] = int(np.argmin(norms - 2.0 * (data @ q)))
        times[i] = (time.perf_counter_ns() - t0) / 1e6
        cpu[i] = (time.thread_time_ns() - c0) / 1e6
    return times, cpu, answers


def pct(values: np.ndarray, p: float) -> float:
    return round(float(np.percentile(values, p)), 4)


def run_case(
    name: str,
    data: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    args: argparse.Namespace,
) -> dict:
    n, dim = data.shape
    print(f"\n== {name}: {n:,} templates × {dim}-d, {len(queries)} queries", flush=True)
    t0 = time.perf_counter()
    truth = exact_nearest(data, queries)
    print(f"exact ground truth: {time.perf_counter() - t0:.1f} s", flush=True)
    n_bf = min(len(queries), args.bf_queries)
    bf_ms, bf_cpu, bf_ans = brute_force_latency(data, queries[:n_bf])
    bf = {
        "queries": n_bf,
        "p50_ms": pct(bf_ms, 50),
        "p99_ms": pct(bf_ms, 99),
        "cpu_p50_ms": pct(bf_cpu, 50),
        "cpu_p99_ms": pct(bf_cpu, 99),
        "recall_at_1": round(float(np.mean(bf_ans == truth[:n_bf])), 4),
    }
    print(f"numpy brute force (1 thread): wall p50 {bf['p50_ms']} ms  p99 {bf['p99_ms']} ms | CPU p50 "
          f"{bf['cpu_p50_ms']} ms  p99 {bf['cpu_p99_ms']} ms | recall@1 {bf['recall_at_1']}")
    results = {"name": name, "templates": n, "dim": dim, "queries": len(queries), "brute_force": bf, "configs": []}
    for m in args.M:
        for efc in args.ef_construction:
            rss0 = proc_status_mib("VmRSS")
            index = hnswlib.Index(space="l2", dim=dim)
            index.init_index(max_elements=n, M=m, ef_construction=efc, random_seed=args.seed)
            t0 = time.perf_counter()
            index.add_items(data, np.arange(n), num_threads=args.build_threads)
            build_s = time.perf_counter() - t0
            rss1 = proc_status_mib("VmRSS")
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "index.bin")
                index.save_index(path)
                size = os.path.getsize(path)
            cfg = {
                "M": m,
                "ef_construction": efc,
                "build_s": round(build_s, 1),
                "build_threads": args.build_threads,
                "index_bytes": size,
                "index_rss_mib": round(rss1 - rss0, 1),
                "peak_rss_mib": round(proc_status_mib("VmHWM"), 1),
                "ef": [],
            }
            print(
                f"hnswlib M={m} ef_construction={efc}: build {build_s:.1f} s ({args.build_threads} threads), "
                f"file {size / 2**20:.1f} MiB, +RSS {cfg['index_rss_mib']} MiB, peak RSS {cfg['peak_rss_mib']} MiB",
                flush=True,
            )
            for ef in args.ef:
                index.set_ef(ef)
                index.knn_query(queries[:20], k=1, num_threads=1)  # warm caches
                times = np.empty(len(queries))
                cpu = np.empty(len(queries))
                found = np.empty(len(queries), np.int64)
                for i in range(len(queries)):
                    q = queries[i : i + 1]
                    c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
                    labels, _ = index.knn_query(q, k=1, num_threads=1)
                    times[i] = (time.perf_counter_ns() - t0) / 1e6
                    cpu[i] = (time.thread_time_ns() - c0) / 1e6
                    found[i] = labels[0, 0]
                row = {
                    "ef": ef,
                    "recall_at_1": round(float(np.mean(found == truth)), 4),
                    "identity_recall_at_1": round(float(np.mean(ids[found] == ids[truth])), 4),
                    "p50_ms": pct(times, 50),
                    "p99_ms": pct(times, 99),
                    "cpu_p50_ms": pct(cpu, 50),
                    "cpu_p99_ms": pct(cpu, 99),
                }
                row["speedup_p50_vs_brute_force"] = round(bf["p50_ms"] / max(row["p50_ms"], 1e-9), 1)
                cfg["ef"].append(row)
                print(
                    f"  ef={ef:4d}  recall@1 {row['recall_at_1']:.4f}  identity recall@1 "
                    f"{row['identity_recall_at_1']:.4f}  wall p50 {row['p50_ms']:.3f} p99 {row['p99_ms']:.3f} ms | "
                    f"CPU p50 {row['cpu_p50_ms']:.3f} p99 {row['cpu_p99_ms']:.3f} ms  "
                    f"({row['speedup_p50_vs_brute_force']}× brute force p50)",
                    flush=True,
                )
            results["configs"].append(cfg)
            del index
    return results


def crossover(args: argparse.Namespace) -> dict:
    """``--crossover``: exact vs hnswlib+re-rank search latency of ``GalleryIndex`` at growing sizes (module
    docstring). Synthetic data as ``synthetic``; ``--metric`` picks the space (euclidean = the built-in pack)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
    from facegate.gallery.index import RERANK_FACTOR, GalleryIndex

    sizes = sorted(parse_size(v) for v in args.sizes.split(",") if v.strip())
    data, ids, fresh, _ = synthetic(sizes[-1], args.dim, args.queries, args.seed)
    if args.metric == "cosine":
        data /= np.linalg.norm(data, axis=1, keepdims=True)
        fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
    index = GalleryIndex(args.dim, args.metric, capacity=sizes[-1])
    rng = np.random.default_rng(args.seed + 1)
    rows, done = [], 0
    for size in sizes:
        t0 = time.perf_counter()
        index.add(np.arange(done, size), ids[done:size], data[done:size])
        build_s = time.perf_counter() - t0
        done = size
        own = rng.choice(size, min(args.queries, size), replace=False)
        row: dict = {"templates": size, "added_s": round(build_s, 1), "rerank_factor": RERANK_FACTOR}
        answers = {}
        for path, exact_max in (("exact", 1 << 62), ("hnsw_rerank", 0)):
            index.exact_max = exact_max
            for kind, queries in (("fresh", fresh), ("self", data[own])):
                index.search(queries[:20], k=5)  # warm caches
                wall = np.empty(len(queries))
                cpu = np.empty(len(queries))
                best = np.empty(len(queries), np.int64)
                for i in range(len(queries)):
                    c0, t1 = time.thread_time_ns(), time.perf_counter_ns()
                    found, _ = index.search(queries[i : i + 1], k=5)
                    wall[i] = (time.perf_counter_ns() - t1) / 1e6
                    cpu[i] = (time.thread_time_ns() - c0) / 1e6
                    best[i] = found[0][0].template_id
                answers[path, kind] = best
                if kind == "fresh":
                    row[path] = {"cpu_p50_ms": pct(cpu, 50), "cpu_p99_ms": pct(cpu, 99), "wall_p50_ms": pct(wall, 50),
                                 "wall_p99_ms": pct(wall, 99)}
        differs = answers["exact", "fresh"] != answers["hnsw_rerank", "fresh"]
        row["hnsw_rerank"]["fresh_best_differs"] = int(differs.sum())
        row["hnsw_rerank"]["self_not_own_best"] = int((answers["hnsw_rerank", "self"] != own).sum())
        row["exact"]["self_not_own_best"] = int((answers["exact", "self"] != own).sum())
        row["queries"] = {"fresh": len(fresh), "self": len(own)}
        rows.append(row)
        e, h = row["exact"], row["hnsw_rerank"]
        print(f"{size:>9,} templates (+{build_s:.1f} s): exact CPU p50 {e['cpu_p50_ms']:.3f} p99 {e['cpu_p99_ms']:.3f} "
              f"ms | hnsw+re-rank CPU p50 {h['cpu_p50_ms']:.3f} p99 {h['cpu_p99_ms']:.3f} ms, best differs "
              f"{h['fresh_best_differs']}/{len(fresh)} fresh, {h['self_not_own_best']}/{len(own)} self "
              f"(exact: {e['self_not_own_best']})", flush=True)
    return {"metric": args.metric, "M": index.M, "ef_construction": index.ef_construction, "ef": index.ef,
            "sizes": rows}


def split_real(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out the first image of every label with ≥ 2 images as a query; the rest is the gallery."""
    _, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse)
    first = np.zeros(len(emb), bool)
    seen: set[int] = set()
    for i, lab in enumerate(inverse):
        if counts[lab] >= 2 and int(lab) not in seen:
            first[i] = True
            seen.add(int(lab))
    return emb[~first], inverse[~first], emb[first], inverse[first]


def load_real(spec: str) -> tuple[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] | None:
    """``lfw``: the LFW images of ../shared/data/lfw embedded with the built-in pack through the evaluation
    embedding cache (instant when `facegate eval` has filled it, else computed and cached); a path: an npz with
    ``embeddings`` N×D float32 and ``labels`` N; ``none``: skip."""
    if spec == "none":
        print("\nreal embeddings: not requested (--real lfw embeds ../shared/data/lfw with the built-in pack)")
        return None
    if spec == "lfw":
        shared = Path(os.environ.get("FACEGATE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
        root = shared / "data" / "lfw" / "lfw-deepfunneled"
        if not root.is_dir():
            print(f"\nreal embeddings: {root} is absent; real-embedding case not run")
            return None
        from facegate.evaluation.embeddings_cache import EmbeddingCache, default_cache_path, embed_files
        from facegate.pipeline import FacePipeline

        files = sorted(root.glob("*/*.jpg"))
        cache = EmbeddingCache(default_cache_path())
        t0 = time.perf_counter()
        # the dlib pack (Euclidean, hnswlib's l2 space); the fused default pack's galleries are searched exactly
        embedded = embed_files(FacePipeline.load("dlib", with_liveness=False), files, cache)
        cache.close()
        print(f"\nreal embeddings: {len(files)} LFW images embedded/loaded in {time.perf_counter() - t0:.0f} s "
              f"({embedded.fallback_count} without a detected face used the central-box fallback)")
        labels = np.array([f.parent.name for f in files])
        return "real-lfw", split_real(np.asarray(embedded.embeddings, np.float32), labels)
    path = Path(spec)
    if not path.is_file():
        print(f"\nreal embeddings: no file at {path}; real-embedding case not run")
        return None
    blob = np.load(path, allow_pickle=False)
    return f"real-{path.name}", split_real(np.asarray(blob["embeddings"], np.float32), np.asarray(blob["labels"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10k,100k,1M", help="gallery sizes, comma-separated (e.g. 10k,100k)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--bf-queries", type=int, default=200, help="queries timed for brute force")
    parser.add_argument("--M", type=lambda s: [int(v) for v in s.split(",")], default=[48])
    parser.add_argument("--ef-construction", type=lambda s: [int(v) for v in s.split(",")], default=[400])
    parser.add_argument("--ef", type=lambda s: [int(v) for v in s.split(",")], default=[32, 64, 96, 128, 160])
    parser.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--real", default="none", help="'lfw' (embed ../shared/data/lfw, cached), an npz path, "
                        "or 'none'")
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--crossover", action="store_true", help="exact vs hnswlib+re-rank search of facegate's "
                        "GalleryIndex at growing --sizes (see the module docstring)")
    parser.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean",
                        help="--crossover: the space (default euclidean, the built-in pack)")
    args = parser.parse_args(argv)

    print(f"hnswlib {getattr(hnswlib, '__version__', '0.8')}, numpy {np.__version__}, {platform.processor() or ''} "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cases": []}
    if args.crossover:
        report["crossover"] = crossover(args)
        report["load_average_end"] = os.getloadavg()
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
        return 0
    for size in [parse_size(s) for s in args.sizes.split(",") if s.strip()]:
        data, ids, queries, _ = synthetic(size, args.dim, args.queries, args.seed)
        report["cases"].append(run_case(f"synthetic-{size}", data, ids, queries, args))
        del data, ids, queries
    real = load_real(args.real)
    if real is not None:
        name, (data, ids, queries, _) = real
        report["cases"].append(run_case(name, data, ids, queries, args))
    report["load_average_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
