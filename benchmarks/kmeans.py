"""sslax k-means against scikit-learn's MiniBatchKMeans with fairseq's HuBERT settings.

  python benchmarks/kmeans.py --features=FEATS.npy --num_clusters=100
  python benchmarks/kmeans.py --synthetic_points=1000000 --num_clusters=100

fairseq `examples/hubert/simple_kmeans/learn_kmeans.py` fits MiniBatchKMeans(k-means++,
max_iter 100, batch_size 10000, tol 0, max_no_improvement 100, n_init 20,
reassignment_ratio 0). The same points go to sslax's Lloyd and mini-batch k-means on all
local devices (mesh `data=-1`), with the same batch size and 20 k-means++ seedings (Lloyd
stops when a pass improves the inertia by at most `--lloyd_tol`, relative). Prints
one JSON line per method: inertia (sum over points, and per point as fairseq logs it),
wall time of the whole fit (first call, compilation included) and of a second fit (the
compiled programs reused), iterations, and the ratio to scikit-learn's inertia.

On a CPU shared with other work, scikit-learn's OpenMP threads can lose more to contention
than they gain (`--sklearn_threads=1`; for XLA, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1"): compare both ways.

Points: an f32[N, D] .npy file (e.g. MFCC frames), or a seeded synthetic mixture of
overlapping Gaussians shaped like 39-dim MFCC frames. Imports neither TensorFlow nor TFDS,
so it runs on bare accelerator machines (jax, flax, numpy and scikit-learn).
"""

import json
import os
import sys
import time

# Make the repository root importable when this file runs as a script.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402  (after the sys.path line)
import jax
import numpy as np
from sklearn import cluster
import threadpoolctl

from sslax.clustering import kmeans
from sslax.core import sharding

_FEATURES = flags.DEFINE_string("features", None, "f32[N, D] .npy file; else synthetic points.")
_SYNTHETIC_POINTS = flags.DEFINE_integer("synthetic_points", 200_000, "N of the mixture.")
_SYNTHETIC_DIM = flags.DEFINE_integer("synthetic_dim", 39, "D of the mixture.")
_NUM_CLUSTERS = flags.DEFINE_integer("num_clusters", 100, "K (HuBERT iteration 1: 100).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 10_000, "Mini-batch (fairseq: 10000).")
_METHODS = flags.DEFINE_list("methods", ["sklearn", "lloyd", "minibatch"], "What to run.")
_LLOYD_TOL = flags.DEFINE_float(
  "lloyd_tol", 1e-4, "sslax Lloyd stops when a pass improves the inertia by at most this."
)
_SKLEARN_THREADS = flags.DEFINE_integer(
  "sklearn_threads", 0, "Limit scikit-learn's OpenMP/BLAS threads to this; 0: its default."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the mixture and every method.")

# fairseq learn_kmeans.py's defaults.
FAIRSEQ = dict(
  init="k-means++",
  max_iter=100,
  tol=0.0,
  max_no_improvement=100,
  n_init=20,
  reassignment_ratio=0.0,
)


def synthetic_points(num_points: int, dim: int, seed: int) -> np.ndarray:
  """f32[N, D]: 500 overlapping Gaussians of unequal widths and weights."""
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(500, dim)) * 2.0
  scales = rng.uniform(0.5, 2.0, size=500)
  component = rng.choice(500, num_points, p=rng.dirichlet(np.ones(500)))
  noise = rng.normal(size=(num_points, dim)).astype(np.float32) * scales[component, None]
  return (means[component] + noise).astype(np.float32)


def run_sklearn(
  points: np.ndarray, num_clusters: int, batch_size: int, seed: int, threads: int
) -> dict:
  with threadpoolctl.threadpool_limits(threads or None):
    start = time.perf_counter()
    model = cluster.MiniBatchKMeans(
      num_clusters, batch_size=batch_size, compute_labels=False, random_state=seed, **FAIRSEQ
    ).fit(points)
    seconds = time.perf_counter() - start
  return {"inertia": float(-model.score(points)), "seconds": seconds, "iterations": model.n_steps_}


def run_sslax(
  points: np.ndarray, num_clusters: int, batch_size: int, seed: int, method: str, lloyd_tol: float
) -> dict:
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  times = []
  for _ in range(2):  # the second fit reuses the compiled programs
    start = time.perf_counter()
    x_MxCxD, w_MxC = kmeans.layout(points, mesh, batch_size=batch_size, seed=seed)
    result = kmeans.fit(
      x_MxCxD,
      w_MxC,
      num_clusters=num_clusters,
      method=method,
      max_iter=FAIRSEQ["max_iter"],
      tol=lloyd_tol,  # Lloyd only; mini-batch stops as fairseq's (max_no_improvement)
      max_no_improvement=FAIRSEQ["max_no_improvement"],
      init_size=3 * batch_size,  # scikit-learn's init_size default
      num_init=FAIRSEQ["n_init"],
      seed=seed,
    )
    times.append(time.perf_counter() - start)
  return {
    "inertia": result.inertia,
    "seconds": times[0],
    "seconds_compiled": times[1],
    "iterations": result.iterations,
    "num_reseeded": result.num_reseeded,
  }


def benchmark(
  points: np.ndarray,
  *,
  num_clusters: int,
  batch_size: int,
  seed: int,
  methods: list[str],
  lloyd_tol: float,
  sklearn_threads: int,
) -> list[dict]:
  """One record per method (see the module docstring); 'sklearn' first when asked."""
  records = []
  for method in methods:
    if method == "sklearn":
      record = run_sklearn(points, num_clusters, batch_size, seed, sklearn_threads)
    elif method in kmeans.METHODS:
      record = run_sslax(points, num_clusters, batch_size, seed, method, lloyd_tol)
    else:
      raise ValueError(f"--methods: {method!r} is not 'sklearn' or one of {kmeans.METHODS}")
    record = {
      "method": method,
      "points": len(points),
      "dim": points.shape[1],
      "num_clusters": num_clusters,
      "batch_size": batch_size,
      "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      **record,
      "inertia_per_point": record["inertia"] / len(points),
    }
    records.append(record)
  reference = {r["method"]: r["inertia"] for r in records}.get("sklearn")
  for record in records:
    record["inertia_vs_sklearn"] = None if reference is None else record["inertia"] / reference
  return records


def main(argv):
  del argv
  if _FEATURES.value:
    points = np.load(_FEATURES.value).astype(np.float32)
    if points.ndim != 2:
      raise ValueError(f"--features {_FEATURES.value}: expected f32[N, D], got {points.shape}")
  else:
    points = synthetic_points(_SYNTHETIC_POINTS.value, _SYNTHETIC_DIM.value, _SEED.value)
  for record in benchmark(
    points,
    num_clusters=_NUM_CLUSTERS.value,
    batch_size=_BATCH_SIZE.value,
    seed=_SEED.value,
    methods=_METHODS.value,
    lloyd_tol=_LLOYD_TOL.value,
    sklearn_threads=_SKLEARN_THREADS.value,
  ):
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
  app.run(main)
