"""Clustering stage at scale: 1 000 000 embeddings of dimension 64 on one machine.

Draws n float32 vectors from a mixture of 20 Gaussians in 64 dimensions and runs what the
cluster stage runs, each step timed, with its peak memory measured by tracemalloc (the memory
the step allocates on top of the data; numpy reports its buffers to tracemalloc) and the
process's peak resident size:

- k-means with k given (mini-batch above ``cluster.minibatch_above`` rows, the default path),
- k chosen by silhouette on a ``cluster.k_sample`` subset, then fitted on all rows,
- PCA to 16 dimensions, then mini-batch k-means,
- a diagonal Gaussian mixture (EM, one initialisation),
- Lloyd k-means (full batches, one restart) for comparison,
- the metrics (silhouette on ``cluster.silhouette_sample`` rows; Calinski-Harabasz and
  Davies-Bouldin on all rows) and the contingency table against the true components.

Run for several n to see time and memory grow linearly (a quadratic method would need
n^2 x 8 bytes: 8 TB at n = 10^6).

    .venv/bin/python benchmarks/clustering_scale.py [--n 100000 1000000] [--dim 64] [--k 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from gcmodels.clustering.estimators import clustering_metrics, contingency
from gcmodels.clustering.fitting import fit_clustering
from gcmodels.config import ClusterConfig


def blobs(n: int, dim: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n rows (n, dim) float32 from k isotropic Gaussians, and their component ids (n,)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=0.5, size=(k, dim)).astype(np.float32)
    y = rng.integers(0, k, size=n)
    X = rng.standard_normal(size=(n, dim), dtype=np.float32)
    X += centers[y]
    return X, y


def measured(step: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak MiB allocated by the step beyond what existed before it)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    out = step()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return out, seconds, peak / 2**20


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], help="steps to skip: lloyd, gmm, choose_k, pca")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS threads (on a busy 2-core machine one thread is many times faster than two)",
    )
    args = ap.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    with threadpool_limits(args.threads):
        return run(args)


def run(args: argparse.Namespace) -> int:

    print(f"BLAS threads: {args.threads}")
    print(f"{'n':>9s} {'step':34s} {'seconds':>8s} {'peak MiB':>9s} {'ARI':>6s}  notes")
    for n in args.n:
        X, y = blobs(n, args.dim, args.k, args.seed)
        data_mib = X.nbytes / 2**20
        base = ClusterConfig(k=args.k, seed=args.seed)
        steps: list[tuple[str, ClusterConfig]] = [("kmeans k given (default path)", base)]
        if "choose_k" not in args.skip:
            steps.append(("kmeans, k by silhouette", base.model_copy(update={"k": None, "k_max": 24})))
        if "pca" not in args.skip:
            steps.append(("pca to 16 + kmeans", base.model_copy(update={"reduce": "pca", "reduce_dim": 16})))
        if "gmm" not in args.skip:
            steps.append(
                (
                    "gmm diag, 1 init",
                    base.model_copy(update={"method": "gmm", "covariance_type": "diag", "n_init": 1, "max_iter": 100}),
                )
            )
        if "lloyd" not in args.skip:
            steps.append(
                (
                    "kmeans Lloyd, 1 restart",
                    base.model_copy(update={"minibatch_above": n, "n_init": 1, "max_iter": 100}),
                )
            )
        last = None
        for name, cfg in steps:
            res, seconds, peak = measured(lambda cfg=cfg, X=X: fit_clustering(X, cfg))
            ari = adjusted_rand_score(y, res.assignments)
            trace = next(iter(res.traces.items()), ("", []))
            note = f"{res.metadata['estimator']}, k={res.k}, {len(trace[1])} {trace[0]} values"
            if res.k_curve:
                note += f", k curve {min(res.k_curve)}..{max(res.k_curve)} on {cfg.k_sample} rows"
            print(f"{n:>9d} {name:34s} {seconds:8.1f} {peak:9.0f} {ari:6.3f}  {note}", flush=True)
            if last is None:
                last = res
        assert last is not None
        metrics, seconds, peak = measured(
            lambda last=last, y=y, base=base: clustering_metrics(
                last.features, last.assignments, y.astype(str), sample_size=base.silhouette_sample
            )
        )
        print(
            f"{n:>9d} {'metrics (+ labels: nmi, ari, purity)':34s} {seconds:8.1f} {peak:9.0f} {metrics['ari']:6.3f}  "
            f"silhouette {metrics['silhouette']:.3f} on {base.silhouette_sample} rows, CH {metrics['calinski_harabasz']:.0f}, "
            f"DB {metrics['davies_bouldin']:.3f}"
        )
        table, seconds, peak = measured(lambda last=last, y=y: contingency(y.astype(str), last.assignments))
        print(
            f"{n:>9d} {'contingency table':34s} {seconds:8.1f} {peak:9.0f} {'':6s}  {table.shape[0]} labels x {table.shape[1]} clusters"
        )
        print(
            f"{n:>9d} data {data_mib:.0f} MiB (float32); process peak RSS so far {max_rss_mib():.0f} MiB; "
            f"an n x n float64 matrix would be {n * n * 8 / 2**30:,.0f} GiB\n",
            flush=True,
        )
        del X, y, last
    return 0


if __name__ == "__main__":
    sys.exit(main())
