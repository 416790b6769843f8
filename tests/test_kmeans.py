"""Tests for sslax.clustering.kmeans.

References: float64 numpy for assignments and inertia; scikit-learn's Lloyd (KMeans,
algorithm='lloyd') started from the very centroids sslax's k-means++ drew, on the same
points, for the centroids, inertia and passes of sslax's Lloyd; scikit-learn's KMeans
(k-means++) where the optimum is clear; MiniBatchKMeans (fairseq's HuBERT settings, batch
scaled to the data) for the quality of sslax's mini-batch k-means, whose random batches
cannot be replayed; a one-device mesh for the 8-device sharded runs; hand-worked cases for
empty clusters. The comparisons of Lloyd with scikit-learn run on one device (sharding is
test_sharded_equals_one_device's): on the 8-device mesh their k-means++ seeding alone took
12-13 s of CPU per fit (1 s on one device, compilation included) and checks nothing more.
Tolerances: inertia sums of 10^4 float32 terms added in another order,
relative 1e-5; centroids (float32 means of the same points) 1e-4 absolute; the float64
inertia of two Lloyd fixed points of the same partition, relative 1e-9; mini-batch
quality against scikit-learn's, at most 1% above it.
"""

import jax
import numpy as np
import pytest
from sklearn import cluster
import threadpoolctl

from sslax.clustering import kmeans
from sslax.core import sharding

INERTIA_RTOL = 1e-5
CENTROID_ATOL = 1e-4
FIXED_POINT_RTOL = 1e-9
QUALITY = 1.01  # inertia at most 1% above scikit-learn's


def mixture(num_points, dim, num_components, seed, spread=4.0):
  """Points from a Gaussian mixture with unequal widths and weights; component means spread
  `spread` apart (2: overlapping, more like speech features than separated blobs)."""
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(num_components, dim)) * spread
  scales = rng.uniform(0.5, 2.0, size=num_components)
  component = rng.choice(num_components, num_points, p=rng.dirichlet(np.ones(num_components)))
  noise = rng.normal(size=(num_points, dim)) * scales[component, None]
  return (means[component] + noise).astype(np.float32)


def mesh(num_devices=None):
  devices = jax.devices() if num_devices is None else jax.devices()[:num_devices]
  return sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices)


def fit(points, *, devices=None, batch_size=2_000, **overrides):
  args = dict(
    num_clusters=16,
    method="lloyd",
    max_iter=100,
    tol=0.0,
    max_no_improvement=100,
    init_size=3 * batch_size,
    num_init=3,
    seed=0,
  )
  args.update(overrides)
  x_MxCxD, w_MxC = kmeans.layout(points, mesh(devices), batch_size=batch_size, seed=0)
  return kmeans.fit(x_MxCxD, w_MxC, **args)


def inertia64(points, centroids):
  d2 = ((points.astype(np.float64)[:, None] - centroids.astype(np.float64)[None]) ** 2).sum(-1)
  return d2.argmin(-1), d2.min(-1)


def test_assign_matches_float64_numpy():
  rng = np.random.default_rng(1)
  points = rng.normal(size=(3_000, 39)).astype(np.float32) * 10 + 5
  centroids = points[rng.choice(3_000, 50, replace=False)] + 0.1
  labels, d2 = kmeans.assign(points, centroids)
  labels64, d2_64 = inertia64(points, centroids)
  # Label disagreements only where the two nearest centroids are float32-close.
  d2_all = ((points.astype(np.float64)[:, None] - centroids[None]) ** 2).sum(-1)
  disagree = np.asarray(labels) != labels64
  assert np.all(d2_all[disagree, np.asarray(labels)[disagree]] - d2_64[disagree] < 1e-3)
  assert disagree.mean() < 1e-3
  np.testing.assert_allclose(np.asarray(d2)[~disagree], d2_64[~disagree], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("method", ["lloyd", "minibatch"])
def test_inertia_is_float64_inertia_of_returned_centroids(method):
  points = mixture(8_000, 13, 12, seed=2)
  result = fit(points, method=method, batch_size=1_000)
  assert result.centroids.shape == (16, 13)
  _, d2_64 = inertia64(points, result.centroids)
  np.testing.assert_allclose(result.inertia, d2_64.sum(), rtol=INERTIA_RTOL)
  assert 1 <= result.iterations == len(result.history)


def test_lloyd_matches_sklearn_kmeans_where_the_optimum_is_clear():
  # 20 equal blobs of width 1, centres about 70 apart: both must find the blobs, so the
  # same centroids.
  rng = np.random.default_rng(3)
  centres = rng.normal(size=(20, 13)) * 14.0
  points = (centres.repeat(1_000, 0) + rng.normal(size=(20_000, 13))).astype(np.float32)
  ours = fit(points, devices=1, num_clusters=20, max_iter=300)
  with threadpoolctl.threadpool_limits(1):  # OpenMP threads crawl on a busy CPU
    theirs = cluster.KMeans(20, init="k-means++", n_init=3, random_state=0).fit(points)
  print(f"sslax lloyd {ours.inertia:.1f}  sklearn KMeans {theirs.inertia_:.1f}")
  np.testing.assert_allclose(ours.inertia, theirs.inertia_, rtol=INERTIA_RTOL)
  order = np.lexsort(ours.centroids.T), np.lexsort(theirs.cluster_centers_.T)
  np.testing.assert_allclose(
    ours.centroids[order[0]], theirs.cluster_centers_[order[1]], atol=CENTROID_ATOL
  )
  # Lloyd converged (tol 0: a pass that no longer lowers the inertia) to cluster means.
  assert ours.iterations < 300
  labels, _ = inertia64(points, ours.centroids)
  for k in range(20):
    np.testing.assert_allclose(ours.centroids[k], points[labels == k].mean(0), atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lloyd_is_sklearn_lloyd_from_the_same_initial_centroids(seed, monkeypatch):
  """Overlapping components (many local minima, as in speech features), so any change of
  the algorithm's path shows: from the centroids sslax's k-means++ drew, scikit-learn's
  Lloyd on the same points reaches the same centroids and inertia in one pass fewer (it
  stops when the labels repeat, sslax when the next pass no longer lowers the inertia).
  Measured: the same labels, centroids within 5e-6; a 1% worse inertia fails by a factor
  of 10^7 (float64 inertia of the centroids, relative 1e-9) and of 1,000 (sslax's own)."""
  seedings = []

  def recorded(*args, **kwargs):
    centroids, potential = kmeans_plus_plus(*args, **kwargs)
    seedings.append(np.asarray(centroids))
    return centroids, potential

  kmeans_plus_plus = kmeans._kmeans_plus_plus
  monkeypatch.setattr(kmeans, "_kmeans_plus_plus", recorded)
  # The shapes and mesh of the test above: the same compiled programs.
  points = mixture(20_000, 13, 40, seed=10 + seed, spread=2.0)
  ours = fit(points, devices=1, num_clusters=20, max_iter=300, seed=seed)
  (initial,) = seedings
  with threadpoolctl.threadpool_limits(1):  # OpenMP threads crawl on a busy CPU
    theirs = cluster.KMeans(
      20, init=initial, n_init=1, algorithm="lloyd", max_iter=300, tol=0.0
    ).fit(points)
  labels, d2 = inertia64(points, ours.centroids)
  their_labels, their_d2 = inertia64(points, theirs.cluster_centers_)
  print(f"sslax lloyd {d2.sum():.3f}  sklearn lloyd {their_d2.sum():.3f} (float64 inertia)")
  assert ours.iterations == theirs.n_iter_ + 1 < 300  # both converged, on the same path
  # At Lloyd's fixed point the inertia is flat in the centroids: float32 means of the same
  # points give the same float64 inertia (measured: within 5e-13).
  np.testing.assert_allclose(d2.sum(), their_d2.sum(), rtol=FIXED_POINT_RTOL)
  # The inertia sslax reports (scikit-learn's own float32 sum is 6e-6 off its float64).
  np.testing.assert_allclose(ours.inertia, their_d2.sum(), rtol=INERTIA_RTOL)
  # The same clusters in the same order (each keeps its initial centroid's index).
  np.testing.assert_array_equal(labels, their_labels)
  np.testing.assert_allclose(ours.centroids, theirs.cluster_centers_, atol=CENTROID_ATOL)


def test_minibatch_quality_matches_sklearn_minibatch_with_fairseq_settings():
  """fairseq learn_kmeans.py: k-means++, max_iter 100, tol 0, max_no_improvement 100,
  n_init 20, reassignment_ratio 0; batch 10,000 scaled to 1,500 for 12,000 points.
  Overlapping components: many local minima, as in speech features. The same algorithm on
  other random batches (scikit-learn draws them with replacement, sslax visits shuffled
  chunks), so a bound on quality, not an equality."""
  points = mixture(12_000, 13, 200, seed=4, spread=2.0)
  with threadpoolctl.threadpool_limits(1):  # OpenMP threads crawl on a busy CPU
    theirs = cluster.MiniBatchKMeans(
      24,
      init="k-means++",
      max_iter=100,
      batch_size=1_500,
      tol=0.0,
      max_no_improvement=100,
      n_init=20,
      reassignment_ratio=0.0,
      compute_labels=False,
      random_state=0,
    ).fit(points)
  sklearn_inertia = -theirs.score(points)
  ours = fit(points, num_clusters=24, method="minibatch", num_init=20, batch_size=1_500)
  print(f"sslax minibatch {ours.inertia:.1f}  sklearn MiniBatchKMeans {sklearn_inertia:.1f}")
  assert ours.inertia <= QUALITY * sklearn_inertia


@pytest.mark.parametrize("method", ["lloyd", "minibatch"])
def test_sharded_equals_one_device(method):
  points = mixture(8_000, 13, 12, seed=5)  # 8 chunks of 1,000: no padding either way
  one = fit(points, devices=1, method=method, batch_size=1_000)
  eight = fit(points, method=method, batch_size=1_000)
  assert one.iterations == eight.iterations
  np.testing.assert_allclose(eight.centroids, one.centroids, atol=CENTROID_ATOL)
  np.testing.assert_allclose(eight.inertia, one.inertia, rtol=INERTIA_RTOL)


def test_layout_pads_with_zero_weights():
  points = np.arange(1_003 * 2, dtype=np.float32).reshape(1_003, 2)
  x_MxCxD, w_MxC = kmeans.layout(points, mesh(), batch_size=250, seed=0)
  assert x_MxCxD.shape == (256, 4, 2)  # 250 rounded up to the 8 shards; 4 chunks
  x, w = np.asarray(x_MxCxD).reshape(-1, 2), np.asarray(w_MxC).reshape(-1)
  assert w.sum() == 1_003
  np.testing.assert_array_equal(np.sort(x[w > 0][:, 0]), points[:, 0])
  assert not x[w == 0].any()


def on_mesh(points_NxD, chunks):
  """Points as one process's x_MxCxD, w_MxC without shuffling (for hand-worked cases)."""
  x = np.asarray(points_NxD, np.float32).reshape(chunks, -1, points_NxD.shape[-1])
  return jax.numpy.asarray(x.transpose(1, 0, 2)), jax.numpy.ones(x.shape[1::-1], np.float32)


def test_lloyd_moves_an_empty_cluster_onto_the_farthest_point():
  # Points 0, 1, 3, 10 on a line; centroid 100 gets none. The farthest point from its
  # centroid (0.5 before the update) is 10: it becomes centroid 1, the others average 4/3.
  x, w = on_mesh(np.array([[0.0], [1.0], [3.0], [10.0]]), chunks=2)
  c, history, passes, reseeded = kmeans._lloyd(
    x, w, jax.numpy.array([[0.5], [100.0]]), max_iter=1, tol=0.0
  )
  np.testing.assert_allclose(np.asarray(c)[:, 0], [4 / 3, 10.0], rtol=1e-6)
  assert int(passes) == 1 and int(reseeded) == 1
  np.testing.assert_allclose(history, [0.25 + 0.25 + 6.25 + 90.25], rtol=1e-6)


def test_minibatch_moves_an_unused_centroid_onto_the_batch_farthest_point():
  # One chunk: 0, 1, 3, 10. Centroid 100 never receives a point; after the first step
  # centroid 0 is their mean 3.5 and centroid 1 moves onto 10 (farthest from 0.5).
  x, w = on_mesh(np.array([[0.0], [1.0], [3.0], [10.0]]), chunks=1)
  c, _, steps, reseeded = kmeans._minibatch(
    jax.random.key(0), x, w, jax.numpy.array([[0.5], [100.0]]), max_iter=1, max_no_improvement=9
  )
  np.testing.assert_allclose(np.asarray(c)[:, 0], [3.5, 10.0], rtol=1e-6)
  assert int(steps) == 1 and int(reseeded) == 1


def test_kmeans_plus_plus_seeds_every_separated_blob():
  # Blobs 100 apart with spread 1: any centroid drawn from a seeded blob is at least 98
  # closer to it than to the others, so greedy k-means++ seeds each blob exactly once.
  rng = np.random.default_rng(6)
  centres = np.eye(10, 10) * 100
  points = (centres.repeat(100, 0) + rng.normal(size=(1_000, 10))).astype(np.float32)
  x, w = on_mesh(points[rng.permutation(1_000)], chunks=1)
  c, potential = kmeans._kmeans_plus_plus(
    jax.random.key(0), x[:, 0], w[:, 0], num_clusters=10, num_init=2
  )
  nearest_blob = np.abs(np.asarray(c)[:, None] - centres[None]).sum(-1).argmin(-1)
  assert sorted(nearest_blob) == list(range(10))
  # A point's squared distance to its blob's seed (another point) is about 2 x dim = 20;
  # an unseeded blob would add about 100 x 100^2.
  assert float(potential) < 1_000 * 20 * 2


def test_errors_name_the_problem():
  x, w = on_mesh(np.zeros((4, 2)), chunks=1)
  args = dict(max_iter=1, tol=0.0, max_no_improvement=1, init_size=4, num_init=1, seed=0)
  with pytest.raises(ValueError, match="5 clusters got only 4 points"):
    kmeans.fit(x, w, num_clusters=5, method="lloyd", **args)
  with pytest.raises(ValueError, match="'elkan' is not one of"):
    kmeans.fit(x, w, num_clusters=2, method="elkan", **args)
